"""The AI SDK's UI message stream, translated without sockets."""

from __future__ import annotations

import json

import pytest

from tokenwire.protocol import BadMessage
from tokenwire.protocol.ai_sdk import DONE, UiChunks, to_chat_messages, ui_request
from tokenwire.protocol.messages import (
    CompletionTokensDetails,
    Error,
    Finish,
    PromptTokensDetails,
    Reasoning,
    Token,
    ToolCall,
    ToolCallChunk,
    ToolCallComplete,
    Usage,
)


def _user(text: str, mid: str = "u1") -> dict:
    return {"id": mid, "role": "user", "parts": [{"type": "text", "text": text}]}


def _request(body: dict, **kw):
    return ui_request(body, "msg-g", default_model="demo", new_message_id="msg-new", **kw)


def test_the_default_transports_body_becomes_a_generate():
    body = {
        "id": "chat-1",
        "messages": [_user("Hi")],
        "trigger": "submit-message",
        "messageId": None,
        "model": "fake",
        "temperature": 0.3,
        "topP": 0.9,
        "maxOutputTokens": 50,
        "stopSequences": ["\n\n"],
        "seed": 7,
        "presencePenalty": 0.1,
        "frequencyPenalty": 0.2,
    }
    asked = _request(body)
    assert (asked.chat_id, asked.message_id, asked.continues) == ("chat-1", "msg-new", False)
    generate = asked.generate
    assert generate.model == "fake" and generate.id == "msg-g"
    assert generate.messages == [{"role": "user", "content": "Hi"}]
    params = generate.params
    assert params is not None
    assert (params.temperature, params.top_p, params.max_tokens, params.seed) == (0.3, 0.9, 50, 7)
    assert (params.stop, params.presence_penalty, params.frequency_penalty) == (["\n\n"], 0.1, 0.2)


def test_the_model_defaults_and_unknown_fields_are_refused_by_name():
    assert _request({"id": "c", "messages": [_user("x")]}).generate.model == "demo"
    with pytest.raises(BadMessage) as refused:
        _request({"id": "c", "messages": [_user("x")], "topK": 3, "extra": 1})
    assert "`extra`" in refused.value.message and "`topK`" in refused.value.message
    with pytest.raises(BadMessage) as bad:
        _request({"id": "c", "messages": [_user("x")], "trigger": "dance"})
    assert bad.value.path == "$.trigger"
    with pytest.raises(BadMessage):
        _request({"id": "c"})
    with pytest.raises(BadMessage) as part:
        _request({"id": "c", "messages": [{"id": "u", "role": "user", "parts": [{"type": "x"}]}]})
    assert part.value.path == "$.messages[0].parts[0]"


def test_ui_parts_become_chat_messages_tools_and_their_answers():
    ui = [
        {"id": "s", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
        {
            "id": "u1",
            "role": "user",
            "parts": [
                {"type": "text", "text": "What is this?"},
                {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AAA"},
            ],
        },
        {
            "id": "a1",
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {"type": "reasoning", "text": "hmm"},
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool-lookup",
                    "toolCallId": "call_1",
                    "state": "output-available",
                    "input": {"q": "x"},
                    "output": {"answer": 42},
                },
                {
                    "type": "dynamic-tool",
                    "toolName": "fetch",
                    "toolCallId": "call_2",
                    "state": "output-error",
                    "input": {},
                    "errorText": "offline",
                },
                {"type": "step-start"},
                {"type": "text", "text": "It is 42."},
                {"type": "data-weather", "data": {"t": 1}},
            ],
        },
    ]
    assert to_chat_messages(ui, "$.messages") == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": '{"q": "x"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "fetch", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"answer": 42}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "offline"},
        {"role": "assistant", "content": "It is 42."},
    ]  # fmt: skip


