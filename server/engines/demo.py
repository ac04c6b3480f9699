"""The built-in offline model ``demo``: no key, no network.

It is registered with LiteLLM as a custom provider (``tokenwire/demo``), so
its streams run through exactly the code path of every other model: the
Router, LiteLLM's stream wrapper, tokenwire's relay. It answers the user's
last message at a readable pace and, when ``tools`` are given, calls the first
tool with arguments that fit that tool's JSON schema.

A few prompts show what tokenwire streams (``SHOWCASE``): a message that
mentions "markdown" gets Markdown (a heading, a list, a table, a code
block); one that mentions "tool" calls a tool (``get_weather`` when the
request declares none); one that mentions "think" streams its reasoning
first. Any other gets its words echoed, and these hints.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

from ..config import DEMO_MODEL, DEMO_PROVIDER
from .litellm_adapter import (
    CustomLLM,
    GenericStreamingChunk,
    reasoning_chunk,
    register_custom_provider,
)

PROVIDER: Final = DEMO_PROVIDER
MODEL: Final = f"{PROVIDER}/{DEMO_MODEL}"
TOKENS_PER_SECOND: Final = 30.0
"""The pace of the demo's answer: readable, and slow enough to press Stop."""
ARGUMENT_FRAGMENT_CHARS: Final = 12


def register() -> None:
    """Make ``tokenwire/demo`` known to LiteLLM (idempotent)."""
    register_custom_provider(PROVIDER, DemoLLM())


class DemoLLM(CustomLLM):
    """A LiteLLM custom provider that streams a canned, message-aware answer."""

    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list[dict[str, Any]], *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        optional_params: dict[str, Any] = kwargs.get("optional_params") or {}
        tools = optional_params.get("tools") or []
        max_tokens = optional_params.get("max_tokens")
        pace = float(optional_params.get("tokens_per_second") or TOKENS_PER_SECOND)
        prompt_tokens = sum(len(str(m.get("content") or "").split()) + 3 for m in messages)
        asked = _last_user_text(messages).lower()
        if _answered_a_tool(messages):
            tools = []  # the loop closes: a tool's answer gets a reply, not another call
        elif not tools and "tool" in asked:
            tools = [WEATHER_TOOL]
        thinking = list(_words(THOUGHT)) if "think" in asked and not tools else []
        pieces = list(_tool_call_fragments(tools[0]) if tools else _answer(messages))
        finish_reason = "tool_calls" if tools else "stop"
        if max_tokens is not None and len(pieces) > max_tokens and not tools:
            pieces, finish_reason = pieces[:max_tokens], "length"
        for thought in thinking:
            await asyncio.sleep(1.0 / pace)
            yield reasoning_chunk(thought)  # type: ignore[misc]
        for piece in pieces:
            await asyncio.sleep(1.0 / pace)
            if isinstance(piece, str):
                yield _chunk(text=piece)
            else:
                yield _chunk(tool_use=piece)
        yield _chunk(
            finish_reason=finish_reason,
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(pieces),
                "total_tokens": prompt_tokens + len(pieces),
            },
        )


def _chunk(
    *,
    text: str = "",
    tool_use: Any = None,
    finish_reason: str = "",
    usage: Any = None,
) -> GenericStreamingChunk:
    return {
        "text": text,
        "tool_use": tool_use,
        "is_finished": bool(finish_reason),
        "finish_reason": finish_reason,
        "usage": usage,
        "index": 0,
    }


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # OpenAI content parts
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


WEATHER_TOOL: Final = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city (the demo's own tool).",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "default": "Paris"}},
            "required": ["city"],
        },
    },
}
THOUGHT: Final = (
    "The user asked me to think first. I have no model behind me, so this is a "
    "scripted thought, streamed as reasoning frames before the answer: a page shows "
    "it apart from the answer, and a client can hide it."
)
MARKDOWN: Final = """## What tokenwire streams

Every piece of this answer arrived as its own **token** frame:

- text, *reasoning* and tool calls, each with its own frame type
- several generations at once on one socket, each with its own id
- `cancel`, `reset` and `resume` as messages on the same socket

| surface | path |
|---|---|
| tokenwire's protocol | `/v1/ws` |
| Chat Completions | `/v1/chat/completions` |
| Responses API | `/v1/responses` |

```python
async with tokenwire.client.connect("ws://127.0.0.1:8765/v1/ws") as client:
    gen = await client.generate(model="demo", messages=[{"role": "user", "content": "Hi"}])
    async for text in gen:
        print(text, end="")
```
"""
SHOWCASE: Final = {
    "show markdown": "Markdown: a heading, a list, a table and a code block",
    "use a tool": "a tool call (get_weather, or your first tool)",
    "think first": "reasoning, streamed before the answer",
}


def _answered_a_tool(messages: list[dict[str, Any]]) -> bool:
    """Whether the conversation's last message is a tool's answer."""
    return bool(messages) and messages[-1].get("role") == "tool"


def _words(text: str) -> Iterator[str]:
    """One token per word, the space kept with the word that follows it
    (a newline stays with the word it ends)."""
    first, *rest = text.split(" ")
    yield first
    for word in rest:
        yield " " + word


def _answer(messages: list[dict[str, Any]]) -> Iterator[str]:
    asked = _last_user_text(messages)
    if "markdown" in asked.lower():
        yield from _words(MARKDOWN)
        return
    if _answered_a_tool(messages):
        result = str(messages[-1].get("content") or "")[:200]
        yield from _words(
            f"The tool answered: {result}. That closes the loop: call, result, reply."
        )
        return
    said = " ".join(asked.split())
    if not said:
        opening = "Hello! You sent no text, so let me introduce myself."
    else:
        quoted = said if len(said) <= 80 else said[:77].rstrip() + "..."
        words = len(said.split())
        opening = f'You said: "{quoted}" ({words} word{"s" if words != 1 else ""}).'
    turn = sum(1 for m in messages if m.get("role") == "user")
    tries = ", ".join(f'"{prompt}" ({what})' for prompt, what in SHOWCASE.items())
    text = (
        f"{opening} I am demo, the offline model built into tokenwire, answering turn {turn} "
        "of this conversation. I cannot think, but I can stream: every word you see arrived "
        "as its own token frame over one WebSocket. Connect a real model with --model or a "
        f"config file, and the same frames carry its answer. Try {tries}."
    )
    yield from _words(text)


def _tool_call_fragments(tool: dict[str, Any]) -> Iterator[Any]:
    function = tool.get("function") or {}
    name = function.get("name") or "tool"
    arguments = json.dumps(example_for_schema(function.get("parameters") or {}))
    call_id = "call_demo_0"
    for start in range(0, max(len(arguments), 1), ARGUMENT_FRAGMENT_CHARS):
        yield {
            "id": call_id if start == 0 else None,
            "type": "function",
            "function": {
                "name": name if start == 0 else None,
                "arguments": arguments[start : start + ARGUMENT_FRAGMENT_CHARS],
            },
            "index": 0,
        }


def example_for_schema(schema: Any) -> Any:
    """A small value that validates against ``schema`` (the common JSON Schema subset)."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_for_schema(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {key: example_for_schema(sub) for key, sub in properties.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [example_for_schema(schema.get("items") or {}) for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return schema.get("minimum", 1.5)
    if kind == "boolean":
        return True
    if kind == "string":
        length = int(schema.get("minLength", 0))
        return "demo".ljust(length, "o")
    return None
