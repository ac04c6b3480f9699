"""Several nodes, one Redis, nginx in front: resume lands anywhere.

Real processes only: two ``tokenwire serve`` nodes (``resume: redis``), the
fake upstream in a process of its own, Debian's ``redis-server`` and
``nginx`` on ephemeral ports, nginx running the configuration printed in
``docs/deploy.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, needs, say
from processes import Served, hostile_upstream, serving
from resume_parts import RawSession, free_port

from tokenwire.protocol import Error, Finish, ResetDone, ResultBuilder, Resumed, Token

ROOT = Path(__file__).resolve().parents[2]
LEASE = 1.0


@pytest.fixture(params=["redis", "redis-cluster"])
def redis(request: pytest.FixtureRequest) -> Any:
    """The shared store: one redis-server, or a Redis Cluster (three
    primaries, three replicas); both started once for the run."""
    return request.getfixturevalue("redis" if request.param == "redis" else "redis_cluster")


"""resume_lease in these tests: a dead node's generation ends within LEASE + 1 s."""


def nginx_config(ports: list[int], listen: int) -> str:
    """The nginx configuration of docs/deploy.md, on these ports."""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    match = re.search(r"```nginx\n(.*?)```", doc, re.DOTALL)
    assert match, "docs/deploy.md has no nginx block"
    text = match.group(1)
    servers = re.findall(r"server 127\.0\.0\.1:(\d+)", text)
    assert len(servers) == len(ports), servers
    for documented, port in zip(servers, ports, strict=True):
        text = text.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{port}", 1)
    return re.sub(r"listen 127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{listen};", text)


@contextlib.contextmanager
def nginx(tmp: Path, ports: list[int], **directives: str) -> Iterator[str]:
    """Debian's nginx in front of ``ports``; its WebSocket URL. ``directives``
    change the value of a proxy directive of the documented configuration
    (``proxy_read_timeout="1s"``)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    needs("nginx", Path(binary).exists())
    listen = free_port()
    prefix = tmp / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    text = nginx_config(ports, listen)
    for name, value in directives.items():
        text, changed = re.subn(rf"{name} [^;]+;", f"{name} {value};", text)
        assert changed, name
    conf.write_text(text)
    with (prefix / "error.log").open("wb") as errors:
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(conf), "-e", "stderr",
             "-g", f"daemon off; pid {prefix / 'nginx.pid'};"],
            stdout=subprocess.DEVNULL, stderr=errors,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert process.poll() is None, (prefix / "error.log").read_text()
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                break
            time.sleep(0.02)
        yield f"ws://127.0.0.1:{listen}/v1/ws"
    finally:
        process.terminate()
        process.wait(10)


def node_config(base_url: str, redis_url: str, port: int, **server: Any) -> dict[str, Any]:
    params = {"model": "openai/fake-model", "api_base": base_url, "api_key": "sk-test"}
    return {
        "model_list": [{"model_name": "fake", "litellm_params": params}],
        "server": {
            "resume": "redis",
            "redis_url": redis_url,
            "resume_lease": LEASE,
            "orphan_timeout": 10,
            "drain_timeout": 5,
            **server,
        },
    }


@dataclass
class Cluster:
    nodes: list[Served]
    url: str
    """nginx's WebSocket URL."""
    redis: Any

    def node_of(self, session: str, event: str) -> int:
        """The node whose log has ``event`` for ``session``."""
        found = [
            i
            for i, node in enumerate(self.nodes)
            if any(event in line and session in line for line in node.log_lines())
        ]
        assert len(found) == 1, (event, found)
        return found[0]


@contextlib.asynccontextmanager
async def cluster(tmp: Path, redis: Any, **server: Any) -> AsyncIterator[Cluster]:
    redis.cli("FLUSHALL")
    async with hostile_upstream(tmp) as (base_url, _):
        ports = [free_port(), free_port()]
        configs = [node_config(base_url, redis.url, port, **server) for port in ports]
        async with (
            serving(tmp, configs[0], name="a", port=ports[0]) as a,
            serving(tmp, configs[1], name="b", port=ports[1]) as b,
        ):
            with nginx(tmp, ports) as url:
                yield Cluster([a, b], url, redis)


def _events(node: Served) -> list[dict[str, Any]]:
    """The node's log, one JSON object a line."""
    return [json.loads(line) for line in node.log_lines() if line.startswith("{")]


def _text(frames: list[Any]) -> str:
    return "".join(f.text for f in frames if isinstance(f, Token))


