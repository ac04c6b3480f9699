"""The one assistant message (``tokenwire.protocol.assistant_message``): the
history, the kept responses, Chat Completions' body and ``Result.to_openai``
all build it, so its rules hold everywhere at once."""

from __future__ import annotations

from tokenwire.protocol import ToolCall, assistant_message

CALL = ToolCall(index=0, call_id="call_a", name="f", arguments="{}")
NAMELESS = ToolCall(index=2, call_id=None, name="g", arguments='{"x":1}')


def test_text_alone_is_its_content():
    assert assistant_message("hi") == {"role": "assistant", "content": "hi"}
    assert assistant_message("") == {"role": "assistant", "content": ""}


def test_tool_calls_alone_have_null_content_and_ids():
    message = assistant_message("", [CALL, NAMELESS])
    assert message["content"] is None
    assert [c["id"] for c in message["tool_calls"]] == ["call_a", "call_2"]
    assert message["tool_calls"][1]["function"] == {"name": "g", "arguments": '{"x":1}'}


def test_text_and_tool_calls_keep_both():
    message = assistant_message("let me look", [CALL])
    assert message["content"] == "let me look" and len(message["tool_calls"]) == 1


def test_reasoning_and_the_chunk_builders_empty_content():
    assert assistant_message("a", reasoning="why")["reasoning_content"] == "why"
    assert "reasoning_content" not in assistant_message("a")
    assert assistant_message("", null_when_empty=True)["content"] is None
