"""Generations end to end: client → server → LiteLLM → fake upstream → back."""

from __future__ import annotations

import json

from conftest import TIMEOUT, say

from tokenwire.protocol import (
    Encoding,
    Finish,
    Reasoning,
    Token,
    ToolCallChunk,
    ToolCallComplete,
)


async def test_ready_frame_lists_models_and_limits(start_server, connect):
    async with (
        start_server(max_generations=3, max_message_bytes=5000) as handle,
        connect(handle) as client,
    ):
        ready = client.ready
        assert ready is not None
        assert ready.protocol == "tokenwire.v1"
        assert ready.models == ["fake", "demo"]
        assert (ready.limits.max_generations, ready.limits.max_message_bytes) == (3, 5000)
        assert ready.session


async def test_tokens_stream_in_order_and_finish_carries_the_whole_text(server, connect, encoding):
    async with connect(server, encoding) as client:
        await client.generate("g1", messages=say(tokens=5))
        result = await client.result("g1")
        frames = client.frames_of("g1")
        assert [type(f) for f in frames] == [Token] * 5 + [Finish]
        assert [f.seq for f in frames] == list(range(6))
        assert result.content == "tok0 tok1 tok2 tok3 tok4 "
        assert result.reason == "stop"
        assert result.usage is not None and not result.usage.estimated
        assert result.usage.completion_tokens == 5


async def test_msgpack_frames_are_binary_and_json_frames_are_text(server, connect):
    async with connect(server, Encoding.MSGPACK) as client:
        await client.generate("g", messages=say(tokens=1))
        await client.result("g")
    async with connect(server, Encoding.JSON) as client:
        await client.generate("g", messages=say(tokens=1))
        await client.result("g")
    # The codec refuses a frame of the wrong kind, so reaching here means
    # every frame came as the encoding's kind (decode_server checks it).


async def test_no_subprotocol_means_json(server):
    import websockets

    async with websockets.connect(server.url, open_timeout=TIMEOUT) as ws:
        assert ws.subprotocol is None
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"


async def test_reasoning_then_text(server, connect):
    async with connect(server) as client:
        await client.generate("r", messages=say(reasoning=3, tokens=2))
        result = await client.result("r")
        kinds = [type(f) for f in client.frames_of("r")]
        assert kinds == [Reasoning] * 3 + [Token] * 2 + [Finish]
        assert result.reasoning == "think0 think1 think2 "
        assert result.content == "tok0 tok1 "


async def test_parallel_tool_calls_assemble_by_index_and_complete_before_finish(server, connect):
    calls = [
        {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}', "fragment_chars": 5},
        {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}', "fragment_chars": 4},
    ]
    tools = [
        {"type": "function", "function": {"name": c["name"], "parameters": {"type": "object"}}}
        for c in calls
    ]
    async with connect(server) as client:
        await client.generate("t", messages=say(tokens=0, tool_calls=calls), tools=tools)
        result = await client.result("t")
        frames = client.frames_of("t")
        chunks = [f for f in frames if isinstance(f, ToolCallChunk)]
        completes = [f for f in frames if isinstance(f, ToolCallComplete)]
        assert {c.index for c in chunks} == {0, 1}
        assert [(c.index, c.name, c.arguments) for c in completes] == [
            (0, "get_weather", calls[0]["arguments"]),
            (1, "get_time", calls[1]["arguments"]),
        ]
        assert frames.index(completes[-1]) == len(frames) - 2  # right before finish
        assert result.reason == "tool_calls"
        assert [c.call_id for c in result.tool_calls] == ["call_fake_0", "call_fake_1"]


async def test_usage_is_estimated_when_the_provider_sends_none(server, connect):
    async with connect(server) as client:
        await client.generate("u", messages=say(tokens=4, usage=False))
        result = await client.result("u")
        assert result.usage is not None and result.usage.estimated
        assert result.usage.completion_tokens > 0 and result.usage.prompt_tokens > 0
        assert result.usage.total_tokens == (
            result.usage.prompt_tokens + result.usage.completion_tokens
        )


async def test_usage_is_requested_from_the_provider(server, connect, fake):
    async with connect(server) as client:
        await client.generate("s", messages=say(tokens=1))
        await client.result("s")
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    assert fake.requests[-1].body["stream"] is True


