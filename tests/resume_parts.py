"""Helpers for the resume tests: a raw session that can drop and resume, and
a real ``redis-server`` on an ephemeral port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import websockets
from conftest import TIMEOUT, needs

from tokenwire.protocol import (
    Codec,
    Encoding,
    Error,
    Finish,
    GenerationFrame,
    Ready,
    Resumed,
    ResumeFailed,
    ServerFrame,
)
from tokenwire.server.app import auth_subprotocol

CODEC = Codec(Encoding.JSON)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Debian's ``redis-server``, started for the tests, no persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        needs("redis-server", binary is not None)
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        """One command through a raw RESP connection (no redis-cli needed)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = arg.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            s.sendall(b"".join(parts))
            return s.recv(65536).decode(errors="replace")


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def resume_settings(store: str, redis_url: str | None, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"resume": store, **extra}
    if store == "redis":
        assert redis_url is not None
        settings["redis_url"] = redis_url
    return settings


class RawSession:
    """A raw WebSocket session (JSON) that keeps its resume token."""

    def __init__(self, ws: websockets.ClientConnection, ready: Ready) -> None:
        self.ws = ws
        self.ready = ready
        self.token = ready.resume_token or ""
        self._pending: list[ServerFrame] = []

    @classmethod
    async def open(cls, url: str, key: str | None = None) -> RawSession:
        protocols = ["tokenwire.v1"]
        if key is not None:
            protocols.append(auth_subprotocol(key))
        ws = await websockets.connect(url, subprotocols=protocols, open_timeout=TIMEOUT)  # type: ignore[arg-type]
        ready = CODEC.decode_server(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert isinstance(ready, Ready), ready
        return cls(ws, ready)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def generate(self, gid: str, messages: list[dict[str, Any]], **fields: Any) -> None:
        await self.send(
            {"type": "generate", "id": gid, "model": "fake", "messages": messages, **fields}
        )

    async def recv(self) -> ServerFrame:
        if self._pending:
            return self._pending.pop(0)
        frame = CODEC.decode_server(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        assert frame is not None
        return frame

    async def resume(self, token: str, generations: dict[str, int]) -> list[ServerFrame]:
        """Send a ``resume``; the session's answer, then each generation's, in
        the order the server sent them (the generations' answers come first on
        the wire, each followed by its replayed frames, kept for ``recv``)."""
        await self.send({"type": "resume", "token": token, "generations": generations})
        answers: list[ServerFrame] = []
        frames: list[ServerFrame] = []
        while True:
            frame = await self._recv_wire()
            if isinstance(frame, Resumed | ResumeFailed):
                if frame.id is None:
                    self._pending.extend(frames)
                    return [frame, *answers]
                answers.append(frame)
            else:
                frames.append(frame)

    async def _recv_wire(self) -> ServerFrame:
        frame = CODEC.decode_server(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        assert frame is not None
        return frame

    async def frames_until(self, gid: str, *, seq: int) -> list[GenerationFrame]:
        """``gid``'s frames until (and with) the one numbered ``seq``."""
        frames: list[GenerationFrame] = []
        while True:
            frame = await self.recv()
            if getattr(frame, "id", None) == gid and hasattr(frame, "seq"):
                frames.append(frame)  # type: ignore[arg-type]
                if frame.seq >= seq or isinstance(frame, Finish | Error):  # type: ignore[union-attr]
                    return frames

    async def until_terminal(self, gid: str) -> list[GenerationFrame]:
        frames: list[GenerationFrame] = []
        while True:
            frame = await self.recv()
            if getattr(frame, "id", None) == gid and hasattr(frame, "seq"):
                frames.append(frame)  # type: ignore[arg-type]
                if isinstance(frame, Finish | Error):
                    return frames

    async def next_untagged(self) -> ServerFrame:
        while True:
            frame = await self.recv()
            if getattr(frame, "id", None) is None:
                return frame

    async def drop(self) -> None:
        """The TCP connection just goes (no close frame)."""
        self.ws.transport.abort()
        await asyncio.sleep(0.05)

    async def closed(self) -> tuple[int | None, str | None]:
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await self.ws.recv()
        return self.ws.close_code, self.ws.close_reason
