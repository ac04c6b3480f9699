"""Conversations: history per session, appended only by generations that finished."""

from __future__ import annotations

import asyncio

from conftest import TIMEOUT, say


async def test_history_is_sent_before_the_new_messages(server, connect, fake):
    async with connect(server) as client:
        first = say(tokens=2)
        await client.generate("t1", messages=first, conversation="chat")
        await client.result("t1")
        second = say(tokens=1)
        await client.generate("t2", messages=second, conversation="chat")
        await client.result("t2")
    sent = fake.requests[-1].body["messages"]
    assert sent == [*first, {"role": "assistant", "content": "tok0 tok1 "}, *second]


async def test_tool_calls_are_kept_in_the_history(server, connect, fake):
    call = {"name": "f", "arguments": '{"a": 1}'}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    async with connect(server) as client:
        await client.generate(
            "t1", messages=say(tokens=0, tool_calls=[call]), tools=tools, conversation="c"
        )
        await client.result("t1")
        reply = [{"role": "tool", "tool_call_id": "call_fake_0", "content": "42"}]
        await client.generate("t2", messages=reply, conversation="c")
        await client.result("t2")
    assistant = fake.requests[-1].body["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"] == [
        {
            "id": "call_fake_0",
            "type": "function",
            "function": {"name": "f", "arguments": '{"a": 1}'},
        }
    ]


async def test_cancelled_and_failed_generations_append_nothing(server, connect, fake):
    async with connect(server) as client:
        await client.generate("ok", messages=say(tokens=1), conversation="c")
        await client.result("ok")
        await client.generate("failed", messages=say(status=500), conversation="c")
        await client.result("failed")
        await client.generate("cut", messages=say(tokens=100, interval=0.05), conversation="c")
        await client.first_frame("cut")
        await client.cancel("cut")
        await client.result("cut")
        last = say(tokens=1)
        await client.generate("last", messages=last, conversation="c")
        await client.result("last")
    sent = fake.requests[-1].body["messages"]
    assert len(sent) == 3 and sent[-1] == last[0]


async def test_one_active_generation_per_conversation(server, connect):
    async with connect(server) as client:
        await client.generate("a", messages=say(tokens=5, interval=0.05), conversation="c")
        await client.generate("b", messages=say(tokens=1), conversation="c")
        error = (await client.result("b")).error
        assert error is not None
        assert (error.code, error.retryable, error.seq) == ("conversation_busy", True, 0)
        await client.generate("other", messages=say(tokens=1), conversation="d")
        assert (await client.result("other")).reason == "stop"
        await client.result("a")


async def test_reset_forgets_conversations(server, connect, fake):
    async with connect(server) as client:
        await client.generate("a", messages=say(tokens=1), conversation="c")
        await client.result("a")
        await client.send({"type": "reset"})
        await client.next_untagged()
        fresh = say(tokens=1)
        await client.generate("b", messages=fresh, conversation="c")
        await client.result("b")
    assert fake.requests[-1].body["messages"] == fresh


async def test_conversations_belong_to_their_session(server, connect, fake):
    async with connect(server) as one, connect(server) as two:
        await one.generate("a", messages=say(tokens=1), conversation="c")
        await one.result("a")
        mine = say(tokens=1)
        await two.generate("b", messages=mine, conversation="c")
        await two.result("b")
    assert fake.requests[-1].body["messages"] == mine


# -- limits: named, with a clear error, never a silent truncation -----------------


async def test_a_session_keeps_at_most_max_conversations(start_server, connect):
    async with start_server(max_conversations=2) as handle, connect(handle) as client:
        for name in ("a", "b"):
            await client.generate(name, messages=say(tokens=1), conversation=name)
            assert (await client.result(name)).reason == "stop"
        await client.generate("c", messages=say(tokens=1), conversation="c")
        error = (await client.result("c")).error
        assert error is not None
        assert (error.code, error.retryable, error.seq) == ("conversation_limit", False, 0)
        assert "max_conversations" in error.message
        # An existing conversation goes on; a reset makes room.
        await client.generate("a2", messages=say(tokens=1), conversation="a")
        assert (await client.result("a2")).reason == "stop"
        await client.send({"type": "reset"})
        await client.next_untagged()
        await client.generate("c2", messages=say(tokens=1), conversation="c")
        assert (await client.result("c2")).reason == "stop"


async def test_a_conversation_holds_at_most_max_history_bytes(start_server, connect, fake):
    async with start_server(max_history_bytes=200) as handle, connect(handle) as client:
        await client.generate("t1", messages=say(tokens=20), conversation="c")
        assert (await client.result("t1")).reason == "stop"
        mark = fake.mark()
        await client.generate("t2", messages=say(tokens=20), conversation="c")
        error = (await client.result("t2")).error
        assert error is not None and error.code == "conversation_limit"
        assert "max_history_bytes" in error.message
        assert fake.mark() == mark  # refused before anything went upstream
        # Nothing was cut: the history is whole, and the session lives on.
        await client.generate("other", messages=say(tokens=1), conversation="d")
        assert (await client.result("other")).reason == "stop"


async def test_all_sessions_together_hold_at_most_max_total_history_bytes(start_server, connect):
    # resume off: a closed session is forgotten at once (with resume on, at resume_ttl).
    async with start_server(max_total_history_bytes=200, resume="off") as handle:
        async with connect(handle) as first, connect(handle) as second:
            await first.generate("t1", messages=say(tokens=20), conversation="c")
            assert (await first.result("t1")).reason == "stop"
            await second.generate("t2", messages=say(tokens=20), conversation="c")
            error = (await second.result("t2")).error
            assert error is not None and error.code == "conversation_limit"
            assert "max_total_history_bytes" in error.message
        # The sessions closed: their history is given back.
        await asyncio.wait_for(handle.server.no_sessions.wait(), TIMEOUT)
        assert handle.server.history_bytes == 0
        async with connect(handle) as third:
            await third.generate("t3", messages=say(tokens=20), conversation="c")
            assert (await third.result("t3")).reason == "stop"
