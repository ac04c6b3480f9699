"""When Redis loses what it held, or goes away: streaming goes on, a resume
that would need the lost frames fails (``resume_failed``), never a silent gap."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

import structlog
from conftest import TIMEOUT, say
from resume_parts import RawSession, redis_server

from tokenwire.protocol import Finish, ResultBuilder, Resumed, ResumeFailed
from tokenwire.server.stores.resume import token_hash as _hash


def _whole(frames: list, tokens: int) -> None:
    builder = ResultBuilder("g")
    for frame in frames:
        builder.add(frame)
    result = builder.result()
    assert result.reason == "stop"
    assert result.content == "".join(f"tok{i} " for i in range(tokens))


async def test_redis_flushed_mid_stream_streaming_goes_on_and_a_resume_fails(start_server, redis):
    redis.cli("FLUSHALL")
    async with start_server(resume="redis", redis_url=redis.url) as handle:
        client = await RawSession.open(handle.url)
        await client.generate("g", say(tokens=60, interval=0.01))
        seen = await client.frames_until("g", seq=20)
        assert "OK" in redis.cli("FLUSHALL")
        rest = await client.until_terminal("g")
        _whole([*seen, *rest], 60)  # live streaming went on, whole
        await client.drop()
        again = await RawSession.open(handle.url)
        with structlog.testing.capture_logs() as logs:
            replies = await again.resume(client.token, {"g": 10})
        assert replies[0] == Resumed(id=None)  # the session is still on this node
        assert replies[1] == ResumeFailed(id="g", reason="gap")
        (failed,) = [e for e in logs if e["event"].startswith("resume failed")]
        assert failed["cause"] == "data_gone", failed
        assert failed["event"].startswith("resume failed: gap (frames 11-")
        assert failed["event"].endswith("gone from the store (flushed or expired))")
        assert 'cause="data_gone",reason="gap"} 1.0' in handle.server.metrics.render().decode()
        # After the flush, what was stored is whole again.
        late = await RawSession.open(handle.url)
        replies = await late.resume(client.token, {"g": rest[-2].seq})
        assert replies[1] == Resumed(id="g", after_seq=rest[-2].seq)
        assert await late.until_terminal("g") == rest[-1:]


async def test_redis_down_streams_on_reports_resume_off_and_says_so_once(
    start_server, tmp_path, caplog
):
    with redis_server(tmp_path) as redis:
        async with start_server(resume="redis", redis_url=redis.url) as handle:
            client = await RawSession.open(handle.url)
            assert client.ready.resume_token is not None
            await client.generate("g", say(tokens=80, interval=0.01))
            seen = await client.frames_until("g", seq=10)
            redis.stop()
            rest = await client.until_terminal("g")
            _whole([*seen, *rest], 80)
            # New sessions and generations run, with resume reported off.
            other = await RawSession.open(handle.url)
            assert other.ready.resume_token is None and other.ready.resume_ttl is None
            await other.generate("h", say(tokens=30, interval=0.005))
            frames = await other.until_terminal("h")
            assert isinstance(frames[-1], Finish) and frames[-1].reason == "stop"
            metrics = await asyncio.to_thread(_get, handle.http + "/metrics")
            assert "tokenwire_resume_store_outages_total 1.0" in metrics
            # Back: resume is on again; what was streamed during the outage is a gap.
            redis.start()
            await _until(lambda: handle.server.store.up)
            back = await RawSession.open(handle.url)
            assert back.ready.resume_token is not None
            await client.drop()
            again = await RawSession.open(handle.url)
            with structlog.testing.capture_logs() as logs:
                replies = await again.resume(client.token, {"g": 5})
            assert replies[1] == ResumeFailed(id="g", reason="gap")
            (failed,) = [e for e in logs if e["event"].startswith("resume failed")]
            assert failed["cause"] == "store_unreachable", failed
            assert "not stored: Redis was unreachable" in failed["event"]
            metrics = await asyncio.to_thread(_get, handle.http + "/metrics")
            assert "tokenwire_resume_store_outages_total 1.0" in metrics
            assert 'cause="store_unreachable",reason="gap"} 1.0' in metrics


async def test_a_generation_that_just_ended_here_is_replayed_whole(start_server, redis):
    # Redis takes no write for a while: the generation ends with its last
    # frames, the terminal one among them, still waiting to be stored (and
    # so not yet sent). A resume then must wait for them, not call the
    # missing terminal frame a gap (1 answer in 13 was lost so under drops).
    redis.cli("FLUSHALL")
    async with start_server(resume="redis", redis_url=redis.url) as handle:
        client = await RawSession.open(handle.url)
        await client.generate("g", say(tokens=20, interval=0.005))
        seen = await client.frames_until("g", seq=5)
        assert "OK" in redis.cli("CLIENT", "PAUSE", "700", "WRITE")
        await asyncio.sleep(0.3)  # the generation ends meanwhile (20 × 5 ms)
        assert not handle.server.sessions[_hash(client.token)].generations
        await client.drop()
        again = await RawSession.open(handle.url)
        replies = await again.resume(client.token, {"g": 5})
        assert replies == [Resumed(id=None), Resumed(id="g", after_seq=5)]
        rest = await again.until_terminal("g")
        _whole([*seen, *rest], 20)


async def _until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a flag the server sets; nothing to await)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return response.read().decode()


async def test_a_full_redis_is_one_refusal_episode_not_outages(start_server, tmp_path):
    """``maxmemory 2mb`` with ``noeviction``: Redis answers every write with
    OOM. That is "Redis refuses writes", said and counted once, with resume
    not offered meanwhile; never "unreachable" (a lease renewal's OOM was
    taken for an outage, then the probe's PING succeeded: 17 lines and 4
    outages for 5 generations)."""
    with redis_server(tmp_path) as redis:
        async with start_server(resume="redis", redis_url=redis.url) as handle:
            with structlog.testing.capture_logs() as logs:
                assert "OK" in redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
                used = int(redis.cli("INFO", "memory").split("used_memory:")[1].split()[0])
                assert "OK" in redis.cli("CONFIG", "SET", "maxmemory", str(used + 200_000))
                sessions = [await RawSession.open(handle.url) for _ in range(5)]
                for session in sessions:
                    await session.generate("g", say(tokens=400, interval=0.002))
                for session in sessions:
                    frames = await session.until_terminal("g")
                    _whole(frames, 400)  # streaming goes on, whole
                await asyncio.sleep(1.5)  # lease renewals meet the OOM too
                refusing = await RawSession.open(handle.url)
                assert refusing.ready.resume_token is None  # no resume while refused
                assert "OK" in redis.cli("CONFIG", "SET", "maxmemory", "0")
                after = await RawSession.open(handle.url)
                await after.generate("g", say(tokens=5))
                await after.until_terminal("g")
                await _until(lambda: handle.server.store.up)
                back = await RawSession.open(handle.url)
                assert back.ready.resume_token is not None
            store_lines = [e for e in logs if "resume store" in e["event"]]
            events = [e["event"] for e in store_lines]
            assert events == [
                "resume store refuses writes",
                "resume store takes writes again",
            ], events
            assert "OOM" in store_lines[0]["error"]
            metrics = await asyncio.to_thread(_get, handle.http + "/metrics")
            assert "tokenwire_resume_store_refusals_total 1.0" in metrics
            assert "tokenwire_resume_store_outages_total 0.0" in metrics
