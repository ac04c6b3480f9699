"""The hardening suite's parts (a module, not a conftest: the options and the
figures table are the root conftest's): the server and a hostile upstream, each in a
process of its own, and the figures each test measures.

The server runs as ``tokenwire serve`` (so its RSS, descriptors and event
loop are its own) with two models on the same upstream: ``native`` on the
native streaming path and ``litellm`` on LiteLLM's (``model_info:
fast_path: off``). The upstream is ``tokenwire fake-upstream``, scripted per
request into any hostile behaviour.

Quick mode runs in ``.ci/run``; ``--full`` (``./scripts/test tests/hardening
--full``) runs the long soak (30 minutes) and the larger floods. Every test
adds its figures to one table, printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import REPORT, TIMEOUT, TOKENWIRE

ENGINES = ("native", "litellm")
FIRST_TOKEN_TIMEOUT = 2.0
IDLE_TIMEOUT = 2.0


def report(test: str, bound: str, measured: str) -> None:
    """A row of the figures table printed at the end of the run."""
    REPORT.append((test, bound, measured))


@dataclass
class Served:
    """A ``tokenwire serve`` process."""

    process: asyncio.subprocess.Process
    url: str
    http: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


def _status_kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, field
    return int(match.group(1))


async def _start_process(*args: str, log: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            TOKENWIRE, *args, stdout=out, stderr=out, env=env, start_new_session=True
        )


async def _wait_for(log: Path, pattern: str, process: asyncio.subprocess.Process) -> re.Match[str]:
    async with asyncio.timeout(6 * TIMEOUT):
        while True:
            text = _read(log)
            if (match := re.search(pattern, text)) is not None:
                return match
            assert process.returncode is None, text[-2000:]
            await asyncio.sleep(0.05)


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


@contextlib.asynccontextmanager
async def hostile_upstream(tmp: Path, name: str = "upstream") -> AsyncIterator[tuple[str, Any]]:
    """``tokenwire fake-upstream`` in its own process: its base URL and process."""
    log = tmp / f"{name}.log"
    process = await _start_process("fake-upstream", "--port", "0", log=log)
    try:
        match = await _wait_for(log, r"(http://\S+)", process)
        yield match.group(1), process
    finally:
        await _stop(process)


def server_config(base_url: str, **server: Any) -> dict[str, Any]:
    params = {"model": "openai/hostile", "api_base": base_url, "api_key": "sk-test"}
    return {
        "model_list": [
            {"model_name": "native", "litellm_params": params},
            {"model_name": "litellm", "litellm_params": params, "model_info": {"fast_path": "off"}},
        ],
        "server": {
            "first_token_timeout": FIRST_TOKEN_TIMEOUT,
            "idle_timeout": IDLE_TIMEOUT,
            "max_sessions": 20_000,
            **server,
        },
    }


@contextlib.asynccontextmanager
async def serving(tmp: Path, config: dict[str, Any], name: str = "server") -> AsyncIterator[Served]:
    """``tokenwire serve --config`` on a free port, its log in a file."""
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    log = tmp / f"{name}.log"
    process = await _start_process(
        "serve", "--port", "0", "--config", str(path), "--log-format", "json",
        "--log-level", "info", log=log,
    )  # fmt: skip
    try:
        match = await _wait_for(log, r'"url": ?"(ws://[^"]+)"', process)
        url = match.group(1)
        yield Served(process, url, url.replace("ws://", "http://").removesuffix("/v1/ws"), log)
    finally:
        await _stop(process)


async def healthz_latency(http: str, stop: asyncio.Event) -> float:
    """The slowest ``GET /healthz`` answer (seconds) while ``stop`` is unset:
    the server's loop is blocked for at least that long."""
    host, port = http.removeprefix("http://").split(":")
    worst = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await reader.read()
        writer.close()
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.05)
    return worst


def room_for_descriptors() -> None:
    """Floods open thousands of sockets: the soft limit up to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
