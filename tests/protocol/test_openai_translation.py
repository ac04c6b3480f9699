"""The OpenAI translations, without sockets: requests in, ``Generate`` out;
frames in, chunks and events out (``protocol/openai_chat.py``,
``protocol/openai_responses.py``)."""

from __future__ import annotations

import json

import pydantic
import pytest
from openai.types.chat import ChatCompletion as SdkCompletion
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponsesServerEvent

from tokenwire.protocol import (
    BadMessage,
    Error,
    Finish,
    Reasoning,
    Token,
    ToolCall,
    ToolCallChunk,
    ToolCallComplete,
    Usage,
)
from tokenwire.protocol.errors import ErrorCode
from tokenwire.protocol.openai_chat import ChatChunks, ChatCompletion, chat_request
from tokenwire.protocol.openai_common import ERROR_KINDS
from tokenwire.protocol.openai_responses import (
    ResponseEvents,
    input_messages,
    response_generate,
    response_request,
)

EVENT = pydantic.TypeAdapter(ResponsesServerEvent)
USER = [{"role": "user", "content": "hi"}]
USAGE = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)


def chat_frames(gid: str = "g") -> list:
    return [
        Reasoning(id=gid, seq=0, text="hm"),
        Token(id=gid, seq=1, text="Hel"),
        Token(id=gid, seq=2, text='lo "x"'),
        ToolCallChunk(id=gid, seq=3, index=0, call_id="c1", name="f", arguments='{"a"'),
        ToolCallChunk(id=gid, seq=4, index=0, call_id=None, name=None, arguments=":1}"),
        ToolCallComplete(id=gid, seq=5, index=0, call_id="c1", name="f", arguments='{"a":1}'),
        Finish(
            id=gid,
            seq=6,
            reason="tool_calls",
            content='Hello "x"',
            tool_calls=[ToolCall(index=0, call_id="c1", name="f", arguments='{"a":1}')],
            usage=USAGE,
        ),
    ]


# -- Chat Completions ------------------------------------------------------------------


def test_a_chat_request_becomes_a_generate():
    request = chat_request(
        {
            "model": "m",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 9,
            "temperature": 0.5,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "auto",
        },
        "chatcmpl-1",
    )
    generate = request.generate
    assert request.stream and request.include_usage
    assert generate.id == "chatcmpl-1" and generate.model == "m" and generate.messages == USER
    assert generate.params is not None and generate.params.max_tokens == 9
    assert generate.params.temperature == 0.5 and generate.tool_choice == "auto"


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        (
            {"model": "m", "messages": USER, "logprobs": True, "user": "u"},
            "$.logprobs",
            "`logprobs`, `user`",
        ),
        ({"model": "m", "messages": USER, "n": 2}, "$.n", "only `n: 1`"),
        ({"model": "m", "messages": []}, "$.messages", "length"),
        ({"model": "m", "messages": [{"role": "user"}]}, "$.messages[0]", "content"),
        ({"model": "m", "messages": USER, "stream": "yes"}, "$.stream", "boolean"),
        (
            {"model": "m", "messages": USER, "max_tokens": 1, "max_completion_tokens": 1},
            "$.max_completion_tokens",
            "not both",
        ),
        ({"model": "m", "messages": USER, "stream_options": {"x": 1}}, "$.stream_options.x", "`x`"),
        ([1, 2], "$", "JSON object"),
    ],
)
def test_a_bad_chat_request_names_its_field(body, path, words):
    with pytest.raises(BadMessage) as caught:
        chat_request(body, "c")
    assert caught.value.path == path
    assert words in caught.value.message