def test_a_continuation_after_a_tool_result_keeps_the_assistant_messages_id():
    assistant = {
        "id": "a-7",
        "role": "assistant",
        "parts": [
            {"type": "tool-get_weather", "toolCallId": "c1", "state": "output-available",
             "input": {"city": "Paris"}, "output": "sunny"},
        ],
    }  # fmt: skip
    asked = _request({"id": "c", "messages": [_user("weather?"), assistant]})
    assert (asked.message_id, asked.continues) == ("a-7", True)
    assert asked.generate.messages[-1] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


def test_one_message_continues_the_history_the_server_kept():
    kept = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    asked = _request({"id": "c", "message": _user("Again")}, history=kept)
    assert asked.generate.messages == [*kept, {"role": "user", "content": "Again"}]


def _sse(data: list[bytes]) -> list[dict]:
    events = []
    for event in b"".join(data).split(b"\n\n"):
        if not event:
            continue
        assert event.startswith(b"data: "), event
        payload = event[len(b"data: ") :]
        events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return events


def test_frames_become_ui_chunks_with_parts_opened_and_closed():
    ui = UiChunks("msg-1")
    frames = [
        Reasoning(id="g", seq=0, text="thinking"),
        Token(id="g", seq=1, text="Hel"),
        Token(id="g", seq=2, text="lo"),
        ToolCallChunk(id="g", seq=3, index=0, call_id="c1", name="f", arguments='{"a":'),
        ToolCallChunk(id="g", seq=4, index=0, call_id=None, name=None, arguments="1}"),
        ToolCallComplete(id="g", seq=5, index=0, call_id="c1", name="f", arguments='{"a":1}'),
        Finish(
            id="g", seq=6, reason="tool_calls", content="Hello",
            tool_calls=[ToolCall(index=0, call_id="c1", name="f", arguments='{"a":1}')],
            usage=Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15,
                        prompt_tokens_details=PromptTokensDetails(cached_tokens=4),
                        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=2)),
        ),
    ]  # fmt: skip
    out = ui.opening()
    for frame in frames:
        out += ui.translate(frame)
    events = _sse(out)
    assert [e if e == "[DONE]" else e["type"] for e in events] == [
        "start", "start-step",
        "reasoning-start", "reasoning-delta", "reasoning-end",
        "text-start", "text-delta", "text-delta", "text-end",
        "tool-input-start", "tool-input-delta", "tool-input-delta", "tool-input-available",
        "finish-step", "finish", "[DONE]",
    ]  # fmt: skip
    assert events[0] == {"type": "start", "messageId": "msg-1"}
    assert events[6] == {"type": "text-delta", "id": events[5]["id"], "delta": "Hel"}
    assert events[12] == {"type": "tool-input-available", "toolCallId": "c1", "toolName": "f",
                          "input": {"a": 1}}  # fmt: skip
    assert events[14] == {
        "type": "finish",
        "finishReason": "tool-calls",
        "messageMetadata": {"usage": {
            "inputTokens": 10, "inputTokenDetails": {"cacheReadTokens": 4, "noCacheTokens": 6},
            "outputTokens": 5, "outputTokenDetails": {"reasoningTokens": 2, "textTokens": 3},
            "totalTokens": 15}},
    }  # fmt: skip


def test_a_cancel_is_an_abort_and_a_failure_an_error_chunk():
    cancelled = UiChunks("m")
    out = cancelled.translate(Token(id="g", seq=0, text="a"))
    out += cancelled.translate(
        Finish(id="g", seq=1, reason="cancelled", content="a", tool_calls=[], usage=None)
    )
    types = [e if e == "[DONE]" else e["type"] for e in _sse(out)]
    assert types[-3:] == ["finish-step", "abort", "[DONE]"]
    failed = UiChunks("m")
    out = failed.translate(Token(id="g", seq=0, text="a"))
    out += failed.translate(
        Error(id="g", seq=1, code="upstream_error", message="the provider failed", retryable=True)
    )
    events = _sse(out)
    assert events[-2] == {"type": "error", "errorText": "the provider failed"}
    assert out[-1] == DONE
