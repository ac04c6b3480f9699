"""Anthropic's Messages API (``POST /v1/messages``) spoken to the official
``anthropic`` Python SDK as it is, through the real server to the fake
(OpenAI-compatible) upstream: any provider, in Anthropic's format."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest
from conftest import PROMPT_CLOSE_S, TIMEOUT, ServerHandle


def scripted(**scenario: Any) -> str:
    return "fake:" + json.dumps(scenario)


def sdk(handle: ServerHandle, key: str = "none") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=handle.http, api_key=key, max_retries=0, timeout=TIMEOUT
    )


@pytest.fixture
async def client(server: ServerHandle) -> Any:
    async with sdk(server) as client:
        yield client


async def test_a_stream_of_thinking_and_text_with_usage(client):
    async with client.messages.stream(
        model="fake", max_tokens=100,
        messages=[{"role": "user", "content": scripted(tokens=3, reasoning=2)}],
    ) as stream:  # fmt: skip
        text = "".join([piece async for piece in stream.text_stream])
        message = await stream.get_final_message()
    assert text == "tok0 tok1 tok2 "
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].signature == ""
    assert message.stop_reason == "end_turn" and message.model == "fake"
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


async def test_a_tool_use_arrives_parsed_whole_and_its_result_goes_back(client, fake):
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}', "fragment_chars": 3}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"name": "get_weather", "description": "weather", "input_schema": schema}]
    asked = [{"role": "user", "content": scripted(tokens=0, tool_calls=[call])}]
    async with client.messages.stream(
        model="fake", max_tokens=100, messages=asked, tools=tools
    ) as stream:
        message = await stream.get_final_message()
    (use,) = message.content
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"city": "Paris"} and message.stop_reason == "tool_use"
    answer = await client.messages.create(
        model="fake", max_tokens=100, tools=tools,
        messages=[
            *asked,
            {"role": "assistant", "content": [b.model_dump() for b in message.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"},
                {"type": "text", "text": scripted(echo_roles=True)},
            ]},
        ],
    )  # fmt: skip
    assert answer.content[0].text == "user assistant tool user "
    sent = fake.requests[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == use.id and sent[2]["content"] == "sunny"


async def test_errors_are_the_sdks_own_exceptions(client):
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(
            model="fake", max_tokens=10,
            messages=[{"role": "user", "content": scripted(status=429, retry_after="1")}],
        )  # fmt: skip
    with pytest.raises(anthropic.NotFoundError) as unknown:
        await client.messages.create(model="gpt-9", max_tokens=10,
                                     messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert unknown.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(
            model="fake", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
            extra_body={"top_k": 3},
        )  # fmt: skip
    assert "`top_k`" in refused.value.body["error"]["message"]
    with pytest.raises(anthropic.APIStatusError):  # an error event after the stream began
        async with client.messages.stream(
            model="fake", max_tokens=10,
            messages=[{"role": "user", "content": scripted(tokens=5, error_after=2)}],
        ) as stream:  # fmt: skip
            async for _ in stream:
                pass


async def test_count_tokens_and_keys_in_x_api_key(start_server):
    async with start_server(api_keys=["sk-ant"]) as server:
        async with sdk(server, "sk-ant") as client:
            counted = await client.messages.count_tokens(
                model="fake", messages=[{"role": "user", "content": "hello there " * 20}]
            )
            assert counted.input_tokens > 20
        async with sdk(server, "wrong") as wrong:
            with pytest.raises(anthropic.AuthenticationError) as refused:
                hi = [{"role": "user", "content": "hi"}]
                await wrong.messages.create(model="fake", max_tokens=5, messages=hi)
        assert refused.value.body["error"]["type"] == "authentication_error"


async def test_what_claude_code_sends_passes(server, fake):
    body = {
        "model": "fake", "max_tokens": 32000, "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": scripted(tokens=2), "cache_control": {"type": "ephemeral"}}]}],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}, "defer_loading": True}],
        "thinking": {"type": "adaptive", "display": "omitted"},
        "output_config": {"effort": "medium"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})},
    }  # fmt: skip
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219",
               "x-api-key": "none"}  # fmt: skip
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        response = await http.post("/v1/messages?beta=true", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert "event: message_stop" in response.text
    sent = fake.requests[-1].body
    assert sent["reasoning_effort"] == "medium" and sent["max_tokens"] == 32000


async def test_a_client_leaving_its_stream_closes_the_upstream(server, fake):
    asked = [{"role": "user", "content": scripted(tokens=500, interval=0.02)}]
    body = {"model": "fake", "max_tokens": 10, "stream": True, "messages": asked}
    mark = fake.mark()
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
        http.stream("POST", "/v1/messages", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if "text_delta" in line:
                break
        record = await fake.request_after(mark, TIMEOUT)
    await record.wait_ended(PROMPT_CLOSE_S)
    assert record.disconnected


async def test_thinking_asked_of_a_model_without_reasoning_effort_is_dropped(client, fake):
    """Claude Code asks for thinking on every turn: a model that takes no
    reasoning effort (LiteLLM knows which) answers without it, where a
    reasoning model gets it."""
    thinking = {"type": "enabled", "budget_tokens": 2048}
    hi = [{"role": "user", "content": "Hello!"}]
    demo = await client.messages.create(model="demo", max_tokens=200, messages=hi,
                                        thinking=thinking)  # fmt: skip
    assert demo.stop_reason == "end_turn" and demo.content[-1].text
    asked = [{"role": "user", "content": scripted(tokens=1)}]
    await client.messages.create(model="fake", max_tokens=20, thinking=thinking, messages=asked)
    assert fake.requests[-1].body["reasoning_effort"] == "low"


async def test_the_node_sdk_streams_parses_tool_input_and_counts(server):
    """``@anthropic-ai/sdk`` (Node) as it is: its stream accumulator."""
    from node_parts import node

    result = await node("anthropic_check.mjs", server.http)
    text = result["text"]
    assert text["streamed"] == "tok0 tok1 tok2 " and text["blocks"] == ["thinking", "text"]
    assert text["stop"] == "end_turn" and text["usage"]["output_tokens"] > 0
    assert result["tool"] == {"name": "get_weather", "input": {"city": "Paris"}, "stop": "tool_use"}
    assert result["count"] > 20
    assert result["rateLimited"] == {"status": 429, "type": "rate_limit_error"}