def test_chat_chunks_parse_as_the_sdks_chunks():
    chunks = ChatChunks("chatcmpl-1", "m", 7, include_usage=True)
    data = b"".join(chunks.feed(f) for f in chat_frames())
    events = data.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    parsed = [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events[:-2]]
    assert parsed[0].choices[0].delta.role == "assistant"
    assert parsed[0].choices[0].delta.model_extra == {"reasoning_content": "hm"}
    assert "".join(p.choices[0].delta.content or "" for p in parsed if p.choices) == 'Hello "x"'
    calls = [c for p in parsed if p.choices for c in p.choices[0].delta.tool_calls or []]
    assert calls[0].id == "c1" and calls[0].function.name == "f"
    assert "".join(c.function.arguments for c in calls) == '{"a":1}'
    assert parsed[-2].choices[0].finish_reason == "tool_calls"
    assert parsed[-1].choices == [] and parsed[-1].usage.total_tokens == 7


def test_chat_chunks_without_usage_and_an_error_mid_stream():
    chunks = ChatChunks("c", "m", 1)
    assert b"usage" not in chunks.feed(
        Finish(id="c", seq=0, reason="stop", content="", tool_calls=[], usage=USAGE)
    )
    error = ChatChunks("c", "m", 1).feed(
        Error(id="c", seq=3, code="upstream_error", message="cut", retryable=True)
    )
    body = json.loads(error.decode()[6:])
    assert body == {
        "error": {"message": "cut", "type": "server_error", "param": None, "code": "upstream_error"}
    }
    assert b"[DONE]" not in error


def test_a_chat_completion_body_parses_as_the_sdks():
    completion = ChatCompletion("chatcmpl-1", "m", 7)
    frames = chat_frames()
    for frame in frames[:-1]:
        completion.feed(frame)
    body = SdkCompletion.model_validate(completion.body(frames[-1]))
    message = body.choices[0].message
    assert message.content == 'Hello "x"' and message.tool_calls[0].function.arguments == '{"a":1}'
    assert message.model_extra == {"reasoning_content": "hm"}
    assert body.usage is not None and body.usage.total_tokens == 7


def test_every_error_code_has_an_openai_status():
    assert set(ERROR_KINDS) == set(ErrorCode)
    assert ERROR_KINDS[ErrorCode.UPSTREAM_RATE_LIMITED].status == 429
    assert ERROR_KINDS[ErrorCode.UNKNOWN_MODEL].status == 404


# -- Responses -----------------------------------------------------------------------


def test_input_items_become_chat_messages():
    messages = input_messages(
        [
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "2"}]},
        ]
    )  # fmt: skip
    assert messages == [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
        ]},
        {"role": "assistant", "content": "ok", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "content": "2"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "path", "words"),
    [
        ({"background": True, "top_logprobs": 1}, "$.background", "`background`, `top_logprobs`"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "$.tools[0].type", "mcp"),
        ({"tool_choice": {"type": "web_search"}}, "$.tool_choice", "tool_choice"),
        ({"parallel_tool_calls": "no"}, "$.parallel_tool_calls", "boolean"),
        ({"reasoning": {"effort": "low", "mode": "auto"}}, "$.reasoning.mode", "`mode`"),
        ({"text": {"format": {"type": "grammar"}}}, "$.text.format.type", "grammar"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "$.input[0].type", "item_reference"),
        (
            {
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_file", "file_id": "f"}],
                    }
                ]
            },
            "$.input[0].content[0].type",
            "input_file",
        ),
        ({"metadata": {"k": 1}}, "$.metadata.k", "string"),
        ({"model": 5}, "$.model", "model"),
    ],
)
def test_a_bad_response_create_names_its_field(extra, path, words):
    event = {"type": "response.create", "model": "m", "input": "hi", **extra}
    with pytest.raises(BadMessage) as caught:
        response_request(event)
    assert caught.value.path == path
    assert words in caught.value.message


def test_a_response_create_becomes_a_generate_after_its_history():
    request = response_request(
        {
            "type": "response.create",
            "model": "m",
            "input": "next",
            "instructions": "be brief",
            "max_output_tokens": 20,
            "reasoning": {"effort": "low"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
        }
    )
    history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"}]
    generate = response_generate(request, "resp_1", history)
    assert [m["content"] for m in generate.messages] == ["be brief", "first", "a", "next"]
    assert generate.params is not None and generate.params.max_tokens == 20
    assert generate.params.reasoning_effort == "low"
    assert generate.params.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"type": "object"}},
    }
    assert generate.tools == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert generate.tool_choice == {"type": "function", "function": {"name": "f"}}


