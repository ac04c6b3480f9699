"""A Redis Cluster under the nodes: a primary fails over mid-stream, or dies.

Real processes only, as in ``test_cluster.py`` (whose other tests also run
on the cluster): two ``tokenwire serve`` nodes on a Redis Cluster of
Debian's ``redis-server`` (three primaries, three replicas), nginx in front.
The replica of the primary holding the sessions' slots takes over
(``CLUSTER FAILOVER``) while they stream: the stream goes on whole, and a
resume across the failover is exact, or says ``gap``; never a hole. A
primary killed outright is an outage of its slots until the cluster
promotes its replica: streaming goes on meanwhile, and resume comes back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import say
from resume_parts import RawSession, redis_cluster
from test_cluster import cluster

from tokenwire.protocol import Finish, GenerationFrame, Resumed, ResumeFailed, Token
from tokenwire.server.stores.redis_keys import TIMEOUT
from tokenwire.server.stores.resume import token_hash

TOKENS = 200
WHOLE = "".join(f"tok{i} " for i in range(TOKENS))


def _whole(frames: list[GenerationFrame], after: int = -1) -> str:
    """The text of ``frames``, checked to be numbered on from ``after`` + 1 (the first seq is 0)
    and to end with ``finish``."""
    assert [f.seq for f in frames] == list(range(after + 1, after + 1 + len(frames)))
    assert isinstance(frames[-1], Finish) and frames[-1].reason == "stop", frames[-1]
    return "".join(f.text for f in frames if isinstance(f, Token))


async def test_a_failover_mid_stream_loses_nothing_and_a_resume_across_it_is_exact_or_a_gap(
    tmp_path: Any, redis_cluster: Any
) -> None:
    async with cluster(tmp_path, redis_cluster) as c:
        a, b = c.nodes
        watcher = await RawSession.open(a.url)  # stays connected throughout
        dropped = await RawSession.open(a.url)  # cut before the failover
        for session in (watcher, dropped):
            await session.generate("g", say(tokens=TOKENS, interval=0.02))
        seen = await dropped.frames_until("g", seq=10)
        await dropped.drop()
        early = await watcher.frames_until("g", seq=10)
        primaries = {
            redis_cluster.primary_of(f"tw:{{{token_hash(s.token)}}}:s").port: s
            for s in (watcher, dropped)
        }
        for node in redis_cluster.nodes:
            if node.port in primaries:
                await asyncio.to_thread(redis_cluster.fail_over, node)
        for port in primaries:  # the sessions' slots are served by others now
            assert port not in {
                redis_cluster.primary_of(f"tw:{{{token_hash(s.token)}}}:s").port
                for s in (watcher, dropped)
            }
        # The stream goes on, whole.
        rest = await watcher.until_terminal("g")
        assert _whole([*early, *rest]) == WHOLE
        # The cut session resumes on the other node: exact, or a gap.
        again = await RawSession.open(b.url)
        replies = await again.resume(dropped.token, {"g": seen[-1].seq})
        assert replies[0] == Resumed(id=None)
        answer = replies[1]
        if isinstance(answer, ResumeFailed):
            assert answer.reason == "gap", answer
        else:
            assert answer == Resumed(id="g", after_seq=seen[-1].seq)
            rest = await again.until_terminal("g")
            before = "".join(f.text for f in seen if isinstance(f, Token))
            assert before + _whole(rest, after=seen[-1].seq) == WHOLE


async def test_a_primary_killed_mid_stream_stops_no_stream_and_resume_comes_back(
    tmp_path: Any,
) -> None:
    (tmp_path / "redis").mkdir()
    with redis_cluster(tmp_path / "redis") as servers:  # a cluster of its own: a node dies
        async with cluster(tmp_path, servers) as c:
            a, _ = c.nodes
            watcher = await RawSession.open(a.url)
            await watcher.generate("g", say(tokens=TOKENS, interval=0.02))
            early = await watcher.frames_until("g", seq=10)
            primary = servers.primary_of(f"tw:{{{token_hash(watcher.token)}}}:s")
            assert primary.process is not None
            primary.process.kill()
            primary.process.wait()
            primary.process = None
            # The stream goes on, whole, through the outage and the promotion:
            # held back at most a store round trip's bound at a time.
            rest: list[GenerationFrame] = []
            longest, last = 0.0, time.monotonic()
            while not rest or not isinstance(rest[-1], Finish):
                rest += await watcher.frames_until("g", seq=rest[-1].seq + 1 if rest else 11)
                longest, last = max(longest, time.monotonic() - last), time.monotonic()
            assert _whole([*early, *rest]) == WHOLE
            assert longest < TIMEOUT + 0.8, longest
            # Once the replica serves the slots, sessions are resumable again.
            deadline = time.monotonic() + 30
            while True:
                session = await RawSession.open(a.url)
                await session.ws.close()
                if session.ready.resume_token:
                    break
                assert time.monotonic() < deadline, "resume never came back"
                await asyncio.sleep(0.5)
