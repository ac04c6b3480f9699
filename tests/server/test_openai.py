"""OpenAI's wire formats, spoken to the official ``openai`` Python SDK as it is.

Chat Completions (``POST /v1/chat/completions``, SSE and JSON), ``GET
/v1/models`` and the Responses API's WebSocket mode (``/v1/responses``,
``client.responses.connect()``), on the same port as ``/v1/ws``, through the
real server, LiteLLM or the native path, to the fake upstream. Every
Responses event is parsed by the SDK's own pydantic models, strictly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import openai
import pydantic
import pytest
from conftest import PROMPT_CLOSE_S, TIMEOUT, ServerHandle, model_list, say
from openai.types.responses import ResponsesServerEvent

from tokenwire.server.config import ServerSettings, parse
from tokenwire.server.engines.upstream import Upstream

EVENT = pydantic.TypeAdapter(ResponsesServerEvent)
TERMINAL = ("response.completed", "response.incomplete", "response.failed", "error")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look something up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]
RESPONSE_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]


_clients: list[openai.AsyncOpenAI] = []


def sdk(handle: ServerHandle, key: str = "sk-none") -> openai.AsyncOpenAI:
    """The official SDK pointed at ``handle`` (no retries: a test sees every error)."""
    client = openai.AsyncOpenAI(
        base_url=f"{handle.http}/v1", api_key=key, max_retries=0, timeout=TIMEOUT
    )
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().close()


async def turn(connection: Any, **create: Any) -> list[dict[str, Any]]:
    """Send one ``response.create``; its events (as sent) up to the terminal one,
    each validated by the SDK's models."""
    await connection.response.create(**create)
    events = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            raw = json.loads(await connection.recv_bytes())
            EVENT.validate_python(raw)  # strict: the SDK's own event models
            events.append(raw)
            if raw["type"] in TERMINAL:
                return events