async def test_a_cut_connection_resumes_on_the_other_node_whole(tmp_path, redis):
    async with cluster(tmp_path, redis) as c:
        first = await RawSession.open(c.url)
        await first.generate("t1", say(tokens=2), conversation="c")
        await first.until_terminal("t1")
        await first.generate("g", say(tokens=80, interval=0.02))
        seen = await first.frames_until("g", seq=10)
        await first.drop()  # the TCP connection is cut mid-answer
        again = await RawSession.open(c.url)  # nginx: round robin, the other node
        replies = await again.resume(first.token, {"g": seen[-1].seq})
        assert replies == [Resumed(id=None), Resumed(id="g", after_seq=10)]
        rest = await again.until_terminal("g")
        builder = ResultBuilder("g")
        for frame in [*seen, *rest]:
            builder.add(frame)
        assert builder.result().content == "".join(f"tok{i} " for i in range(80))
        session = first.ready.session
        assert c.node_of(session, "session open") != c.node_of(session, "session resumed")
        # The conversation's next turn, on the node the client is on now.
        await again.generate("t2", say(echo_roles=True), conversation="c")
        turn = await again.until_terminal("t2")
        assert _text(turn) == "user assistant user "


async def test_a_killed_node_s_generation_ends_retryable_within_the_lease(tmp_path, redis):
    async with cluster(tmp_path, redis) as c:
        a, b = c.nodes
        first = await RawSession.open(a.url)
        await first.generate("g", say(tokens=400, interval=0.02))
        seen = await first.frames_until("g", seq=5)
        os.killpg(a.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        again = await RawSession.open(b.url)
        replies = await again.resume(first.token, {"g": seen[-1].seq})
        assert replies[1] == Resumed(id="g", after_seq=5)
        rest = await again.until_terminal("g")
        ended = time.monotonic() - killed
        assert [f.seq for f in rest] == list(range(6, 6 + len(rest)))  # exactly once
        error = rest[-1]
        assert isinstance(error, Error) and error.code == "upstream_error" and error.retryable
        assert ended <= LEASE + 1.0, ended


@pytest.mark.parametrize("listener", ["connected", "killed"])
async def test_a_cancel_through_one_node_stops_a_generation_on_another(tmp_path, redis, listener):
    async with cluster(tmp_path, redis) as c:
        a, b = c.nodes
        first = await RawSession.open(a.url)
        await first.generate("g", say(tokens=2000, interval=0.02))
        seen = await first.frames_until("g", seq=3)
        await first.drop()
        if listener == "killed":
            # Node A's pub/sub connection is cut: the cancel still reaches it.
            assert "killed" not in redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
        again = await RawSession.open(b.url)
        await again.resume(first.token, {"g": seen[-1].seq})
        asked = time.monotonic()
        await again.send({"type": "cancel", "id": "g"})
        rest = await again.until_terminal("g")
        assert isinstance(rest[-1], Finish) and rest[-1].reason == "cancelled"
        assert time.monotonic() - asked < LEASE + 1.0
        # Node A closed its upstream request: the generation ended cancelled there.
        await asyncio.sleep(0.2)
        ends = [e for e in _events(a) if e.get("event") == "generation" and e.get("gen") == "g"]
        assert [e["outcome"] for e in ends] == ["cancelled"]


async def test_a_reset_through_one_node_stops_the_generations_of_another(tmp_path, redis):
    async with cluster(tmp_path, redis) as c:
        a, b = c.nodes
        first = await RawSession.open(a.url)
        await first.generate("t1", say(tokens=2), conversation="c")
        await first.until_terminal("t1")
        await first.generate("g", say(tokens=2000, interval=0.02))
        seen = await first.frames_until("g", seq=3)
        await first.drop()
        again = await RawSession.open(b.url)
        await again.resume(first.token, {"g": seen[-1].seq})
        await again.send({"type": "reset"})
        rest = await again.until_terminal("g")
        assert isinstance(rest[-1], Finish) and rest[-1].reason == "cancelled"
        done = await again.next_untagged()  # after the terminal frame, as the contract says
        assert isinstance(done, ResetDone) and done.cancelled == ["g"]
        # The conversation is forgotten on every node.
        await again.generate("t2", say(echo_roles=True), conversation="c")
        assert _text(await again.until_terminal("t2")) == "user "


async def test_a_draining_node_s_clients_resume_on_the_others(tmp_path, redis):
    async with cluster(tmp_path, redis) as c:
        first = await RawSession.open(c.url)
        await first.generate("t1", say(tokens=3), conversation="c")
        await first.until_terminal("t1")
        owner = c.nodes[c.node_of(first.ready.session, "session open")]
        owner.process.send_signal(signal.SIGTERM)
        code, _ = await first.closed()
        assert code == 1001
        # nginx sends the new handshake to the node still serving.
        again = await RawSession.open(c.url)
        replies = await again.resume(first.token, {"t1": 0})
        assert replies[0] == Resumed(id=None)
        assert replies[1] == Resumed(id="t1", after_seq=0)
        await again.until_terminal("t1")
        await again.generate("t2", say(echo_roles=True), conversation="c")
        assert _text(await again.until_terminal("t2")) == "user assistant user "
        assert await asyncio.wait_for(owner.process.wait(), TIMEOUT) == 0