def _events(frames, rid="resp_1"):
    request = response_request({"type": "response.create", "model": "m", "input": "hi"})
    events = ResponseEvents(request, rid, 1)
    out = events.created()
    for frame in frames:
        out += events.feed(frame)
    parsed = [json.loads(e) for e in out]
    for event in parsed:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    return parsed


def test_interleaved_tool_calls_keep_one_item_each():
    frames = [
        ToolCallChunk(id="r", seq=0, index=0, call_id="a", name="f", arguments="{"),
        ToolCallChunk(id="r", seq=1, index=1, call_id="b", name="g", arguments="["),
        ToolCallChunk(id="r", seq=2, index=0, call_id=None, name=None, arguments="}"),
        ToolCallComplete(id="r", seq=3, index=0, call_id="a", name="f", arguments="{}"),
        ToolCallChunk(id="r", seq=4, index=1, call_id=None, name=None, arguments="]"),
        ToolCallComplete(id="r", seq=5, index=1, call_id="b", name="g", arguments="[]"),
        Finish(id="r", seq=6, reason="tool_calls", content="", tool_calls=[], usage=USAGE),
    ]
    events = _events(frames)
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(i["call_id"], i["name"]) for i in added] == [("a", "f"), ("b", "g")]
    done = {
        e["item_id"]: e["arguments"]
        for e in events
        if e["type"] == "response.function_call_arguments.done"
    }
    assert sorted(done.values()) == ["[]", "{}"]
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [o["arguments"] for o in final["output"]] == ["{}", "[]"]


def test_text_after_reasoning_opens_a_second_item_and_failure_closes_it():
    frames = [
        Reasoning(id="r", seq=0, text="a"),
        Token(id="r", seq=1, text="b"),
        Error(id="r", seq=2, code="upstream_timeout", message="no token for 60 s", retryable=True),
    ]
    events = _events(frames)
    assert [e["type"] for e in events if e["type"].endswith("item.added")] == [
        "response.output_item.added"
    ] * 2
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"] == {
        "code": "server_error",
        "message": "upstream_timeout: no token for 60 s",
    }
    assert failed["response"]["output"][1]["content"][0]["text"] == "b"
    # The item cut by the failure says so in the response too, as in its output_item.done.
    assert [o["status"] for o in failed["response"]["output"]] == ["completed", "incomplete"]


@pytest.mark.parametrize(
    ("reason", "kind", "details"),
    [
        ("stop", "response.completed", None),
        ("length", "response.incomplete", {"reason": "max_output_tokens"}),
        ("content_filter", "response.incomplete", {"reason": "content_filter"}),
        ("cancelled", "response.incomplete", None),
    ],
)
def test_finish_reasons(reason, kind, details):
    events = _events([Finish(id="r", seq=0, reason=reason, content="", tool_calls=[], usage=None)])
    assert events[-1]["type"] == kind
    assert events[-1]["response"]["incomplete_details"] == details


def test_fields_at_their_defaults_ask_for_nothing_and_pass():
    """Clients send some fields with the API's default value: those pass; any
    other value of them is refused by name."""
    body = {"model": "m", "messages": USER, "logprobs": False, "parallel_tool_calls": True,
            "store": False, "top_logprobs": None, "service_tier": "auto"}  # fmt: skip
    assert chat_request(body, "c").generate.messages == USER
    with pytest.raises(BadMessage) as caught:
        chat_request({**body, "logprobs": True, "service_tier": "flex"}, "c")
    assert caught.value.message == "unsupported fields: `logprobs`, `service_tier`"
    event = {"type": "response.create", "model": "m", "input": "hi", "background": False,
             "stream": True, "max_tool_calls": None}  # fmt: skip
    assert response_request(event).input == [{"role": "user", "content": "hi"}]
    with pytest.raises(BadMessage) as refused:
        response_request({**event, "background": True})
    assert refused.value.path == "$.background"
