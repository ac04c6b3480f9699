"""cancel, reset and disconnect: terminal frames come promptly and the
upstream request is closed (seen by the fake upstream, over real HTTP)."""

from __future__ import annotations

import asyncio

import websockets
from conftest import PROMPT_CLOSE_S, TIMEOUT, say

from tokenwire.protocol import Finish, ResetDone, Token, ToolCallComplete

SLOW = {"tokens": 200, "interval": 0.05}


async def test_cancel_finishes_with_what_was_sent_and_closes_the_upstream(server, connect, fake):
    async with connect(server) as client:
        mark = fake.mark()
        await client.generate("c", messages=say(**SLOW))
        record = await fake.request_after(mark, TIMEOUT)
        await client.first_frame("c")
        await client.cancel("c")
        result = await client.result("c", timeout=PROMPT_CLOSE_S)
        assert result.reason == "cancelled"
        tokens = [f.text for f in client.frames_of("c") if isinstance(f, Token)]
        assert result.content == "".join(tokens) and tokens
        assert result.usage is not None and result.usage.estimated
        assert result.usage.completion_tokens > 0
        await record.wait_ended(PROMPT_CLOSE_S)
        assert record.disconnected
        assert record.chunks_sent < 200


async def test_a_cancel_right_behind_its_generate_still_ends_it(server, connect):
    """generate and cancel in one burst: the cancel is read before the
    generation's task has run at all."""
    async with connect(server) as client:
        for i in range(5):
            await client.generate(f"burst{i}", messages=say(**SLOW))
            await client.cancel(f"burst{i}")
        for i in range(5):
            result = await client.result(f"burst{i}", timeout=PROMPT_CLOSE_S)
            assert (result.reason, result.content) == ("cancelled", "")
        await client.generate("then", messages=say(**SLOW))
        await client.send({"type": "reset"})
        done = await client.next_untagged()
        assert isinstance(done, ResetDone) and done.cancelled == ["then"]
    assert server.server.active_generations == 0


async def test_cancel_before_the_first_token_closes_the_upstream(server, connect, fake):
    async with connect(server) as client:
        mark = fake.mark()
        await client.generate("early", messages=say(tokens=3, first_delay=30))
        record = await fake.request_after(mark, TIMEOUT)
        await client.cancel("early")
        result = await client.result("early", timeout=PROMPT_CLOSE_S)
        assert (result.reason, result.content) == ("cancelled", "")
        await record.wait_ended(PROMPT_CLOSE_S)
        assert record.disconnected


async def test_cancel_of_an_unknown_or_ended_id_is_ignored(server, connect):
    async with connect(server) as client:
        await client.cancel("never-started")
        await client.generate("done", messages=say(tokens=1))
        await client.result("done")
        await client.cancel("done")
        await client.generate("probe", messages=say(tokens=1))
        await client.result("probe")
        # Nothing came for the ignored cancels: no untagged error, no second finish.
        assert client.untagged.empty()
        assert sum(isinstance(f, Finish) and f.id == "done" for f in client.frames) == 1


async def test_cancel_is_idempotent(server, connect):
    async with connect(server) as client:
        await client.generate("twice", messages=say(**SLOW))
        await client.first_frame("twice")
        await client.cancel("twice")
        await client.cancel("twice")
        assert (await client.result("twice")).reason == "cancelled"
        await client.generate("probe", messages=say(tokens=1))
        await client.result("probe")
        assert [type(f) for f in client.frames_of("twice")][-1] is Finish
        assert sum(isinstance(f, Finish) for f in client.frames_of("twice")) == 1


async def test_a_tool_call_cut_by_cancel_still_completes_before_finish(server, connect):
    call = {"name": "lookup", "arguments": '{"query": "' + "x" * 400 + '"}', "fragment_chars": 4}
    async with connect(server) as client:
        await client.generate(
            "tc", messages=say(tokens=0, tool_calls=[call], interval=0.02), tools=[_tool("lookup")]
        )
        await client.first_frame("tc")
        await client.cancel("tc")
        result = await client.result("tc")
        assert result.reason == "cancelled"
        (partial,) = result.tool_calls
        assert call["arguments"].startswith(partial.arguments) and partial.arguments
        frames = client.frames_of("tc")
        assert isinstance(frames[-2], ToolCallComplete) and isinstance(frames[-1], Finish)