async def test_params_reach_the_provider(server, connect, fake):
    params = {"temperature": 0.5, "max_tokens": 7, "stop": ["x"], "seed": 3, "n": 1}
    async with connect(server) as client:
        await client.generate("p", messages=say(tokens=1), params=params)
        await client.result("p")
    body = fake.requests[-1].body
    assert {k: body.get(k) for k in ("temperature", "max_tokens", "stop", "seed")} == {
        "temperature": 0.5,
        "max_tokens": 7,
        "stop": ["x"],
        "seed": 3,
    }


async def test_length_finish_reason_is_relayed(server, connect):
    async with connect(server) as client:
        await client.generate("l", messages=say(tokens=2, finish_reason="length"))
        assert (await client.result("l")).reason == "length"


async def test_generations_run_concurrently_on_one_session(server, connect):
    async with connect(server) as client:
        for i in range(5):
            await client.generate(f"c{i}", messages=say(tokens=6, interval=0.02))
        results = [await client.result(f"c{i}") for i in range(5)]
        assert all(r.content == "".join(f"tok{j} " for j in range(6)) for r in results)
        # Interleaved, not one after the other: the first generation had not
        # finished when the last one's first token arrived.
        first_finish = next(i for i, f in enumerate(client.frames) if isinstance(f, Finish))
        first_token_of_last = next(
            i for i, f in enumerate(client.frames) if isinstance(f, Token) and f.id == "c4"
        )
        assert first_token_of_last < first_finish


async def test_an_id_can_be_reused_once_its_generation_ended(server, connect):
    async with connect(server) as client:
        await client.generate("same", messages=say(tokens=1))
        await client.result("same")
        await client.generate("same", messages=say(tokens=2))
        assert (await client.result("same")).content == "tok0 tok1 "


async def test_demo_model_answers_the_last_message(server, connect):
    async with connect(server) as client:
        await client.generate(
            "d", model="demo", messages=[{"role": "user", "content": "What is tokenwire?"}]
        )
        result = await client.result("d")
        assert result.content.startswith('You said: "What is tokenwire?"')
        assert result.reason == "stop"


async def test_demo_model_calls_the_first_tool_with_arguments_fitting_its_schema(server, connect):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "hourly": {"type": "boolean"},
        },
        "required": ["city", "days"],
    }
    tools = [
        {"type": "function", "function": {"name": "forecast", "parameters": schema}},
        {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
    ]
    async with connect(server) as client:
        await client.generate(
            "dt", model="demo", messages=[{"role": "user", "content": "weather?"}], tools=tools
        )
        result = await client.result("dt")
    assert result.reason == "tool_calls"
    (call,) = result.tool_calls
    assert call.name == "forecast"
    args = json.loads(call.arguments)
    assert isinstance(args["city"], str) and isinstance(args["days"], int) and args["days"] >= 1
    assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["hourly"], bool)


async def test_demos_showcase_prompts_stream_markdown_a_tool_call_and_reasoning(server, connect):
    """The demo shows what tokenwire streams without a key or a config."""

    def user(text: str) -> list[dict[str, object]]:
        return [{"role": "user", "content": text}]

    async with connect(server) as client:
        await client.generate("md", model="demo", messages=user("show markdown"))
        await client.generate("tool", model="demo", messages=user("use a tool"))
        await client.generate("think", model="demo", messages=user("think first"))
        await client.generate("hi", model="demo", messages=user("hello"))
        markdown, tool, think, hello = [
            await client.result(g) for g in ("md", "tool", "think", "hi")
        ]
        assert markdown.reason == "stop"
        assert markdown.content.startswith("## What tokenwire streams")
        assert "| surface | path |" in markdown.content and "```python" in markdown.content
        assert tool.reason == "tool_calls"
        (call,) = tool.tool_calls
        assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
        assert think.reasoning.startswith("The user asked me to think first.")
        assert think.content and not think.content.startswith("The user asked")
        assert "show markdown" in hello.content and "think first" in hello.content
        # The tool's answer closes the loop: a reply, not another call.
        answered = [
            *user("use a tool"),
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.call_id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 °C"},
        ]  # fmt: skip
        await client.generate("reply", model="demo", messages=answered)
        reply = await client.result("reply")
    assert reply.reason == "stop" and "sunny, 21 °C" in reply.content


async def test_a_compressed_session_streams_every_frame(start_server, connect):
    # permessage-deflate negotiated: the write path makes its frames through
    # websockets' protocol, which compresses them.
    async with (
        start_server(compression=True) as handle,
        connect(handle, compression="deflate") as client,
    ):
        assert client.ws.protocol.extensions  # negotiated
        await client.generate("z", messages=say(tokens=200))
        result = await client.result("z")
    assert result.reason == "stop"
    assert result.content == "".join(f"tok{i} " for i in range(200))
