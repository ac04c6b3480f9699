"""The resume-store contract (``tokenwire.server.stores.contract``), held
against every store: the same tests, run on each one ``STORES`` names.

A store is driven as the server drives it, through ``ResumeStore`` and
``Keeper`` only, by a ``Sessionish`` that records what reaches its link. The
Redis store talks to the tests' real redis-server, and to their real Redis
Cluster (``redis-cluster``). A new store is added to
``STORES`` (and to ``open_store``): the suite is its specification.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tokenwire.protocol import (
    Error,
    Finish,
    Generate,
    Resumed,
    ResumeFailed,
    ServerFrame,
    Token,
)
from tokenwire.server.config import ServerSettings
from tokenwire.server.metrics import Metrics
from tokenwire.server.stores import ResumeStore, open_store
from tokenwire.server.stores.contract import ChatAnswer, KeptResponse
from tokenwire.server.stores.resume import SKIP_ALL, Cause, new_token, token_hash

STORES = ["memory", "redis", "redis-cluster"]
"""Every store that keeps frames for a resume (``off`` keeps none: its own test)."""


class Sessionish:
    """A session as a store sees it (``contract.StoredSession``)."""

    def __init__(self) -> None:
        self.id = "s-1"
        self.token_hash = token_hash(new_token())
        self.key_hash = "key"
        self.delivered: list[ServerFrame] = []
        self.conversations: dict[str, list[dict[str, Any]]] = {}
        self.runs: set[str] = set()
        self.started: set[str] = set()
        self.relayed: list[tuple[str, str, int]] = []

    def deliver(self, frames: list[ServerFrame]) -> None:
        self.delivered.extend(frames)

    def conversation(self, name: str) -> list[dict[str, Any]] | None:
        return self.conversations.get(name)

    def running(self, gid: str) -> bool:
        return gid in self.runs

    def knows(self, gid: str) -> bool:
        return gid in self.started

    def relay(self, request: Generate, owner: str, after_seq: int) -> None:
        self.relayed.append((request.id, owner, after_seq))


def _settings(store: str, url: str | None, **limits: Any) -> ServerSettings:
    resume = "redis" if store.startswith("redis") else store
    return ServerSettings(resume=resume, redis_url=url, **{"resume_lease": 0.6, **limits})


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(kind: str, request: pytest.FixtureRequest) -> str | None:
    if not kind.startswith("redis"):
        return None
    server = request.getfixturevalue("redis" if kind == "redis" else "redis_cluster")
    server.cli("FLUSHALL")
    return str(server.url)


@pytest.fixture
async def opened(kind: str, url: str | None) -> AsyncIterator[Any]:
    """A started store of ``kind``; more with the same settings: ``opened(**limits)``."""
    stores: list[ResumeStore] = []

    async def open_(**limits: Any) -> ResumeStore:
        store = open_store(_settings(kind, url, **limits), Metrics())
        await store.start()
        stores.append(store)
        return store

    yield open_
    for store in stores:
        await store.close()


def _request(gid: str, conversation: str | None = None) -> Generate:
    return Generate(
        id=gid, model="demo", messages=[{"role": "user", "content": "hi"}],
        conversation=conversation,
    )  # fmt: skip


def _frames(gid: str, n: int, *, finish: bool = True) -> list[ServerFrame]:
    frames: list[ServerFrame] = [Token(id=gid, seq=i, text=f"t{i} ") for i in range(n)]
    if finish:
        content = "".join(f"t{i} " for i in range(n))
        frames.append(
            Finish(id=gid, seq=n, reason="stop", content=content, tool_calls=[], usage=None)
        )
    return frames


async def _keep(
    store: ResumeStore, session: Sessionish, gid: str, frames: list[ServerFrame], every: int = 0
):
    """Keep ``frames`` one by one, as a generation sends them (waiting until
    they are stored ``every`` so many frames: a store may keep a batch whole)."""
    keeper = store.keeper(session)
    session.started.add(gid)
    session.runs.add(gid)
    keeper.started(_request(gid))
    for i, frame in enumerate(frames, 1):
        keeper.keep([frame])
        if every and i % every == 0:
            await keeper.flushed()
    await keeper.flushed()
    session.runs.discard(gid)
    return keeper


async def _replay(store: ResumeStore, keeper: Any, session: Sessionish, gid: str, seq: int):
    record, stored = await store.fetch(session.token_hash, {gid: seq})
    return keeper.replay(gid, seq, record, stored.get(gid, "gap"))


async def test_kept_frames_reach_the_link_once_each_in_order(opened):
    store = await opened()
    session = Sessionish()
    frames = _frames("g", 30)
    await _keep(store, session, "g", frames)
    assert session.delivered == frames
    assert store.up and store.keeps


async def test_a_replay_from_every_seq_is_exactly_the_frames_after_it(opened):
    store = await opened()
    session = Sessionish()
    frames = _frames("g", 12)
    keeper = await _keep(store, session, "g", frames)
    for seq in range(-1, 12):
        replay, last = await _replay(store, keeper, session, "g", seq)
        assert replay == [Resumed(id="g", after_seq=seq), *frames[seq + 1 :]], seq
        assert last == 12


async def test_a_generation_the_session_never_had_is_unknown(opened):
    store = await opened()
    session = Sessionish()
    keeper = await _keep(store, session, "g", _frames("g", 3))
    replay, last = await _replay(store, keeper, session, "other", -1)
    assert replay == [ResumeFailed(id="other", reason="unknown")]
    assert last is None


async def test_frames_past_resume_generation_bytes_are_a_gap_naming_the_bound(opened):
    store = await opened(resume_generation_bytes=4096)
    session = Sessionish()
    frames: list[ServerFrame] = [Token(id="g", seq=i, text="x" * 200) for i in range(100)]
    frames.append(Finish(id="g", seq=100, reason="stop", content="", tool_calls=[], usage=None))
    keeper = await _keep(store, session, "g", frames, every=5)
    assert session.delivered == frames  # delivered all the same
    assert keeper.lost("g") is Cause.GENERATION_BYTES
    replay, last = await _replay(store, keeper, session, "g", 0)
    assert replay == [ResumeFailed(id="g", reason="gap")]
    assert last == SKIP_ALL
    # The newest frames are still kept.
    replay, _ = await _replay(store, keeper, session, "g", 98)
    assert replay == [Resumed(id="g", after_seq=98), *frames[99:]]


async def test_a_forgotten_generation_is_no_longer_replayed_whole(opened):
    store = await opened()
    session = Sessionish()
    keeper = await _keep(store, session, "g", _frames("g", 5))
    keeper.forget("g")
    keeper.release()
    replay, last = await _replay(store, keeper, session, "g", 2)
    # Memory frees it at once (unknown); a shared store's keys expire later.
    assert replay in (
        [ResumeFailed(id="g", reason="unknown")],
        [Resumed(id="g", after_seq=2), *_frames("g", 5)[3:]],
    )
    assert last in (None, 5)


async def test_a_running_generation_replays_what_is_kept_and_the_rest_comes_live(opened):
    store = await opened()
    session = Sessionish()
    frames = _frames("g", 10, finish=False)
    keeper = await _keep(store, session, "g", frames)
    session.runs.add("g")  # still running
    replay, last = await _replay(store, keeper, session, "g", 9)
    assert replay == [Resumed(id="g", after_seq=9)]
    assert last == 9


async def test_kept_responses_come_back_as_a_chain_newest_first(opened):
    store = await opened()
    responses = store.responses(None)
    first, second = responses.new_id(), responses.new_id()
    assert first != second and first.startswith("resp_")
    one = KeptResponse(key="k", previous=None, messages=[{"role": "user", "content": "a"}])
    two = KeptResponse(key="k", previous=first, messages=[{"role": "user", "content": "b"}])
    await responses.put(first, one)
    await responses.put(second, two)
    assert await responses.chain(second) == [two, one]
    assert await responses.chain(first) == [one]
    assert await responses.chain("resp_missing") is None


async def test_a_chat_s_answer_is_named_until_dropped_by_its_own_generation(kind, opened):
    store = await opened(max_ui_chats=2)
    chats = store.chats()
    answer = ChatAnswer(token="t1", gid="g1", message_id="m1")
    await chats.put("chat-a", answer)
    assert await chats.get("chat-a") == answer
    assert await chats.get("chat-b") is None
    await chats.drop("chat-a", "g0")  # a newer answer's name is not an older one's to drop
    assert await chats.get("chat-a") == answer
    newer = ChatAnswer(token="t2", gid="g2", message_id="m2")
    await chats.put("chat-a", newer)
    await chats.drop("chat-a", "g1")
    assert await chats.get("chat-a") == newer
    await chats.drop("chat-a", "g2")
    assert await chats.get("chat-a") is None
    if not store.shared:  # this node's memory: at most max_ui_chats names
        for name in ("x", "y", "z"):
            await chats.put(name, answer)
        assert await chats.get("x") is None and await chats.get("z") == answer


async def test_a_shared_store_keeps_the_record_for_any_node(kind, opened):
    store = await opened()
    if not store.shared:
        record, _ = await store.fetch("anything", {"g": -1})
        assert record is None and await store.load("anything") is None
        return
    other = await opened()  # a second node on the same store
    session = Sessionish()
    session.conversations["c"] = [{"role": "user", "content": "hi"}]
    keeper = store.keeper(session)
    session.started.add("g")
    keeper.started(_request("g", conversation="c"))
    for frame in _frames("g", 4):
        keeper.keep([frame])
    deadline = time.time() + 60
    await keeper.detached(deadline)
    await keeper.flushed()
    record = await other.load(session.token_hash)
    assert record is not None
    assert (record.key_hash, record.session_id) == ("key", "s-1")
    assert record.deadline == pytest.approx(deadline) and not record.expired(time.time())
    assert record.requests["g"] == _request("g", conversation="c")
    assert record.conversations == {"c": [{"role": "user", "content": "hi"}]}
    await keeper.forget_conversations()
    record = await other.load(session.token_hash)
    assert record is not None and record.conversations == {}


async def test_a_shared_store_relays_a_generation_from_its_node_and_cancels_there(kind, opened):
    # A lease renewal (which also finds cancels) every 10 s: the cancel below
    # can only come in time as published (sharded on a cluster).
    owner = await opened(resume_lease=30)
    if not owner.shared:
        assert owner.serve(_Node()) == []
        return
    relay = await opened()
    node = _Node()
    tasks = owner.serve(node)
    try:
        session = Sessionish()
        keeper = owner.keeper(session)
        session.started.add("g")
        session.runs.add("g")
        keeper.started(_request("g"))
        node.generations.append((session.token_hash, "g"))
        frames = _frames("g", 6)
        for frame in frames[:3]:
            keeper.keep([frame])
        await keeper.flushed()
        # Another node resumes the session: it finds the generation and its owner...
        reader = Sessionish()
        reader.token_hash = session.token_hash
        record, stored = await relay.fetch(session.token_hash, {"g": 0})
        assert record is not None and record.owners["g"] == owner.node  # type: ignore[attr-defined]
        replay, last = relay.keeper(reader).replay("g", 0, record, stored["g"])
        assert replay == [Resumed(id="g", after_seq=0), *frames[1:3]] and last == 2
        assert reader.relayed == [("g", owner.node, 2)]  # type: ignore[attr-defined]
        # ...follows the rest as the owner stores it...
        followed: list[ServerFrame] = []

        async def follow() -> None:
            async for batch in relay.follow(session.token_hash, "g", 2):
                followed.extend(batch)

        following = asyncio.create_task(follow())
        await asyncio.sleep(0.05)
        for frame in frames[3:]:
            keeper.keep([frame])
        await asyncio.wait_for(following, 5)
        assert followed == frames[3:]
        # ...and a cancel it asks reaches the owner's node, at once.
        await relay.cancel(session.token_hash, "g", owner.node)  # type: ignore[attr-defined]
        await asyncio.wait_for(node.cancelled.wait(), 2)
        assert node.cancels == [(session.token_hash, "g")]
    finally:
        for task in tasks:
            task.cancel()


async def test_a_generation_whose_node_died_ends_with_a_retryable_error(kind, opened):
    owner = await opened()
    if not owner.shared:
        return
    relay = await opened()
    session = Sessionish()
    keeper = owner.keeper(session)
    keeper.started(_request("g"))
    keeper.keep(_frames("g", 2, finish=False))
    await keeper.flushed()  # its lease is never renewed: it lapses (resume_lease 0.6 s)
    followed: list[ServerFrame] = []
    async for batch in relay.follow(session.token_hash, "g", 1):
        followed.extend(batch)
    (last,) = followed
    assert isinstance(last, Error) and last.code == "upstream_error" and last.seq == 2


async def test_resume_off_keeps_nothing_and_delivers_at_once():
    store = open_store(ServerSettings(resume="off"), Metrics())
    await store.start()
    session = Sessionish()
    keeper = store.keeper(session)
    keeper.started(_request("g"))
    frames = _frames("g", 3)
    keeper.keep(frames)
    assert session.delivered == frames  # no wait
    assert not keeper.waiting("g") and keeper.lost("g") is None
    assert await store.fetch(session.token_hash, {"g": 0}) == (None, {})
    assert not store.shared and not store.keeps and store.up
    await store.close()


class _Node:
    """A node's generations, as a shared store's ``serve`` sees them."""

    def __init__(self) -> None:
        self.generations: list[tuple[str, str]] = []
        self.cancels: list[tuple[str, str]] = []
        self.cancelled = asyncio.Event()

    def running(self) -> list[tuple[str, str]]:
        return list(self.generations)

    def cancel(self, h: str, gid: str) -> None:
        self.cancels.append((h, gid))
        self.cancelled.set()


async def test_frames_wait_to_be_kept_then_are_delivered_in_order(opened):
    store = await opened()
    session = Sessionish()
    keeper = store.keeper(session)
    session.started.add("g")
    keeper.started(_request("g"))
    frames = _frames("g", 5)
    keeper.keep(frames[:3])
    # Delivered at once (memory), or once stored (Redis): meanwhile they wait.
    assert keeper.waiting("g") == (session.delivered == [])
    keeper.keep(frames[3:])
    await keeper.flushed()
    assert not keeper.waiting("g")
    assert session.delivered == frames


async def test_a_shared_record_past_its_deadline_is_expired(opened):
    store = await opened()
    if not store.shared:
        return
    session = Sessionish()
    keeper = store.keeper(session)
    keeper.started(_request("g"))
    keeper.keep(_frames("g", 1))
    await keeper.flushed()
    await keeper.detached(time.time() - 1)
    record = await store.load(session.token_hash)
    assert record is not None and record.expired(time.time())
    await keeper.detached(0)  # attached again: no deadline
    record = await store.load(session.token_hash)
    assert record is not None and not record.expired(time.time())


async def test_a_burst_of_commands_past_the_pool_waits_and_never_reads_as_redis_gone(kind, opened):
    """More commands in flight than the pool's connections (relays checking
    leases, say): they wait their turn (one Redis) or get a connection each
    (a cluster, whose pools cannot wait); none fails, Redis stays up."""
    store = await opened()
    if not store.shared:
        return
    burst = [store.alive("h", f"g{i}") for i in range(300)]  # type: ignore[attr-defined]
    assert await asyncio.gather(*burst) == [False] * 300
    assert store.up  # type: ignore[attr-defined]