async def until(condition: Callable[[], Any]) -> None:
    """Poll (within TIMEOUT) until ``condition()`` (awaited if a coroutine) is true."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.01)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# -- Chat Completions ---------------------------------------------------------------


async def test_models_lists_the_configured_models(server):
    models = await sdk(server).models.list()
    assert [m.id for m in models.data] == ["fake", "demo"]
    assert all(m.object == "model" for m in models.data)


async def test_chat_completions_stream_text_reasoning_and_usage(server, fake):
    client = sdk(server)
    stream = await client.chat.completions.create(
        model="fake",
        messages=say(tokens=4, reasoning=2),
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.3,
        max_completion_tokens=50,
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
        for c in chunks
        if c.choices
    )
    assert text == "tok0 tok1 tok2 tok3 "
    assert reasoning == "think0 think1 "
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    body = fake.requests[-1].body
    assert body["temperature"] == 0.3 and body["max_tokens"] == 50


async def test_chat_completions_stream_without_include_usage_sends_no_usage_chunk(server):
    stream = await sdk(server).chat.completions.create(
        model="fake", messages=say(tokens=2), stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None and c.choices for c in chunks)


async def test_chat_completions_json_with_tool_calls(server):
    completion = await sdk(server).chat.completions.create(
        model="fake",
        messages=say(tokens=0, tool_calls=[{"name": "lookup", "arguments": '{"q": "x"}'}]),
        tools=TOOLS,
        tool_choice="auto",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "x"}
    assert completion.usage is not None and completion.usage.total_tokens > 0


async def test_chat_completions_streams_tool_call_fragments(server):
    stream = await sdk(server).chat.completions.create(
        model="fake",
        messages=say(
            tokens=0,
            tool_calls=[{"name": "lookup", "arguments": '{"q": "a b c"}', "fragment_chars": 3}],
        ),
        tools=TOOLS,
        stream=True,
    )
    calls = [c.choices[0].delta.tool_calls for c in [x async for x in stream] if c.choices]
    fragments = [call for group in calls if group for call in group]
    assert fragments[0].id and fragments[0].function.name == "lookup"
    assert "".join(f.function.arguments or "" for f in fragments) == '{"q": "a b c"}'
    assert len(fragments) > 2


async def test_a_429_is_the_sdks_rate_limit_error_with_retry_after(server):
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk(server).chat.completions.create(
            model="fake", messages=say(status=429, retry_after="3"), stream=True
        )
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.code == "upstream_rate_limited"


async def test_the_readmes_openai_example_runs_as_pasted(start_server, tmp_path):
    import sys
    from pathlib import Path

    text = (Path(__file__).parent.parent.parent / "README.md").read_text()
    start = text.index("```python\nimport asyncio\nfrom openai import AsyncOpenAI")
    code = text[start + len("```python\n") : text.index("```", start + 10)]
    async with start_server() as handle:
        script = tmp_path / "openai_example.py"
        script.write_text(
            code.replace("http://127.0.0.1:8765", handle.http).replace('"demo"', '"fake"')
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(script), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 3 * TIMEOUT)
    assert process.returncode == 0
    assert out.decode().count("tok0") == 2  # both halves answered (the fake's default answer)


async def test_refusals_and_bad_requests_are_openai_errors(server):
    client = sdk(server)
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="gpt-4o", messages=say())
    assert unknown.value.code == "unknown_model"
    with pytest.raises(openai.BadRequestError) as unsupported:
        await client.chat.completions.create(
            model="fake", messages=say(), logprobs=True, parallel_tool_calls=False
        )
    assert "`logprobs`" in unsupported.value.message
    assert "`parallel_tool_calls`" in unsupported.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="fake", messages=[{"role": "user"}])
    assert bad.value.body["param"] == "$.messages[0]"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as n:
        await client.chat.completions.create(model="fake", messages=say(), n=2)
    assert n.value.code == "bad_message"


async def test_a_providers_refusal_carries_the_providers_message_on_every_surface(server):
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as chat:
        await client.chat.completions.create(model="fake", messages=say(status=400))
    assert chat.value.code == "upstream_rejected"
    assert chat.value.message.endswith("(HTTP 400): fake error 400")
    async with client.responses.connect() as connection:
        events = await turn(connection, model="fake", input="fake:" + json.dumps({"status": 404}))
    assert events[-1]["type"] == "response.failed", events[-1]
    error = events[-1]["response"]["error"]
    assert error["message"].endswith("(HTTP 404): fake error 404"), error


async def test_a_failure_after_output_is_an_sse_error_the_sdk_raises(server):
    stream = await sdk(server).chat.completions.create(
        model="fake", messages=say(tokens=10, error_after=2), stream=True
    )
    seen = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            seen.append(chunk)
    assert seen and "upstream_error" in str(caught.value.body)


async def test_http_errors_of_the_surface_itself(server):
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        wrong_method = await http.get("/v1/chat/completions")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["type"] == "invalid_request_error"
        not_json = await http.post("/v1/chat/completions", content=b"{nope")
        assert not_json.status_code == 400 and "invalid JSON" in not_json.json()["error"]["message"]
        nowhere = await http.post("/v1/embeddings", json={})
        assert nowhere.status_code == 404 and "/v1/chat/completions" in nowhere.text
        # The same keep-alive connection serves the plain routes too.
        assert (await http.get("/healthz")).text == "ok\n"
        assert (await http.get("/v1/models")).json()["object"] == "list"


async def test_a_body_over_max_message_bytes_is_413(start_server):
    big = {"model": "fake", "messages": [{"role": "user", "content": "x" * 2000}]}
    async with (
        start_server(max_message_bytes=1000) as handle,
        httpx.AsyncClient(base_url=handle.http, timeout=TIMEOUT) as http,
    ):
        response = await http.post("/v1/chat/completions", json=big)
    assert response.status_code == 413


async def test_api_keys_apply_to_every_surface(start_server):
    async with start_server(api_keys=["sk-right"]) as handle:
        with pytest.raises(openai.AuthenticationError):
            await sdk(handle, "sk-wrong").chat.completions.create(model="fake", messages=say())
        with pytest.raises(openai.AuthenticationError):
            await sdk(handle, "sk-wrong").models.list()
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as refused:
            async with sdk(handle, "sk-wrong").responses.connect():
                pass
        assert refused.value.response.status_code == 401
        completion = await sdk(handle, "sk-right").chat.completions.create(
            model="fake", messages=say(tokens=1)
        )
        assert completion.choices[0].message.content == "tok0 "
        async with sdk(handle, "sk-right").responses.connect() as connection:
            events = await turn(connection, model="fake", input=say(tokens=1)[0]["content"])
        assert events[-1]["type"] == "response.completed"
        # /metrics names the models and counts the traffic: a key too.
        async with httpx.AsyncClient(base_url=handle.http, timeout=TIMEOUT) as http:
            for method in ("GET", "HEAD"):
                anonymous = await http.request(method, "/metrics")
                assert anonymous.status_code == 401, method
                assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
                wrong = await http.request(
                    method, "/metrics", headers={"Authorization": "Bearer x"}
                )
                assert wrong.status_code == 401, method
            scraped = await http.get("/metrics", headers={"Authorization": "Bearer sk-right"})
            assert scraped.status_code == 200 and "tokenwire_" in scraped.text
            assert (await http.get("/healthz")).status_code == 200  # probes need no key


async def test_a_client_leaving_mid_stream_closes_the_upstream_request(server, fake):
    mark = fake.mark()
    stream = await sdk(server).chat.completions.create(
        model="fake", messages=say(tokens=200, interval=0.02), stream=True
    )
    async for _ in stream:
        break
    record = await fake.request_after(mark, TIMEOUT)
    await stream.close()
    await record.wait_ended(PROMPT_CLOSE_S)
    assert record.disconnected
    await until(lambda: server.server.active_generations == 0)


async def test_metrics_count_requests_by_surface(server):
    await sdk(server).chat.completions.create(model="fake", messages=say(tokens=1))
    with contextlib.suppress(openai.NotFoundError):
        await sdk(server).chat.completions.create(model="nope", messages=say())
    async with sdk(server).responses.connect() as connection:
        await turn(connection, model="fake", input="fake:" + json.dumps({"tokens": 1}))
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        text = (await http.get(f"{server.http}/metrics")).text
    assert 'tokenwire_requests_total{outcome="stop",surface="chat_completions"} 1.0' in text
    assert (
        'tokenwire_requests_total{outcome="unknown_model",surface="chat_completions"} 1.0' in text
    )
    assert 'tokenwire_requests_total{outcome="stop",surface="responses"} 1.0' in text


async def test_a_drain_ends_a_streaming_completion_with_an_error_event(start_server):
    async with start_server(drain_timeout=0.2) as handle:
        stream = await sdk(handle).chat.completions.create(
            model="fake", messages=say(tokens=500, interval=0.02), stream=True
        )
        async for _ in stream:
            break
        drain = asyncio.create_task(handle.server.drain())
        with pytest.raises(openai.APIError) as caught:
            async for _ in stream:
                pass
        await drain
    assert "shutting_down" in str(caught.value.body)


# -- Responses, WebSocket mode ---------------------------------------------------------


async def test_responses_stream_text_reasoning_and_function_calls(server, fake):
    scenario = {
        "tokens": 3,
        "reasoning": 2,
        "tool_calls": [{"name": "lookup", "arguments": '{"q": "x"}', "fragment_chars": 4}],
    }
    async with sdk(server).responses.connect() as connection:
        first = await turn(
            connection,
            model="fake",
            input=[
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": "fake:" + json.dumps(scenario)}],
                }
            ],
            instructions="Be brief.",
            tools=RESPONSE_TOOLS,
            metadata={"run": "1"},
        )
        assert [e["sequence_number"] for e in first] == list(range(len(first)))
        assert types(first)[:2] == ["response.created", "response.in_progress"]
        assert types(first)[2:] == [
            "response.output_item.added",  # reasoning
            "response.content_part.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",  # message
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",  # function call
            *["response.function_call_arguments.delta"] * 3,
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
        response = first[-1]["response"]
        assert response["status"] == "completed" and response["metadata"] == {"run": "1"}
        reasoning, message, call = response["output"]
        assert reasoning["content"][0]["text"] == "think0 think1 "
        assert message["content"][0]["text"] == "tok0 tok1 tok2 "
        assert call["name"] == "lookup" and json.loads(call["arguments"]) == {"q": "x"}
        assert response["usage"]["total_tokens"] > 0
        sent = fake.requests[-1].body
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert sent["tools"][0]["function"]["name"] == "lookup"

        # The function's output, on the next turn: only the new item, by previous_response_id.
        second = await turn(
            connection,
            model="fake",
            previous_response_id=response["id"],
            input=[{"type": "function_call_output", "call_id": call["call_id"], "output": "42"}],
            tools=RESPONSE_TOOLS,
        )
        assert second[-1]["type"] == "response.completed"
        assert second[-1]["response"]["previous_response_id"] == response["id"]
        history = fake.requests[-1].body["messages"]
        assert [m["role"] for m in history] == ["user", "assistant", "tool"]
        assert history[1]["tool_calls"][0]["id"] == call["call_id"]
        assert history[1]["content"] == "tok0 tok1 tok2 "
        assert history[2] == {"role": "tool", "tool_call_id": call["call_id"], "content": "42"}


async def test_responses_the_sdk_iterates_its_own_event_objects(server):
    async with sdk(server).responses.connect() as connection:
        await connection.response.create(model="fake", input="fake:" + json.dumps({"tokens": 2}))
        seen = []
        async with asyncio.timeout(TIMEOUT):
            async for event in connection:
                seen.append(event)
                if event.type == "response.completed":
                    break
    deltas = [e.delta for e in seen if e.type == "response.output_text.delta"]
    assert deltas == ["tok0 ", "tok1 "]
    assert seen[-1].response.output_text == "tok0 tok1 "


async def test_responses_unsupported_fields_get_an_error_event_and_the_socket_lives_on(server):
    async with sdk(server).responses.connect() as connection:
        (error,) = await turn(connection, model="fake", input="hi", background=True, top_logprobs=2)
        assert error["type"] == "error" and error["code"] == "bad_message"
        assert error["status"] == 400 and error["error"]["type"] == "invalid_request_error"
        assert "`background`" in error["message"] and "`top_logprobs`" in error["message"]
        custom = [{"type": "custom", "name": "x"}]  # a hosted tool (web_search) is dropped
        (tool,) = await turn(connection, model="fake", input="hi", tools=custom)
        assert "custom" in tool["message"] and tool["param"] == "$.tools[0].type"
        (model,) = await turn(connection, model="gpt-4o", input="hi")
        assert model["code"] == "unknown_model"
        events = await turn(connection, model="fake", input="fake:" + json.dumps({"tokens": 1}))
        assert events[-1]["type"] == "response.completed"


async def test_responses_incomplete_and_failed(server):
    async with sdk(server).responses.connect() as connection:
        length = await turn(
            connection,
            model="fake",
            input="fake:" + json.dumps({"tokens": 2, "finish_reason": "length"}),
        )
        assert length[-1]["type"] == "response.incomplete"
        assert length[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
        failed = await turn(
            connection, model="fake", input="fake:" + json.dumps({"tokens": 5, "error_after": 2})
        )
        assert failed[-1]["type"] == "response.failed"
        assert failed[-1]["response"]["error"]["message"].startswith("upstream_error")
        limited = await turn(connection, model="fake", input="fake:" + json.dumps({"status": 429}))
        # Refused upstream after the response was created: failed, as OpenAI reports it.
        assert limited[-1]["type"] == "response.failed"
        error = limited[-1]["response"]["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert error["message"].startswith("upstream_rate_limited")


async def test_responses_one_at_a_time_per_connection(server):
    async with sdk(server).responses.connect() as connection:
        slow = "fake:" + json.dumps({"tokens": 30, "interval": 0.02})
        await connection.response.create(model="fake", input=slow)
        await connection.response.create(model="fake", input="hi")
        events = []
        async with asyncio.timeout(TIMEOUT):
            while not events or events[-1]["type"] != "response.completed":
                events.append(json.loads(await connection.recv_bytes()))
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "response_in_flight"
    assert events[-1]["response"]["output"][0]["content"][0]["text"].count("tok") == 30


async def test_responses_previous_response_id_across_connections_and_store_false(server, fake):
    client = sdk(server)
    async with client.responses.connect() as connection:
        kept = await turn(connection, model="fake", input="fake:" + json.dumps({"tokens": 1}))
        private = await turn(
            connection, model="fake", input="fake:" + json.dumps({"tokens": 1}), store=False
        )
        # store: false responses continue on their own connection.
        own = await turn(
            connection,
            model="fake",
            input="again",
            previous_response_id=private[-1]["response"]["id"],
        )
        assert own[-1]["type"] == "response.completed"
    async with client.responses.connect() as other:
        continued = await turn(
            other, model="fake", input="next", previous_response_id=kept[-1]["response"]["id"]
        )
        assert continued[-1]["type"] == "response.completed"
        assert [m["role"] for m in fake.requests[-1].body["messages"]] == [
            "user",
            "assistant",
            "user",
        ]
        (lost,) = await turn(
            other, model="fake", input="x", previous_response_id=private[-1]["response"]["id"]
        )
        assert lost["code"] == "previous_response_not_found"
        assert lost["param"] == "previous_response_id"


async def test_responses_only_the_key_that_made_a_response_continues_it(start_server):
    async with start_server(api_keys=["sk-one", "sk-two"]) as handle:
        async with sdk(handle, "sk-one").responses.connect() as connection:
            kept = await turn(connection, model="fake", input="fake:" + json.dumps({"tokens": 1}))
        rid = kept[-1]["response"]["id"]
        async with sdk(handle, "sk-two").responses.connect() as stranger:
            (refused,) = await turn(stranger, model="fake", input="x", previous_response_id=rid)
        async with sdk(handle, "sk-one").responses.connect() as owner:
            continued = await turn(owner, model="fake", input="x", previous_response_id=rid)
    assert refused["code"] == "previous_response_not_found"
    assert continued[-1]["type"] == "response.completed"


async def test_responses_closing_the_socket_closes_the_upstream_request(server, fake):
    mark = fake.mark()
    async with sdk(server).responses.connect() as connection:
        slow = "fake:" + json.dumps({"tokens": 500, "interval": 0.02})
        await connection.response.create(model="fake", input=slow)
        async with asyncio.timeout(TIMEOUT):
            while json.loads(await connection.recv_bytes())["type"] != "response.output_text.delta":
                pass
        record = await fake.request_after(mark, TIMEOUT)
    await record.wait_ended(PROMPT_CLOSE_S)
    assert record.disconnected


async def test_responses_previous_response_id_across_nodes_on_redis(upstream, redis, fake):
    from tokenwire.server.app import TokenwireServer

    settings = msgspec.convert({"resume": "redis", "redis_url": redis.url}, ServerSettings)
    nodes = [TokenwireServer(settings, upstream) for _ in range(2)]
    async with (
        nodes[0].listen("127.0.0.1", 0) as (host_a, port_a),
        nodes[1].listen("127.0.0.1", 0) as (host_b, port_b),
    ):
        a = ServerHandle(nodes[0], host_a, port_a)
        b = ServerHandle(nodes[1], host_b, port_b)
        async with sdk(a).responses.connect() as connection:
            first = await turn(connection, model="fake", input="fake:" + json.dumps({"tokens": 1}))
            second = await turn(
                connection,
                model="fake",
                input="more",
                previous_response_id=first[-1]["response"]["id"],
            )
        # The store's write is in the background.
        await until(lambda: nodes[0].responses.chain(second[-1]["response"]["id"]))
        async with sdk(b).responses.connect() as elsewhere:
            third = await turn(
                elsewhere,
                model="fake",
                input="last",
                previous_response_id=second[-1]["response"]["id"],
            )
    assert third[-1]["type"] == "response.completed"
    contents = [m["content"] for m in fake.requests[-1].body["messages"]]
    assert contents[1:] == ["tok0 ", "more", contents[3], "last"]


# -- both engines ---------------------------------------------------------------------

ENGINE_SCENARIOS = {
    "text": {"tokens": 5},
    "reasoning": {"reasoning": 2, "tokens": 2},
    "tool calls": {
        "tokens": 0,
        "tool_calls": [
            {"name": "lookup", "arguments": '{"q": "one two"}', "fragment_chars": 4},
            {"name": "lookup", "arguments": '{"q": "x"}', "fragment_chars": 3},
        ],
    },
    "no usage": {"tokens": 2, "usage": False},
    "429": {"status": 429, "retry_after": "2"},
    "in-stream error": {"tokens": 6, "error_after": 2},
}


@pytest.fixture(scope="module")
def serve_engine(fake: Any, upstream: Upstream) -> Callable[..., Any]:
    from tokenwire.server.app import TokenwireServer

    litellm_path = Upstream(
        parse({"model_list": model_list(fake.base_url), "server": {"fast_path": "off"}}),
        repeated_chunk_limit=100,
    )
    engines = {"native": upstream, "litellm": litellm_path}

    @contextlib.asynccontextmanager
    async def start(engine: str) -> AsyncIterator[ServerHandle]:
        server = TokenwireServer(ServerSettings(), engines[engine])
        async with server.listen("127.0.0.1", 0) as (host, port):
            yield ServerHandle(server, host, port)

    return start


def _normalized(value: Any) -> Any:
    """Events without what differs by run: ids and times."""
    if isinstance(value, dict):
        return {
            k: _normalized(v)
            for k, v in value.items()
            if k not in ("id", "item_id", "created_at", "created", "call_id")
        }
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


@pytest.mark.parametrize("name", list(ENGINE_SCENARIOS))
async def test_both_engines_give_the_same_events(name, serve_engine):
    scenario = ENGINE_SCENARIOS[name]
    events = {}
    chunks = {}
    for engine in ("native", "litellm"):
        async with serve_engine(engine) as handle:
            async with sdk(handle).responses.connect() as connection:
                events[engine] = await turn(
                    connection,
                    model="fake",
                    input="fake:" + json.dumps(scenario),
                    tools=RESPONSE_TOOLS,
                )
            async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                body = {
                    "model": "fake",
                    "messages": say(**scenario),
                    "tools": TOOLS,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                response = await http.post(f"{handle.http}/v1/chat/completions", json=body)
                chunks[engine] = (response.status_code, response.text)
    assert _normalized(events["native"]) == _normalized(events["litellm"])
    status, text = chunks["native"]
    assert status == chunks["litellm"][0]
    lines = [
        _normalized(json.loads(line[6:]))
        for line in text.splitlines()
        if line.startswith("data: {")
    ]
    other = (
        [
            _normalized(json.loads(line[6:]))
            for line in chunks["litellm"][1].splitlines()
            if line.startswith("data: {")
        ]
        if status == 200
        else lines
    )
    assert lines == other
