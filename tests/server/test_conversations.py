"""Conversations: history per session, appended only by generations that finished."""

from __future__ import annotations

from conftest import say


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
