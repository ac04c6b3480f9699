"""Tokenwire's own programs as processes of their own, for the tests that
need a whole node: ``tokenwire serve`` and ``tokenwire fake-upstream``, each
with its log in a file, killed (with its process group) at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import TIMEOUT, TOKENWIRE


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


async def loadtest(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    """``tokenwire loadtest --json`` against ``url``: its exit status and report."""
    process = await asyncio.create_subprocess_exec(
        TOKENWIRE, "loadtest", "--url", url, "--json", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 6 * TIMEOUT)
    assert process.returncode is not None
    return process.returncode, json.loads(out)


async def stop(process: asyncio.subprocess.Process) -> None:
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
        await stop(process)


@contextlib.asynccontextmanager
async def serving(
    tmp: Path, config: dict[str, Any], name: str = "server", port: int = 0, workers: int = 1
) -> AsyncIterator[Served]:
    """``tokenwire serve --config`` on a free port, its log in a file (with
    ``workers``, once every worker listens)."""
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    log = tmp / f"{name}.log"
    if workers > 1 and port == 0:
        port = _free_port()  # one port for all
    process = await _start_process(
        "serve", "--port", str(port), "--config", str(path), "--log-format", "json",
        "--log-level", "info", "--workers", str(workers), log=log,
    )  # fmt: skip
    try:
        pattern = r'"url": ?"(ws://[^"]+)"'
        if workers > 1:
            pattern = "".join([r'"event": ?"listening"[\s\S]*'] * (workers - 1)) + pattern
        match = await _wait_for(log, pattern, process)
        url = match.group(1)
        yield Served(process, url, url.replace("ws://", "http://").removesuffix("/v1/ws"), log)
    finally:
        await stop(process)
