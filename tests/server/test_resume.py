"""Resume after a dropped connection: exact replay, no gap, no duplicate.

Each test runs on every store: ``memory`` (one node), ``redis`` (a real
``redis-server`` the tests start on an ephemeral port) and ``redis-cluster``
(a real Redis Cluster: three primaries, three replicas).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import structlog
import websockets
from conftest import TIMEOUT, say
from resume_parts import RawSession, resume_settings

from tokenwire.client import connect as connect_client
from tokenwire.protocol import (
    Error,
    Finish,
    ResultBuilder,
    Resumed,
    ResumeFailed,
    Token,
)

STORES = ["memory", "redis", "redis-cluster"]
TOOL = {"name": "lookup", "arguments": '{"q": "weather"}', "fragment_chars": 4}


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_url(store: str, request: pytest.FixtureRequest) -> str | None:
    """A fresh database of the tests' redis-server (or their Redis Cluster),
    for the redis stores only."""
    if not store.startswith("redis"):
        return None
    server = request.getfixturevalue("redis" if store == "redis" else "redis_cluster")
    server.cli("FLUSHALL")
    return str(server.url)


async def test_a_resume_from_every_seq_yields_exactly_the_frames_after_it(
    start_server, store, redis_url
):
    settings = resume_settings(store, redis_url)
    async with start_server(**settings) as handle:
        first = await RawSession.open(handle.url)
        await first.generate("g", say(tokens=12, tool_calls=[TOOL]))
        reference = await first.until_terminal("g")
        n = reference[-1].seq
        assert n > 12
        await first.drop()
        for k in range(-1, n):  # n is the terminal frame's seq
            again = await RawSession.open(handle.url)
            replies = await again.resume(first.token, {"g": k})
            assert replies[0] == Resumed(id=None)
            assert replies[1] == Resumed(id="g", after_seq=k)
            assert await again.until_terminal("g") == reference[k + 1 :], f"after seq {k}"
            await again.drop()


async def test_a_dropped_stream_resumed_mid_answer_is_whole(start_server, store, redis_url):
    settings = resume_settings(store, redis_url)
    async with start_server(**settings) as handle:
        first = await RawSession.open(handle.url)
        await first.generate("g", say(tokens=60, interval=0.01))
        seen = await first.frames_until("g", seq=9)
        await first.drop()
        await asyncio.sleep(0.2)  # it streams on while nobody listens
        again = await RawSession.open(handle.url)
        replies = await again.resume(first.token, {"g": 9})
        assert replies == [Resumed(id=None), Resumed(id="g", after_seq=9)]
        rest = await again.until_terminal("g")
        builder = ResultBuilder("g")
        for frame in [*seen, *rest]:
            builder.add(frame)  # invariants 1-4: no gap, no duplicate
        result = builder.result()
        assert result.reason == "stop"
        assert result.content == "".join(f"tok{i} " for i in range(60))


async def test_a_token_presented_with_another_api_key_is_unknown(start_server, store, redis_url):
    settings = resume_settings(store, redis_url, api_keys=["key-a", "key-b"])
    async with start_server(**settings) as handle:
        first = await RawSession.open(handle.url, key="key-a")
        await first.generate("g", say(tokens=3))
        await first.until_terminal("g")
        await first.drop()
        thief = await RawSession.open(handle.url, key="key-b")
        replies = await thief.resume(first.token, {"g": -1})
        assert replies == [
            ResumeFailed(id=None, reason="unknown"),
            ResumeFailed(id="g", reason="unknown"),
        ]
        # The session lives on for its own key.
        owner = await RawSession.open(handle.url, key="key-a")
        assert (await owner.resume(first.token, {"g": 2}))[0] == Resumed(id=None)


async def test_unknown_tokens_and_generations_and_a_late_resume_fail_clearly(
    start_server, store, redis_url
):
    settings = resume_settings(store, redis_url)
    async with start_server(**settings) as handle:
        stranger = await RawSession.open(handle.url)
        replies = await stranger.resume("no-such-token", {"g": 0})
        assert replies == [
            ResumeFailed(id=None, reason="unknown"),
            ResumeFailed(id="g", reason="unknown"),
        ]
        # The connection goes on as its own new session.
        await stranger.generate("mine", say(tokens=2))
        assert isinstance((await stranger.until_terminal("mine"))[-1], Finish)

        first = await RawSession.open(handle.url)
        await first.generate("g", say(tokens=2))
        await first.until_terminal("g")
        await first.drop()
        again = await RawSession.open(handle.url)
        replies = await again.resume(first.token, {"never-sent": -1})
        assert replies == [Resumed(id=None), ResumeFailed(id="never-sent", reason="unknown")]
        # resume is only valid first
        await again.send({"type": "resume", "token": first.token, "generations": {}})
        error = await again.next_untagged()
        assert isinstance(error, Error) and error.code == "bad_message"
        assert "first message" in error.message


async def test_a_resume_after_resume_ttl_is_expired(start_server, store, redis_url):
    settings = resume_settings(store, redis_url, resume_ttl=1, orphan_timeout=0.5)
    async with start_server(**settings) as handle:
        first = await RawSession.open(handle.url)
        await first.generate("g", say(tokens=2))
        await first.until_terminal("g")
        await first.drop()
        await asyncio.sleep(2.5)
        again = await RawSession.open(handle.url)
        replies = await again.resume(first.token, {"g": 0})
        assert replies == [
            ResumeFailed(id=None, reason="expired"),
            ResumeFailed(id="g", reason="expired"),
        ]


async def test_frames_past_resume_generation_bytes_are_a_gap_never_a_hole(
    start_server, store, redis_url
):
    settings = resume_settings(store, redis_url, resume_generation_bytes=6000)
    async with start_server(**settings) as handle:
        first = await RawSession.open(handle.url)
        # Paced, so that Redis holds many entries (one per 5 ms batch): the
        # bound drops whole entries, the oldest first.
        await first.generate("g", say(tokens=400, interval=0.002))
        reference = await first.until_terminal("g")
        await first.drop()
        again = await RawSession.open(handle.url)
        with structlog.testing.capture_logs() as logs:
            replies = await again.resume(first.token, {"g": 0})
        assert replies == [Resumed(id=None), ResumeFailed(id="g", reason="gap")]
        # The server names the bound, once, and counts it.
        (failed,) = [e for e in logs if e["event"].startswith("resume failed")]
        assert failed["reason"] == "gap" and failed["cause"] == "resume_generation_bytes"
        assert failed["event"].startswith("resume failed: gap (frames 1-")
        assert failed["event"].endswith(" trimmed by resume_generation_bytes)")
        assert failed["log_level"] == "info" and failed["generation"] == "g"
        assert _failures(handle) == {("gap", "resume_generation_bytes"): 1.0}
        # The last frames are still kept.
        late = await RawSession.open(handle.url)
        last = reference[-1].seq
        replies = await late.resume(first.token, {"g": last - 2})
        assert replies[1] == Resumed(id="g", after_seq=last - 2)
        assert await late.until_terminal("g") == reference[-2:]


async def test_conversations_come_back_with_the_session(start_server, store, redis_url, fake):
    settings = resume_settings(store, redis_url)
    async with start_server(**settings) as handle:
        first = await RawSession.open(handle.url)
        await first.generate("t1", say(tokens=3), conversation="c")
        await first.until_terminal("t1")
        await first.drop()
        again = await RawSession.open(handle.url)
        await again.resume(first.token, {})
        mark = fake.mark()
        await again.generate("t2", [{"role": "user", "content": "and then?"}], conversation="c")
        await again.until_terminal("t2")
        record = await fake.request_after(mark, TIMEOUT)
        sent = record.body["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]
        assert sent[1]["content"] == "tok0 tok1 tok2 "


async def test_a_resume_takes_the_session_from_a_connection_that_is_still_open(
    start_server, store, redis_url
):
    settings = resume_settings(store, redis_url)
    async with start_server(**settings) as handle:
        first = await RawSession.open(handle.url)
        await first.generate("g", say(tokens=40, interval=0.02))
        seen = await first.frames_until("g", seq=4)
        # The client believes the first connection dead (it is not yet).
        again = await RawSession.open(handle.url)
        replies = await again.resume(first.token, {"g": seen[-1].seq})
        assert replies[1] == Resumed(id="g", after_seq=4)
        rest = await again.until_terminal("g")
        assert rest[0].seq == 5 and isinstance(rest[-1], Finish)
        code, _ = await first.closed()
        assert code == 4009


async def test_cancel_and_reset_reach_a_resumed_generation(start_server, store, redis_url, fake):
    settings = resume_settings(store, redis_url)
    async with start_server(**settings) as handle:
        first = await RawSession.open(handle.url)
        mark = fake.mark()
        await first.generate("g", say(tokens=500, interval=0.02))
        record = await fake.request_after(mark, TIMEOUT)
        seen = await first.frames_until("g", seq=2)
        await first.drop()
        again = await RawSession.open(handle.url)
        await again.resume(first.token, {"g": seen[-1].seq})
        await again.send({"type": "cancel", "id": "g"})
        frames = await again.until_terminal("g")
        assert isinstance(frames[-1], Finish) and frames[-1].reason == "cancelled"
        await record.wait_ended(TIMEOUT)
        assert record.disconnected


async def test_text_sent_while_nobody_listens_is_not_lost(start_server, store, redis_url):
    # The answer finishes while the client is away: all of it is replayed.
    settings = resume_settings(store, redis_url)
    async with start_server(**settings) as handle:
        first = await RawSession.open(handle.url)
        await first.generate("g", say(tokens=30, interval=0.005))
        await first.frames_until("g", seq=0)
        await first.drop()
        await asyncio.sleep(0.6)
        again = await RawSession.open(handle.url)
        await again.resume(first.token, {"g": 0})
        rest = await again.until_terminal("g")
        tokens = [f.text for f in rest if isinstance(f, Token)]
        assert "tok0 " + "".join(tokens) == "".join(f"tok{i} " for i in range(30))


def _failures(handle) -> dict[tuple[str, str], float]:
    """``tokenwire_resume_failures_total`` by (reason, cause)."""
    out = {}
    for line in handle.server.metrics.render().decode().splitlines():
        if line.startswith("tokenwire_resume_failures_total{"):
            labels, _, value = line.partition("} ")
            fields = dict(part.split("=") for part in labels.split("{")[1].split(","))
            out[fields["reason"].strip('"'), fields["cause"].strip('"')] = float(value)
    return out


def _sessions(handle) -> dict[str, float]:
    """``tokenwire_sessions`` by state, and the evictions."""
    out = {}
    for line in handle.server.metrics.render().decode().splitlines():
        if line.startswith("tokenwire_sessions{state="):
            state, _, value = line.partition("} ")
            out[state.split('"')[1]] = float(value)
        elif line.startswith("tokenwire_sessions_evicted_total "):
            out["evicted"] = float(line.split()[1])
    return out


async def test_detached_sessions_make_room_for_attached_ones(start_server, store, redis_url):
    settings = resume_settings(store, redis_url, max_sessions=2, orphan_timeout=30)
    async with start_server(**settings) as handle:
        dropped = [await RawSession.open(handle.url) for _ in range(2)]
        for client in dropped:
            await client.generate("g", say(tokens=200, interval=0.02))
            await client.frames_until("g", seq=2)
            await client.drop()
        await _until(lambda: _sessions(handle) | {"evicted": 0} == _gone(2))
        # The server is "full" of sessions nobody is attached to: two new
        # clients connect at once, and stream.
        fresh = await asyncio.gather(*(RawSession.open(handle.url) for _ in range(2)))
        for client in fresh:
            await client.generate("h", say(tokens=5))
        for client in fresh:
            frames = await client.until_terminal("h")
            assert isinstance(frames[-1], Finish) and frames[-1].reason == "stop"
        assert _sessions(handle) == {"attached": 2.0, "detached": 0.0, "evicted": 2.0}
        # Now every session is attached: the next handshake is refused.
        with pytest.raises(websockets.InvalidStatus) as refused:
            await RawSession.open(handle.url)
        assert refused.value.response.status_code == 503
        # The evicted sessions' generations were cancelled; a resume hears expired.
        await fresh[1].ws.close()
        await _until(lambda: _sessions(handle)["attached"] == 1)  # the server saw it go
        late = await RawSession.open(handle.url)
        with structlog.testing.capture_logs() as logs:
            replies = await late.resume(dropped[0].token, {"g": 2})
        expired = [ResumeFailed(id=None, reason="expired"), ResumeFailed(id="g", reason="expired")]
        assert replies == expired
        (failed,) = [e for e in logs if e["event"].startswith("resume failed")]
        assert failed["cause"] == "max_sessions"


async def test_a_generate_the_server_never_read_is_sent_again_after_the_resume(
    start_server, store, redis_url
):
    # The client registered a generation whose generate never reached the
    # server (the connection dropped under it): the resume hears unknown,
    # and the client sends the generate again instead of losing it.
    settings = resume_settings(store, redis_url)
    async with (
        start_server(**settings) as handle,
        connect_client(handle.url, reconnect=True) as client,
    ):
        warm = await client.generate(model="fake", messages=say(tokens=2))
        await warm.result()
        unsent = client.generate(model="fake", messages=say(tokens=30, interval=0.01), id="u")
        sent = await _without_sending(client, unsent)
        with structlog.testing.capture_logs() as logs:
            assert client._drop()
            result = await sent.result()
        assert result.content == "".join(f"tok{i} " for i in range(30))
        assert client.resumes == 1
        (failed,) = [e for e in logs if e["event"].startswith("resume failed")]
        assert (failed["reason"], failed["cause"]) == ("unknown", "not_started")


async def _without_sending(client, generate) -> object:
    """Run ``client.generate(...)`` with its send swallowed, as a dropped
    connection would; the generation it registered."""
    real = client._send

    async def lost(message):
        client._send = real

    client._send = lost
    return await generate


def _gone(n: int) -> dict[str, float]:
    """``_sessions`` once ``n`` dropped sessions are detached and their links closed."""
    return {"attached": 0.0, "detached": float(n), "evicted": 0}


async def _until(condition) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (a metric: nothing to await)
            await asyncio.sleep(0.01)


async def test_a_detached_session_makes_room_for_a_chat_completion(start_server, store, redis_url):
    # Admission is one rule for every surface: at max_sessions a chat
    # completion evicts the detached session too, and is served.
    settings = resume_settings(store, redis_url, max_sessions=1)
    async with start_server(**settings) as handle:
        dropped = await RawSession.open(handle.url)
        await dropped.generate("g", say(tokens=200, interval=0.02))
        await dropped.frames_until("g", seq=2)
        await dropped.drop()
        await _until(lambda: _sessions(handle) | {"evicted": 0} == _gone(1))
        async with httpx.AsyncClient(base_url=handle.http, timeout=TIMEOUT) as http:
            body = {"model": "fake", "messages": say(tokens=3)}
            answer = await http.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
        assert _sessions(handle)["evicted"] == 1.0
