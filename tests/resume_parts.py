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
    """Debian's ``redis-server``, started for the tests, no persistence (a
    node of a Redis Cluster with ``cluster``)."""

    def __init__(self, directory: Path, *, cluster: bool = False) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.cluster = cluster

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
                *(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",  # not port + 10000: past 65535 from a high port
                        str(free_port()),
                        "--cluster-node-timeout",
                        "2000",
                    ]
                    if self.cluster
                    else []
                ),
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


class RedisClusterServers:
    """A Redis Cluster of Debian's ``redis-server``: three primaries and
    three replicas on ephemeral ports, joined by ``redis-cli --cluster
    create``. ``url`` is the store's ``redis+cluster://`` (one seed node)."""

    def __init__(self, directory: Path) -> None:
        self.nodes = []
        for i in range(6):
            (directory / f"node{i}").mkdir()
            self.nodes.append(RedisServer(directory / f"node{i}", cluster=True))
        self.url = f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        needs("redis-cli", cli is not None)
        assert cli is not None
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def wait_ok(self, timeout: float = 20) -> None:
        """Until every node says the cluster is ok and has three primaries."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [node.cli("CLUSTER", "INFO") for node in self.nodes]
            if all("cluster_state:ok" in s and "cluster_size:3" in s for s in states):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not come up")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cli(self, *args: str) -> str:
        """One command on every node (``FLUSHALL``, ``CLIENT KILL``): the
        replies, one a line (a replica refuses writes: its primary's reach it)."""
        return "\n".join(node.cli(*args) for node in self.nodes)

    def primary_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now (from ``CLUSTER NODES``)."""
        slot = int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key).strip(":\r\n"))
        for node in self.nodes:  # any node that is up knows the map
            for line in node.cli("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if len(fields) < 9 or "master" not in fields[2]:
                    continue
                port = int(fields[1].split("@")[0].rpartition(":")[2])
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no primary serves slot {slot}")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        for node in self.nodes:
            info = node.cli("INFO", "replication")
            if "role:slave" in info and f"master_port:{primary.port}" in info:
                return node
        raise AssertionError(f"{primary.port} has no replica")

    def fail_over(self, primary: RedisServer) -> RedisServer:
        """``CLUSTER FAILOVER`` on the replica of ``primary``: returns once the
        replica has taken over its slots and the cluster is ok; the new primary."""
        new = self.replica_of(primary)
        assert "OK" in new.cli("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if "role:master" in new.cli("INFO", "replication"):
                self.wait_ok()
                return new
            time.sleep(0.05)
        raise AssertionError("the failover did not happen")


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(directory)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def resume_settings(store: str, redis_url: str | None, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"resume": "redis" if store.startswith("redis") else store, **extra}
    if store.startswith("redis"):
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