async def test_other_generations_are_not_disturbed_by_a_cancel(server, connect):
    async with connect(server) as client:
        await client.generate("victim", messages=say(**SLOW))
        await client.generate("bystander", messages=say(tokens=6, interval=0.02))
        await client.first_frame("victim")
        await client.cancel("victim")
        assert (await client.result("victim")).reason == "cancelled"
        bystander = await client.result("bystander")
        assert (bystander.reason, bystander.content.count("tok")) == ("stop", 6)


async def test_reset_cancels_everything_then_says_reset_done(server, connect, fake):
    async with connect(server) as client:
        for gid in ("r1", "r2", "r3"):
            await client.generate(gid, messages=say(**SLOW))
        for gid in ("r1", "r2", "r3"):
            await client.first_frame(gid)
        await client.send({"type": "reset"})
        done = await client.next_untagged()
        assert isinstance(done, ResetDone)
        assert sorted(done.cancelled) == ["r1", "r2", "r3"]
        # reset_done came after the terminal frame of each of them.
        position = client.frames.index(done)
        for gid in ("r1", "r2", "r3"):
            terminal = client.frames_of(gid)[-1]
            assert isinstance(terminal, Finish) and terminal.reason == "cancelled"
            assert client.frames.index(terminal) < position
        for record in fake.requests[-3:]:
            await record.wait_ended(PROMPT_CLOSE_S)
            assert record.disconnected


async def test_reset_with_nothing_active(server, connect):
    async with connect(server) as client:
        await client.send({"type": "reset"})
        done = await client.next_untagged()
        assert isinstance(done, ResetDone) and done.cancelled == []


async def test_disconnect_closes_every_upstream_request(start_server, connect, fake):
    async with start_server(resume="off") as server, connect(server) as client:
        for gid in ("d1", "d2"):
            await client.generate(gid, messages=say(**SLOW))
        for gid in ("d1", "d2"):
            await client.first_frame(gid)
        records = fake.requests[-2:]
        await client.ws.close()
        for record in records:
            await record.wait_ended(PROMPT_CLOSE_S)
            assert record.disconnected


async def test_an_abrupt_disconnect_closes_the_upstream_request_too(start_server, fake):
    async with start_server(resume="off") as server:
        record = await _streaming_then_cut(server, fake)
        await record.wait_ended(PROMPT_CLOSE_S)
        assert record.disconnected
        async with asyncio.timeout(TIMEOUT):
            await server.server.no_sessions.wait()
        assert server.server.active_generations == 0


async def test_with_resume_on_a_dropped_generation_runs_for_orphan_timeout_then_is_cancelled(
    start_server, fake
):
    orphan_timeout = 1.0
    async with start_server(resume="memory", orphan_timeout=orphan_timeout) as server:
        record = await _streaming_then_cut(server, fake)
        dropped = asyncio.get_running_loop().time()
        # It waits for a resume: still streaming well after the drop ...
        await asyncio.sleep(orphan_timeout / 2)
        assert not record.ended.is_set()
        assert server.server.active_generations == 1
        # ... and is cancelled, its upstream request closed, once orphan_timeout passed.
        await record.wait_ended(orphan_timeout + 0.25 + PROMPT_CLOSE_S)
        waited = asyncio.get_running_loop().time() - dropped
        assert record.disconnected
        assert orphan_timeout <= waited <= orphan_timeout + 0.25 + PROMPT_CLOSE_S
        assert server.server.active_generations == 0


async def _streaming_then_cut(server, fake):
    """A raw connection streams one slow generation, then its TCP connection
    just goes (no close frame); the upstream request's record."""
    ws = await websockets.connect(server.url, open_timeout=TIMEOUT)
    await ws.recv()  # ready
    await ws.send(
        '{"type":"generate","id":"x","model":"fake","messages":' + _json(say(**SLOW)) + "}"
    )
    await ws.recv()  # first token
    record = fake.requests[-1]
    ws.transport.abort()
    return record


def _tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def _json(value: object) -> str:
    import json

    return json.dumps(value)
