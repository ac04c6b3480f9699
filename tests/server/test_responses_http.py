"""OpenAI's Responses API over HTTP (``POST /v1/responses``), spoken to the
official ``openai`` Python SDK as it is: ``client.responses.create``,
streamed and not, through the real server to the fake upstream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from conftest import PROMPT_CLOSE_S, TIMEOUT, ServerHandle


def scripted(**scenario: Any) -> str:
    return "fake:" + json.dumps(scenario)


@pytest.fixture
async def client(server: ServerHandle) -> Any:
    sdk = openai.AsyncOpenAI(
        base_url=f"{server.http}/v1", api_key="sk-none", max_retries=0, timeout=TIMEOUT
    )
    yield sdk
    await sdk.close()


async def test_a_response_as_one_object_and_as_sse_events(client, server):
    response = await client.responses.create(model="fake", input=scripted(tokens=2, reasoning=1))
    assert response.status == "completed" and response.output_text == "tok0 tok1 "
    assert response.id.startswith("resp_") and response.usage.output_tokens > 0
    assert [item.type for item in response.output] == ["reasoning", "message"]
    stream = await client.responses.create(model="fake", input=scripted(tokens=3), stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["tok0 ", "tok1 ", "tok2 "]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "tok0 tok1 tok2 "
    # On the wire: every event has its `event:` line, naming its type. (The
    # SDK's first parse of its models held this loop, which the server
    # shares: the loop-lag window is let pass, or it sheds the request.)
    await asyncio.sleep(0.5)
    body = {"model": "fake", "input": scripted(tokens=2), "stream": True}
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        raw = (await http.post("/v1/responses", json=body)).text
    blocks = [b.split("\n") for b in raw.strip().split("\n\n")]
    assert all(len(b) == 2 for b in blocks), raw[:3000]
    for event_line, data_line in blocks:
        assert event_line == "event: " + json.loads(data_line[len("data: ") :])["type"]


async def test_previous_response_id_continues_and_store_false_keeps_nothing(client, fake):
    first = await client.responses.create(model="fake", input=fake_input(tokens=2))
    second = await client.responses.create(
        model="fake", input=fake_input(echo_roles=True), previous_response_id=first.id
    )
    assert second.output_text == "user assistant user "
    assert fake.requests[-1].body["messages"][1]["content"] == "tok0 tok1 "
    unkept = await client.responses.create(model="fake", input="hi", store=False)
    with pytest.raises(openai.NotFoundError) as refused:
        await client.responses.create(model="fake", input="hi", previous_response_id=unkept.id)
    assert refused.value.code == "previous_response_not_found"


def fake_input(**scenario: Any) -> str:
    return scripted(**scenario)


async def test_a_function_call_and_its_output_in_the_next_request(client, fake):
    call = {"name": "lookup", "arguments": '{"q": "x"}'}
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    response = await client.responses.create(
        model="fake", input=fake_input(tokens=0, tool_calls=[call]), tools=tools
    )
    (item,) = response.output
    assert item.type == "function_call" and item.name == "lookup" and item.arguments == '{"q": "x"}'
    answer = await client.responses.create(
        model="fake",
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": item.call_id, "output": "found"}],
        tools=tools,
    )
    assert answer.status == "completed"
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]


async def test_what_codex_and_the_agents_sdk_send_passes(server, fake):
    """The fields agents send by default: hints accepted and ignored, a
    namespace's tools flattened, a hosted tool dropped."""
    function = {"type": "function", "name": "shell", "parameters": {"type": "object"},
                "strict": True}  # fmt: skip
    body = {
        "model": "fake",
        "instructions": "be brief",
        "input": [
            {"type": "message", "role": "developer", "id": "msg_1",
             "content": [{"type": "input_text", "text": "rules"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text",
                                                              "text": scripted(tokens=1)}]},
            {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "c1",
             "name": "shell", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {"type": "message", "role": "user", "content": scripted(tokens=2)},
        ],
        "tools": [
            function,
            {"type": "namespace", "name": "ns", "tools": [{**function, "name": "read"}]},
            {"type": "web_search"},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "low", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "conversation-1",
        "client_metadata": {"originator": "codex_exec"},
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        response = await http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    assert "response.completed" in response.text
    sent = fake.requests[-1].body
    assert [t["function"]["name"] for t in sent["tools"]] == ["shell", "read"]
    assert [m["role"] for m in sent["messages"]] == [
        "system", "developer", "user", "assistant", "tool", "user",
    ]  # fmt: skip


async def test_what_cannot_be_delivered_is_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="fake", input="hi", top_logprobs=2)
    assert "`top_logprobs`" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as lane:  # the WebSocket mode's alone
        await client.responses.create(model="fake", input="hi", extra_body={"stream_id": "x"})
    assert "`stream_id`" in str(lane.value)
    with pytest.raises(openai.BadRequestError) as tool:
        custom = [{"type": "custom", "name": "x"}]
        await client.responses.create(model="fake", input="hi", tools=custom)
    assert "custom" in str(tool.value)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="gpt-9", input="hi")


async def test_a_client_leaving_its_stream_cancels_it(server, fake):
    body = {"model": "fake", "input": fake_input(tokens=500, interval=0.02), "stream": True}
    mark = fake.mark()
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
        http.stream("POST", "/v1/responses", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if "output_text.delta" in line:
                break
        record = await fake.request_after(mark, TIMEOUT)
    await record.wait_ended(PROMPT_CLOSE_S)
    assert record.disconnected


async def test_a_stored_response_is_retrieved_and_store_false_is_not(client):
    kept = await client.responses.create(model="fake", input=scripted(tokens=2, reasoning=1))
    again = await client.responses.retrieve(kept.id)
    assert again.id == kept.id and again.output_text == "tok0 tok1 " and again.status == "completed"
    unkept = await client.responses.create(model="fake", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unkept.id)


async def test_a_background_stream_cut_is_replayed_after_a_sequence_number(client, fake):
    stream = await client.responses.create(
        model="fake", input=scripted(tokens=40, interval=0.02), stream=True, background=True
    )
    seen = []
    async for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) > 8:
            break
    await stream.close()  # the client goes; a background response runs on
    response_id = seen[0].response.id
    cut = seen[-1].sequence_number
    replay = await client.responses.retrieve(
        response_id, stream=True, starting_after=cut
    )  # fmt: skip
    rest = [event async for event in replay]
    assert [e.sequence_number for e in rest] == list(range(cut + 1, cut + 1 + len(rest)))
    text = "".join(e.delta for e in [*seen, *rest] if e.type == "response.output_text.delta")
    assert text == "".join(f"tok{i} " for i in range(40))
    assert rest[-1].type == "response.completed"
    done = await client.responses.retrieve(response_id)
    assert done.status == "completed" and done.output_text == text and done.background


async def test_a_background_response_runs_without_its_client_and_is_cancelled(client, fake):
    mark = fake.mark()
    started = await client.responses.create(
        model="fake", input=scripted(tokens=2000, interval=0.01), background=True
    )
    assert started.status == "in_progress" and started.background
    record = await fake.request_after(mark, TIMEOUT)
    await asyncio.sleep(0.3)
    assert not record.disconnected  # no client: it runs on
    cancelled = await client.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    await record.wait_ended(PROMPT_CLOSE_S)
    assert record.disconnected
    assert (await client.responses.retrieve(started.id)).status == "cancelled"
    plain = await client.responses.create(model="fake", input="hi")
    with pytest.raises(openai.BadRequestError):
        await client.responses.cancel(plain.id)  # only a background response
