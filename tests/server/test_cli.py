"""`tokenwire serve` as a user runs it: a real process, the demo model, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import websockets
from conftest import TIMEOUT, model_list

TOKENWIRE = str(Path(sys.executable).with_name("tokenwire"))
STARTUP_TIMEOUT = 6 * TIMEOUT  # importing LiteLLM takes seconds, more on a loaded machine


@contextlib.asynccontextmanager
async def _serving(
    *args: str, listening: int = 1, unset: tuple[str, ...] = ()
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`tokenwire serve` on a free port, once ``listening`` processes listen
    (0: at once, the url empty); its process group killed on the way out if
    the test did not end it. ``unset``: environment variables it does not get."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    process = await asyncio.create_subprocess_exec(
        TOKENWIRE,
        "serve",
        "--port",
        "0",
        "--log-format",
        "json",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        events = []
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while len(events) < listening:
                event = await _next_event(process, "listening")
                events.append(event)
        process.listening = events  # type: ignore[attr-defined]
        yield process, events[0]["url"] if events else ""
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def _next_event(process: asyncio.subprocess.Process, name: str) -> dict:
    """The next log event called ``name`` on the server's standard error."""
    assert process.stderr is not None
    while True:
        line = await process.stderr.readline()
        assert line, f"the server exited before logging {name}"
        event = json.loads(line)
        if event.get("event") == name:
            return event


async def _generate(ws, gid: str, model: str, text: str) -> None:
    await ws.send(
        json.dumps(
            {
                "type": "generate",
                "id": gid,
                "model": model,
                "messages": [{"role": "user", "content": text}],
            }
        )
    )


async def _drained_answer(ws, stop: Callable[[], None]) -> list[dict]:
    """Ask demo for an answer, call ``stop`` at its first token, read to the
    close: the answer finished and the close was 1001. Its frames."""
    await _generate(ws, "hello", "demo", "Hi!")
    first = json.loads(await ws.recv())
    assert first["type"] == "token" and first["id"] == "hello"
    stop()
    frames = [first]
    async with asyncio.timeout(TIMEOUT):
        async for data in ws:
            frames.append(json.loads(data))
    assert ws.close_code == 1001
    assert frames[-1]["type"] == "finish" and frames[-1]["reason"] == "stop"
    return frames


async def test_serve_offers_demo_and_drains_on_sigterm():
    async with _serving() as (process, url):
        async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
            ready = json.loads(await ws.recv())
            assert ready["models"] == ["demo"]
            # SIGTERM mid-answer: the answer may finish.
            frames = await _drained_answer(ws, lambda: process.send_signal(signal.SIGTERM))
            text = "".join(f["text"] for f in frames if f["type"] == "token")
            assert text == frames[-1]["content"] and text.startswith('You said: "Hi!"')
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0


async def test_serve_with_a_config_file_and_model_flags(tmp_path, fake):
    config = tmp_path / "tokenwire.yaml"
    config.write_text(
        json.dumps({"model_list": model_list(fake.base_url), "server": {"max_generations": 3}})
    )
    async with _serving("--config", str(config), "--model", "openai/extra") as (process, url):
        async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
            ready = json.loads(await ws.recv())
            assert ready["models"] == ["fake", "demo", "openai/extra"]
            assert ready["limits"]["max_generations"] == 3
            await _generate(ws, "f", "fake", "fake:" + json.dumps({"tokens": 2}))
            frames = []
            while not frames or frames[-1]["type"] not in ("finish", "error"):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
            assert frames[-1]["content"] == "tok0 tok1 "
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0


async def test_logs_carry_no_key_and_no_prompt_text(tmp_path, fake):
    key, secret = "sk-never-logged-1234", "PROMPT-TEXT-NEVER-LOGGED"
    config = tmp_path / "tokenwire.yaml"
    config.write_text(
        json.dumps({"model_list": model_list(fake.base_url), "server": {"api_keys": [key]}})
    )
    async with _serving("--config", str(config)) as (process, url):
        headers = {"Authorization": f"Bearer {key}"}
        async with websockets.connect(url, additional_headers=headers, open_timeout=TIMEOUT) as ws:
            await ws.recv()
            for gid, scenario in (("ok", {"tokens": 2}), ("bad", {"status": 500})):
                await _generate(ws, gid, "fake", "fake:" + json.dumps(scenario))
                await _generate(ws, gid + "2", "demo", secret)
            ends = 0
            while ends < 4:
                frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                ends += frame["type"] in ("finish", "error")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0
        assert process.stderr is not None
        logs = (await process.stderr.read()).decode()
    events = [json.loads(line) for line in logs.splitlines()]
    assert sum(e.get("event") == "generation" for e in events) == 4
    assert key not in logs and secret not in logs


async def test_workers_share_one_port_and_one_metrics_view():
    async with _serving("--workers", "2", listening=2) as (process, url):
        events = process.listening  # type: ignore[attr-defined]
        assert len({e["pid"] for e in events}) == 2
        assert len({e["url"] for e in events}) == 1
        metrics_url = url.replace("ws://", "http://").replace("/v1/ws", "/metrics")
        sessions = [await websockets.connect(url, open_timeout=TIMEOUT) for _ in range(8)]
        for ws in sessions:
            await ws.recv()  # ready
        # Whichever worker answers, /metrics counts the sessions of both.
        for _ in range(4):
            text = await asyncio.to_thread(_get, metrics_url)
            assert 'tokenwire_sessions{state="attached"} 8.0' in text
            assert "tokenwire_sessions_opened_total 8.0" in text
        # A worker that dies is replaced; the port keeps serving.
        os.kill(events[0]["pid"], signal.SIGKILL)
        async with asyncio.timeout(STARTUP_TIMEOUT):
            replacement = await _next_event(process, "listening")
        assert replacement["pid"] not in {e["pid"] for e in events}
        for ws in sessions:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.close()
        async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            # Ctrl-C in a terminal reaches the whole process group: the
            # workers drain once (an answer in flight finishes), exit 0.
            await _drained_answer(ws, lambda: os.killpg(process.pid, signal.SIGINT))
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0


