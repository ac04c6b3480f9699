"""Shared test fixtures: the real server on an ephemeral port, the fake upstream,
and a raw WebSocket client that checks the contract's invariants on every frame.

Nothing here mocks LiteLLM or the socket: generations go from the client over
a real WebSocket to the server, through LiteLLM's real HTTP path, to the fake
upstream, and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import msgspec
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tokenwire.protocol import (
    TERMINAL_FRAMES,
    Codec,
    Encoding,
    Error,
    Ready,
    ResetDone,
    Result,
    ResultBuilder,
    ServerFrame,
)
from tokenwire.server.config import Config, ServerSettings, parse
from tokenwire.server.engines.fake_upstream import FakeUpstream

TOKENWIRE = str(Path(sys.executable).with_name("tokenwire"))
TIMEOUT = 10.0
"""Every wait in the tests derives from this one constant (seconds)."""
PROMPT_CLOSE_S = 1.0
"""What "promptly" means for a cancel or a disconnect closing the upstream."""


def say(**scenario: Any) -> list[dict[str, Any]]:
    """Messages that script the fake upstream's answer (see fake_upstream.Scenario)."""
    return [{"role": "user", "content": "fake:" + json.dumps(scenario)}]


async def read_until_closed(ws: Any) -> tuple[int | None, str | None]:
    """Read (and drop) what a raw websockets client gets until the server
    closes; the close code and reason."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    except websockets.ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason


class WireClient:
    """A raw protocol client: sends dicts, routes frames per generation id.

    Every frame of a generation goes through a ``ResultBuilder``, which raises
    ``ProtocolViolation`` on any break of invariants 1-4; the violation fails
    the test at the next ``result()``.
    """

    def __init__(self, ws: ClientConnection, encoding: Encoding) -> None:
        self.ws = ws
        self.encoding = encoding
        self.codec = Codec(encoding)
        self.frames: list[ServerFrame] = []
        self.ready: Ready | None = None
        self.ready_event = asyncio.Event()
        self.untagged: asyncio.Queue[ServerFrame] = asyncio.Queue()
        self._builders: dict[str, ResultBuilder] = {}
        self._results: dict[str, list[asyncio.Future[Result]]] = defaultdict(list)
        self._frame_events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._violations: list[Exception] = []
        self._last_results: dict[str, Result] = {}
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                frame = self.codec.decode_server(data)
                assert frame is not None
                self.frames.append(frame)
                gid = getattr(frame, "id", None)
                if isinstance(frame, Ready):
                    self.ready = frame
                    self.ready_event.set()
                elif gid is None:
                    await self.untagged.put(frame)
                    continue
                else:
                    builder = self._builders.get(gid)
                    if builder is None:
                        builder = self._builders[gid] = ResultBuilder(gid)
                    try:
                        builder.add(frame)  # type: ignore[arg-type]
                    except Exception as exc:
                        self._violations.append(exc)
                    self._frame_events[gid].set()
                    if isinstance(frame, TERMINAL_FRAMES) and builder.done:
                        del self._builders[gid]
                        waiters = self._results.pop(gid, [])
                        result = builder.result()
                        for waiter in waiters:
                            if not waiter.done():
                                waiter.set_result(result)
                        self._last_results[gid] = result
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def send(self, message: dict[str, Any]) -> None:
        if self.encoding is Encoding.JSON:
            await self.ws.send(json.dumps(message))
        else:
            await self.ws.send(msgspec.msgpack.encode(message))

    async def generate(self, gid: str, model: str = "fake", **fields: Any) -> None:
        fields.setdefault("messages", say())
        await self.send({"type": "generate", "id": gid, "model": model, **fields})

    async def cancel(self, gid: str) -> None:
        await self.send({"type": "cancel", "id": gid})

    async def result(self, gid: str, timeout: float = TIMEOUT) -> Result:
        """The generation's result once its terminal frame came; invariants checked."""
        if gid in self._last_results:
            result = self._last_results.pop(gid)
        else:
            waiter: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            self._results[gid].append(waiter)
            async with asyncio.timeout(timeout):
                result = await waiter
            self._last_results.pop(gid, None)
        self.check()
        return result

    async def first_frame(self, gid: str, timeout: float = TIMEOUT) -> None:
        """Wait until the generation has sent at least one frame."""
        async with asyncio.timeout(timeout):
            await self._frame_events[gid].wait()

    async def next_untagged(self, timeout: float = TIMEOUT) -> Error | ResetDone:
        """The next frame without a generation id (``error`` with id null, ``reset_done``)."""
        async with asyncio.timeout(timeout):
            frame = await self.untagged.get()
        assert isinstance(frame, Error | ResetDone)
        return frame

    def frames_of(self, gid: str) -> list[ServerFrame]:
        return [f for f in self.frames if getattr(f, "id", None) == gid]

    def check(self) -> None:
        if self._violations:
            raise self._violations[0]

    async def wait_closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


