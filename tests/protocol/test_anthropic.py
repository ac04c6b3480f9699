"""Anthropic's Messages surface without sockets: requests read into
``generate``, frames written as events, each event parsed by the official
``anthropic`` SDK's own models."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent

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
from tokenwire.protocol.anthropic_messages import MessageEvents
from tokenwire.protocol.anthropic_request import messages_request

EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)


def _events(raw: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for chunk in raw:
        for block in chunk.decode().strip().split("\n\n"):
            event_line, data_line = block.split("\n")
            event = json.loads(data_line.removeprefix("data: "))
            assert event_line == f"event: {event['type']}"  # the SDK needs the event line
            if event["type"] != "error":
                EVENT.validate_python(event)
            out.append(event)
    return out


def _finish(reason: str = "stop", **fields: Any) -> Finish:
    usage = Usage(prompt_tokens=11, completion_tokens=7, total_tokens=18)
    return Finish(id="m", seq=99, reason=reason, content="", tool_calls=[], usage=usage, **fields)


def _run(frames: list[Any]) -> list[dict[str, Any]]:
    events = MessageEvents("msg_1", "fake")
    raw = events.opening()
    for frame in frames:
        raw += events.translate(frame)
    return _events(raw)


def test_text_and_thinking_stream_as_blocks_one_after_another():
    events = _run([
        Reasoning(id="m", seq=0, text="hmm "), Reasoning(id="m", seq=1, text="ok"),
        Token(id="m", seq=2, text="Hi "), Token(id="m", seq=3, text="there"), _finish(),
    ])  # fmt: skip
    kinds = [e["type"] for e in events]
    assert kinds == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[2]["delta"] == {"type": "thinking_delta", "thinking": "hmm "}
    assert events[5]["index"] == 1 and events[6]["delta"] == {"type": "text_delta", "text": "Hi "}
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"] == {"input_tokens": 11, "output_tokens": 7}


def test_interleaved_tool_calls_never_reopen_a_block_nor_send_an_empty_delta():
    frames = [
        ToolCallChunk(id="m", seq=0, index=0, call_id="c0", name="a", arguments=""),
        ToolCallChunk(id="m", seq=1, index=0, call_id=None, name=None, arguments='{"x":'),
        ToolCallChunk(id="m", seq=2, index=1, call_id="c1", name="b", arguments='{"y"'),
        ToolCallChunk(id="m", seq=3, index=0, call_id=None, name=None, arguments=" 1}"),
        ToolCallChunk(id="m", seq=4, index=1, call_id=None, name=None, arguments=": 2}"),
        ToolCallComplete(id="m", seq=5, index=0, call_id="c0", name="a", arguments='{"x": 1}'),
        ToolCallComplete(id="m", seq=6, index=1, call_id="c1", name="b", arguments='{"y": 2}'),
        _finish("tool_calls"),
    ]
    events = _run(frames)
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(s["index"], s["content_block"]["name"]) for s in starts] == [(0, "a"), (1, "b")]
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    assert all(d["delta"]["partial_json"] for d in deltas)
    by_block: dict[int, str] = {}
    order = []
    for e in events:
        if e["type"] == "content_block_delta":
            by_block[e["index"]] = by_block.get(e["index"], "") + e["delta"]["partial_json"]
        if e["type"] in ("content_block_start", "content_block_stop"):
            order.append((e["type"], e["index"]))
    assert by_block == {0: '{"x": 1}', 1: '{"y": 2}'}
    assert order == [("content_block_start", 0), ("content_block_stop", 0),
                     ("content_block_start", 1), ("content_block_stop", 1)]  # fmt: skip
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_the_whole_message_is_the_sdks_message():
    events = MessageEvents("msg_2", "fake", stream=False)
    assert events.opening() == []
    call = ToolCall(index=0, call_id="c", name="f", arguments='{"a": [1]}')
    frames = [
        Token(id="m", seq=0, text="Let me "),
        ToolCallComplete(id="m", seq=1, index=0, call_id="c", name="f", arguments='{"a": [1]}'),
        _finish(
            "tool_calls",
        ),
    ]
    out = [b for f in frames for b in events.translate(f)]
    message = Message.model_validate_json(out[-1])
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"a": [1]} and message.stop_reason == "tool_use"
    assert call.name == "f"


def test_an_error_after_the_start_is_an_error_event():
    events = _run([Token(id="m", seq=0, text="a"),
                   Error(id="m", seq=1, code="upstream_rate_limited", message="slow down",
                         retryable=True)])  # fmt: skip
    error = {"type": "rate_limit_error", "message": "slow down"}
    assert events[-1] == {"type": "error", "error": error}


def test_a_claude_code_request_reads_whole():
    body = {
        "model": "fake",
        "max_tokens": 32000,
        "system": [{"type": "text", "text": "You are Claude Code.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "list files",
                                          "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "...", "signature": "sig"},
                {"type": "text", "text": "Running ls."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt",
                 "is_error": False, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "thanks"},
            ]},
            {"role": "system", "content": "a reminder"},
        ],
        "tools": [
            {"name": "Bash", "description": "run", "input_schema": {"type": "object"},
             "defer_loading": False},
            {"type": "web_search_20250305", "name": "web_search"},
        ],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": []},
        "metadata": {"user_id": json.dumps({"device": "x"})},
        "stream": True,
    }  # fmt: skip
    asked = messages_request(body, "msg_x")
    generate = asked.generate
    assert asked.stream and generate.params is not None
    assert generate.params.reasoning_effort == "high" and generate.params.max_tokens == 32000
    roles = [m["role"] for m in generate.messages]
    assert roles == ["system", "user", "assistant", "tool", "user", "system"]
    assert generate.messages[2]["tool_calls"][0]["function"]["arguments"] == '{"command":"ls"}'
    assert [t["function"]["name"] for t in generate.tools or []] == ["Bash"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_k", 5), ("mcp_servers", []), ("container", "c")],
)
def test_what_cannot_be_delivered_is_refused_by_name(field, value):
    body = {"model": "fake", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BadMessage) as refused:
        messages_request({**body, field: value}, "m")
    assert f"`{field}`" in refused.value.message
