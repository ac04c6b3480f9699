"""The two upstream engines give the same frames: LiteLLM's ``acompletion``
stream and the native path (``tokenwire.server.engines.native``).

Every scenario of the fake upstream — text, reasoning in both fields, parallel
tool calls, usage where it comes and where it does not, and every failure —
goes through a server on each engine; the frames must be identical, and so
must the requests the upstream received.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from conftest import ServerHandle, model_list, say

from tokenwire.server.config import Config, ServerSettings, parse
from tokenwire.server.engines.upstream import Upstream

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} something",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    for name in ("lookup", "search")
]

SCENARIOS: dict[str, dict[str, Any]] = {
    "text": {"tokens": 12},
    "explicit text": {"text": ["Hello", ", ", "wörld", " ✓", ""]},
    "reasoning_content": {"reasoning": 3, "tokens": 3},
    "delta.reasoning": {"reasoning": 3, "tokens": 2, "reasoning_field": "reasoning"},
    "parallel tool calls": {
        "tokens": 0,
        "tool_calls": [
            {"name": "lookup", "arguments": '{"q": "one two three"}', "fragment_chars": 5},
            {"name": "search", "arguments": '{"q": "x"}', "fragment_chars": 3},
        ],
    },
    "usage in the finish chunk": {"tokens": 4, "usage_in_finish": True},
    "no usage": {"tokens": 4, "usage": False},
    "length": {"tokens": 3, "finish_reason": "length"},
    "content_filter": {"tokens": 3, "finish_reason": "content_filter"},
    "429 with Retry-After": {"status": 429, "retry_after": "3"},
    "500": {"status": 500},
    "503": {"status": 503},
    "400": {"status": 400},
    "401": {"status": 401},
    "404": {"status": 404},
    "408": {"status": 408},
    "cut mid-stream": {"tokens": 10, "cut_after": 4},
    "malformed mid-stream": {"tokens": 10, "malformed_after": 3},
    "in-stream error": {"tokens": 10, "error_after": 2},
    "hang before the first token": {"tokens": 5, "hang_after": 0},
    "hang mid-stream": {"tokens": 5, "hang_after": 2},
    "repeated output": {"text": ["again"] * 8},
    "tool calls without usage": {
        "tokens": 0,
        "usage": False,
        "tool_calls": [{"name": "lookup", "arguments": '{"q": "one two three four"}'}],
    },
}

_CHUNK = (
    'data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"m",'
    '"choices":[{"index":0,"delta":%s,"finish_reason":%s}]%s}'
)


def _event(delta: str, finish: str | None = None, usage: str | None = None, end: str = "\n\n"):
    return _CHUNK % (delta, json.dumps(finish), "" if usage is None else ',"usage":' + usage) + end


_DONE = "data: [DONE]\n\n"
# A hostile (or merely unusual) upstream, byte for byte: both engines must
# agree, and neither may crash, hang or report a broken answer as complete.
SCENARIOS |= {
    "usage counted in the total only (xAI)": {
        "raw": [
            _event('{"content":"hi"}'),
            _event("{}", "stop"),
            'data: {"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,'
            '"total_tokens":354,"completion_tokens_details":{"reasoning_tokens":340},'
            '"prompt_tokens_details":{"cached_tokens":5}}}\n\n',
            _DONE,
        ]
    },
    "usage as floats, negative, past 64 bits": {
        "raw": [
            _event('{"content":"hi"}'),
            _event(
                "{}",
                "stop",
                '{"prompt_tokens":7.0,"completion_tokens":-3,"total_tokens":99999999999999999999999}',
            ),
            _DONE,
        ]
    },
    "a surrogate pair split across chunks": {
        "raw": [
            _event('{"content":"a\\ud83d"}'),
            _event('{"content":"\\ude00b"}'),
            _event(
                '{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"\\ud83d"}}]}'
            ),
            _event('{"tool_calls":[{"index":0,"function":{"arguments":"\\ude00"}}]}'),
            _event('{"content":"lone \\udc00 end"}'),
            _event("{}", "stop"),
            _DONE,
        ]
    },
    "a tool call index past 64 bits": {
        "raw": [
            _event(
                '{"tool_calls":[{"index":99999999999999999999,"id":"c",'
                '"function":{"name":"f","arguments":"{}"}}]}'
            ),
            _event("{}", "tool_calls"),
            _DONE,
        ]
    },
    "CRLF and CR line ends, comments, event fields, no final blank line": {
        "raw": [
            _event('{"content":"a"}', end="\r\n\r\n"),
            _event('{"content":"b"}', end="\r\r"),
            ": keep-alive\n\nevent: message\nid: 3\n" + _event("{}", "stop"),
            "data: [DONE]",
        ]
    },
    "one event in two data lines": {
        "raw": [
            'data: {"id":"x","choices":[{"index":0,\ndata: "delta":{"content":"a"},'
            '"finish_reason":null}]}\n\n',
            _event("{}", "stop"),
            _DONE,
        ]
    },
    "a stream that ends with neither [DONE] nor a finish reason": {
        "raw": [_event('{"content":"a"}'), _event('{"content":"b"}')]
    },
    "an HTML page instead of a stream": {
        "raw": ["<html><body>Bad gateway</body></html>"],
        "content_type": "text/html",
    },
    "a JSON body instead of a stream": {
        "raw": ['{"id":"x","choices":[{"message":{"content":"hi"}}]}'],
        "content_type": "application/json",
    },
    "a gzip-compressed stream": {
        "raw": [_event('{"content":"zip"}'), _event("{}", "stop"), _DONE],
        "gzip": True,
    },
    "a gzip bomb as the stream": {"bomb": 256 << 20},
    "a gzip bomb as a 400's body": {"bomb": 256 << 20, "status": 400},
    "a 4 MB error body": {"error_body": 4 << 20, "status": 400},
    "a 4 MB line": {"long_line": 4 << 20},
    "429 with Retry-After 1e30": {"status": 429, "retry_after": "1e30"},
    "429 with Retry-After inf": {"status": 429, "retry_after": "inf"},
    "429 with Retry-After nan": {"status": 429, "retry_after": "nan"},
}


def _engine_config(fake_url: str, fast_path: str) -> Config:
    return parse({"model_list": model_list(fake_url), "server": {"fast_path": fast_path}})


def _ends(code: str | None = None, **fields: Any) -> Callable[[list[Any]], bool]:
    """The last frame is an error with ``code`` (a finish, for None) and ``fields``."""

    def check(frames: list[Any]) -> bool:
        last = frames[-1]
        kind = "finish" if code is None else "error"
        if type(last).__name__.lower() != kind or (code and last.code != code):
            return False
        return all(_get(last, k) == v for k, v in fields.items())

    return check


def _get(frame: Any, path: str) -> Any:
    for name in path.split("."):
        frame = getattr(frame, name)
    return frame


# What each hostile scenario must end in (both engines, since their frames are equal).
EXPECTED: dict[str, Callable[[list[Any]], bool]] = {
    "usage counted in the total only (xAI)": _ends(
        None,
        **{"usage.total_tokens": 354, "usage.completion_tokens_details.reasoning_tokens": 340},
        **{"usage.prompt_tokens_details.cached_tokens": 5, "usage.estimated": False},
    ),
    "usage as floats, negative, past 64 bits": _ends(
        None, **{"usage.prompt_tokens": 7, "usage.completion_tokens": 0}
    ),
    "a surrogate pair split across chunks": _ends(None, content="a😀blone \ufffd end"),
    "a tool call index past 64 bits": _ends("upstream_error"),
    "CRLF and CR line ends, comments, event fields, no final blank line": _ends(None, content="ab"),
    "one event in two data lines": _ends(None, content="a"),
    "a stream that ends with neither [DONE] nor a finish reason": _ends("upstream_error"),
    "an HTML page instead of a stream": _ends("upstream_error"),
    "a JSON body instead of a stream": _ends("upstream_error"),
    "a gzip-compressed stream": _ends(None, content="zip"),
    "a gzip bomb as the stream": _ends("upstream_error"),
    "a gzip bomb as a 400's body": _ends("upstream_rejected"),
    "a 4 MB error body": _ends("upstream_rejected"),
    "a 4 MB line": _ends("upstream_error"),
    "429 with Retry-After 1e30": _ends("upstream_rate_limited", retry_after_ms=86_400_000),
    "429 with Retry-After inf": _ends("upstream_rate_limited", retry_after_ms=86_400_000),
    "429 with Retry-After nan": _ends("upstream_rate_limited", retry_after_ms=None),
    "tool calls without usage": _ends(None, **{"usage.estimated": True}),
}


@pytest.fixture(scope="module")
def engines(fake: Any, upstream: Upstream) -> dict[str, Upstream]:
    litellm_path = Upstream(
        _engine_config(fake.base_url, "off"),
        repeated_chunk_limit=ServerSettings().repeated_chunk_limit,
    )
    assert "fake" in upstream.native_models
    assert not litellm_path.native_models
    return {"native": upstream, "litellm": litellm_path}


@pytest.fixture
def serve_engine(
    engines: dict[str, Upstream],
) -> Callable[..., contextlib.AbstractAsyncContextManager[ServerHandle]]:
    from tokenwire.server.app import TokenwireServer

    @contextlib.asynccontextmanager
    async def start(engine: str, **settings: Any) -> AsyncIterator[ServerHandle]:
        server = TokenwireServer(msgspec.convert(settings, ServerSettings), engines[engine])
        async with server.listen("127.0.0.1", 0) as (host, port):
            yield ServerHandle(server, host, port)

    return start


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_both_engines_send_the_same_frames_and_requests(name, serve_engine, connect, fake):
    scenario = SCENARIOS[name]
    timeout = 0.5 if "hang_after" in scenario else 10
    settings = {"first_token_timeout": timeout, "idle_timeout": timeout, "repeated_chunk_limit": 5}
    fields: dict[str, Any] = {"messages": say(**scenario)}
    if "tool_calls" in scenario or "index" in json.dumps(scenario):
        fields |= {"tools": TOOLS, "tool_choice": "auto"}
    fields["params"] = {"temperature": 0.5, "max_tokens": 50, "seed": 7, "stop": ["\n\n"]}
    frames = {}
    bodies = {}
    for engine in ("litellm", "native"):
        async with serve_engine(engine, **settings) as handle, connect(handle) as client:
            mark = fake.mark()
            await client.generate("g", **fields)
            request = await fake.request_after(mark, 5)
            await client.result("g")
            frames[engine] = client.frames_of("g")
            bodies[engine] = request.body
    assert frames["native"] == frames["litellm"]
    assert bodies["native"] == bodies["litellm"]
    assert EXPECTED.get(name, lambda frames: True)(frames["native"]), frames["native"]


@pytest.mark.parametrize("fast_path", ["off", "auto"])
async def test_router_retries_and_fallbacks_apply_on_both_engines(fast_path, fake, connect):
    from tokenwire.server.app import TokenwireServer

    def deployment(name: str) -> dict[str, Any]:
        params = {"model": f"openai/{name}-model", "api_base": fake.base_url, "api_key": "sk-x"}
        return {"model_name": name, "litellm_params": params}

    config = parse(
        {
            "model_list": [deployment("primary"), deployment("backup")],
            "router_settings": {"num_retries": 1, "fallbacks": [{"primary": ["backup"]}]},
            "server": {"fast_path": fast_path},
        }
    )
    upstream = Upstream(config, repeated_chunk_limit=100)
    assert upstream.native_models == ({"primary", "backup"} if fast_path == "auto" else set())
    server = TokenwireServer(config.server, upstream)
    seen = len(fake.requests)
    async with server.listen("127.0.0.1", 0) as (host, port):
        handle = ServerHandle(server, host, port)
        async with connect(handle) as client:
            messages = say(tokens=3, status=503, status_model="primary-model")
            await client.generate("g", model="primary", messages=messages)
            result = await client.result("g")
    assert result.reason == "stop" and result.content == "tok0 tok1 tok2 "
    models = [r.body["model"] for r in fake.requests[seen:]]
    # primary tried once and retried once, then the fallback answered.
    assert models == ["primary-model"] * 2 + ["backup-model"]


async def test_a_model_can_be_kept_on_litellm_by_its_model_info(fake):
    entries = model_list(fake.base_url)
    entries[0]["model_info"] = {"fast_path": "off"}
    upstream = Upstream(parse({"model_list": entries}), repeated_chunk_limit=100)
    assert upstream.native_models == frozenset()


def test_only_plain_openai_stream_providers_take_the_native_path():
    from tokenwire.server.engines.native import native_route

    for model in ("openai/gpt-4o-mini", "hosted_vllm/llama", "deepseek/deepseek-chat"):
        assert native_route({"model": model, "api_base": "http://127.0.0.1:1/v1"}) is not None
    for model in ("anthropic/claude-3-5-sonnet", "tokenwire/demo", "gemini/gemini-2.0-flash"):
        assert native_route({"model": model}) is None
    # A deployment option the native path does not know keeps LiteLLM's path.
    assert native_route({"model": "openai/x", "input_cost_per_token": 1e-6}) is None
    assert native_route({"model": "openai/x", "organization": "org-1"}) is None
    assert native_route({"model": "openai/x", "max_retries": 2}) is None
    assert native_route({"model": "openai/x", "max_retries": 0}) is not None
    # A route may end up in a log line or a traceback: never with its key.
    route = native_route({"model": "openai/x", "api_key": "sk-secret-1", "api_base": "http://h"})
    assert route is not None and "sk-secret-1" not in repr(route)


async def test_an_upstreams_split_surrogate_pair_logs_no_traceback(serve_engine, connect, caplog):
    """LiteLLM (1.109+) logged four lines, two of them tracebacks, for a tool
    call whose arguments split a surrogate pair between two chunks; the
    result was right. An upstream's bytes are not tokenwire's defect."""
    caplog.set_level(logging.WARNING)
    scenario = SCENARIOS["a surrogate pair split across chunks"]
    async with serve_engine("litellm") as handle, connect(handle) as client:
        await client.generate("g", messages=say(**scenario), tools=TOOLS)
        result = await client.result("g")
    assert result.tool_calls[0].arguments == "😀"
    noisy = [r for r in caplog.records if r.name.startswith("LiteLLM")]
    assert not noisy, [(r.levelname, r.getMessage()[:100]) for r in noisy]