async def test_workers_on_a_taken_port_fail_with_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            TOKENWIRE, "serve", "--port", str(port), "--workers", "2",
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), STARTUP_TIMEOUT)
    assert process.returncode == 2
    assert (
        err.decode()
        .strip()
        .splitlines()[-1]
        .startswith(f"tokenwire: cannot listen on 127.0.0.1:{port}")
    )


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return response.read().decode()


async def test_the_listening_line_gives_the_chat_page_and_wrong_paths_get_a_hint():
    async with _serving() as (process, url):
        event = process.listening[0]  # type: ignore[attr-defined]
        base = url.removesuffix("/v1/ws").replace("ws://", "http://")
        assert event["chat"] == base + "/" and event["openai"] == base + "/v1"
        import httpx

        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            page = await http.get(event["chat"])
            assert page.status_code == 200 and "<title>tokenwire</title>" in page.text
        with_hint = None
        try:
            async with websockets.connect(url.replace("/v1/ws", "/ws"), open_timeout=TIMEOUT):
                pass
        except websockets.InvalidStatus as exc:
            with_hint = exc.response
        assert with_hint is not None and with_hint.status_code == 404
        assert b"/v1/ws" in with_hint.body


async def _refused(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """`tokenwire serve ARGS` that must not start: its exit status and stderr lines."""
    process = await asyncio.create_subprocess_exec(
        TOKENWIRE, "serve", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), STARTUP_TIMEOUT)
    assert out == b""  # nothing printed past the one line (LiteLLM's provider list)
    assert process.returncode is not None
    return process.returncode, err.decode().strip().splitlines()


async def test_bad_ports_hosts_and_models_are_one_line_and_exit_2():
    for port in ("99999", "65536", "-1"):
        status, lines = await _refused("--port", port)
        assert (status, len(lines)) == (2, 1), lines
        assert lines[0].startswith(f"tokenwire: --port: {port} is not a port"), lines
    status, lines = await _refused("--host", "10.255.255.1", "--port", "0")
    assert (status, len(lines)) == (2, 1), lines
    assert lines[0].startswith("tokenwire: cannot listen on 10.255.255.1"), lines
    status, lines = await _refused("--model", "llama3", "--port", "0")
    assert (status, len(lines)) == (2, 1), lines
    assert "model llama3: LiteLLM cannot route 'llama3'" in lines[0]
    assert "openai/" in lines[0] and "--model demo" in lines[0]


async def test_model_demo_serves_the_built_in_model():
    async with (
        _serving("--model", "demo") as (_, url),
        websockets.connect(url, open_timeout=TIMEOUT) as ws,
    ):
        ready = json.loads(await ws.recv())
        assert ready["models"] == ["demo"]
        await _generate(ws, "d", "demo", "Hi!")
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert frame["type"] == "token", frame


async def test_a_provider_key_not_set_is_said_at_start_and_refuses_at_once():
    model = "openai/gpt-4o-mini"
    async with _serving("--model", model, listening=0, unset=("OPENAI_API_KEY",)) as (process, _):
        warning = await asyncio.wait_for(
            _next_event(process, f"model {model}: OPENAI_API_KEY is not set"), STARTUP_TIMEOUT
        )
        assert warning["level"] == "warning"
        url = (await asyncio.wait_for(_next_event(process, "listening"), STARTUP_TIMEOUT))["url"]
        async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
            json.loads(await ws.recv())
            await _generate(ws, "k", model, "Hi!")
            error = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert (error["type"], error["code"], error["retryable"]) == (
        "error",
        "upstream_rejected",
        False,
    )
    assert "OPENAI_API_KEY is not set" in error["message"]


async def test_version():
    process = await asyncio.create_subprocess_exec(
        TOKENWIRE, "--version", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), STARTUP_TIMEOUT)
    from importlib.metadata import version

    assert process.returncode == 0 and out.decode().strip() == f"tokenwire {version('tokenwire')}"


async def test_the_server_raises_its_open_file_limit_and_says_what_a_low_one_allows():
    import resource

    def low_limit() -> None:  # soft 300 of a hard 1,100: what the server may raise itself
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 1100))

    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    process = await asyncio.create_subprocess_exec(
        TOKENWIRE, "serve", "--model", "demo", "--port", "0", "--log-format", "json",
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True, preexec_fn=low_limit,
    )  # fmt: skip
    try:
        events = []
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while not events or events[-1].get("event") != "listening":
                assert process.stderr is not None
                line = await process.stderr.readline()
                assert line, "the server exited before listening"
                events.append(json.loads(line))
        soft, hard = resource.prlimit(process.pid, resource.RLIMIT_NOFILE)
        assert (soft, hard) == (1100, 1100)  # soft raised to the hard limit
        (said,) = [e for e in events if "open-file limit" in e.get("event", "")]
        assert said["level"] == "warning"
        assert "(1100) allows about 588 sessions" in said["event"] and "10000" in said["event"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