class ServerHandle:
    def __init__(self, server: Any, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.url = f"ws://{host}:{port}/v1/ws"
        self.http = f"http://{host}:{port}"


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's redis-server on an ephemeral port, for the whole run."""
    import shutil

    from resume_parts import redis_server

    needs("redis-server", shutil.which("redis-server") is not None)

    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


def model_list(base_url: str) -> list[dict[str, Any]]:
    return [
        {
            "model_name": "fake",
            "litellm_params": {
                "model": "openai/fake-model",
                "api_base": base_url,
                "api_key": "sk-fake",
            },
        },
        {
            "model_name": "demo",
            "litellm_params": {"model": "tokenwire/demo", "tokens_per_second": 200},
        },
    ]


@pytest.fixture(scope="session")
async def outside_fake() -> AsyncIterator[str]:
    """The fake upstream in a process of its own (its work does not share the
    tests' loop); its base URL."""
    process = await asyncio.create_subprocess_exec(
        TOKENWIRE, "fake-upstream", "--port", "0", stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 6 * TIMEOUT)
        match = re.search(rb"(http://\S+)", line)
        assert match, line
        yield match.group(1).decode()
    finally:
        process.kill()
        await process.wait()


@pytest.fixture(scope="session")
def config(fake: FakeUpstream) -> Config:
    return parse({"model_list": model_list(fake.base_url)})


@pytest.fixture(scope="session")
def upstream(config: Config) -> Any:
    from tokenwire.server.engines.upstream import Upstream

    upstream = Upstream(config, repeated_chunk_limit=ServerSettings().repeated_chunk_limit)
    upstream.warm_up()  # as `tokenwire serve` does: no tokenizer loads mid-test
    return upstream


@pytest.fixture
def start_server(
    upstream: Any,
) -> Callable[..., contextlib.AbstractAsyncContextManager[ServerHandle]]:
    """``async with start_server(max_generations=2) as handle``: a server with those settings."""
    from tokenwire.server.app import TokenwireServer

    @contextlib.asynccontextmanager
    async def start(**settings: Any) -> AsyncIterator[ServerHandle]:
        server = TokenwireServer(msgspec.convert(settings, ServerSettings), upstream)
        async with server.listen("127.0.0.1", 0) as (host, port):
            yield ServerHandle(server, host, port)

    return start


@pytest.fixture
async def server(start_server: Callable[..., Any]) -> AsyncIterator[ServerHandle]:
    async with start_server() as handle:
        yield handle


@pytest.fixture
def connect() -> Callable[..., contextlib.AbstractAsyncContextManager[WireClient]]:
    """``async with connect(handle, encoding=...) as client``: a WireClient after ``ready``."""

    @contextlib.asynccontextmanager
    async def open_client(
        handle: ServerHandle,
        encoding: Encoding = Encoding.JSON,
        **kwargs: Any,
    ) -> AsyncIterator[WireClient]:
        kwargs.setdefault("subprotocols", [encoding.subprotocol])
        kwargs.setdefault("open_timeout", TIMEOUT)
        async with websockets.connect(handle.url, **kwargs) as ws:
            client = WireClient(ws, encoding)
            async with asyncio.timeout(TIMEOUT):
                await client.ready_event.wait()
            try:
                yield client
            finally:
                client._reader.cancel()
                client.check()

    return open_client


@pytest.fixture(params=list(Encoding), ids=lambda e: e.value)
def encoding(request: pytest.FixtureRequest) -> Encoding:
    return request.param  # type: ignore[no-any-return]


def needs(package: str, installed: bool) -> None:
    """A Debian package the test needs: in CI (``.ci/run`` installs it) its
    absence fails the test; elsewhere the test is skipped."""
    if installed:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{package} is missing: .ci/run installs it with apt-get")
    pytest.skip(f"Debian's {package} is not installed (apt-get install {package})")


# -- a real browser: Debian's chromium, driven by Playwright (never a downloaded one)

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[object]:
    if not HAVE_CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it with apt-get")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser):
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    await context.close()
    assert not errors, f"the page threw: {errors}"


# -- the hardening suite (tests/hardening): its mode and its figures -------------

REPORT: list[tuple[str, str, str]] = []
"""Rows (test, bound, measured) the hardening tests add; printed at the end."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="the hardening suite in full: a 30-minute soak, larger floods",
    )


@pytest.fixture(scope="session")
def full(request: pytest.FixtureRequest) -> bool:
    """Whether the hardening suite runs in full (``--full``) or quick mode."""
    return bool(request.config.getoption("--full"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In full mode the hardening tests may run 30 minutes and more."""
    if config.getoption("--full"):
        for item in items:
            if "tests/hardening/" in item.nodeid:
                item.add_marker(pytest.mark.timeout(2400), append=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT:
        return
    rows = [("test", "bound", "measured"), *REPORT]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    terminalreporter.section("hardening figures")
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        terminalreporter.write_line("  ".join(cells).rstrip())


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Redis Cluster (Debian's redis-server: three primaries, three
    replicas) on ephemeral ports, for the whole run."""
    import shutil

    from resume_parts import redis_cluster as cluster

    needs("redis-server", shutil.which("redis-server") is not None)
    with cluster(tmp_path_factory.mktemp("redis-cluster")) as servers:
        yield servers
