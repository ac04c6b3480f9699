"""Anthropic's Messages API requests (``POST /v1/messages``) as ``generate``.

What Claude Code, the Claude Agent SDK and the ``anthropic`` SDKs send,
read into a chat ``Generate`` for any provider: ``system`` (a string or
text blocks), ``messages`` with ``text``, ``image``, ``tool_use`` and
``tool_result`` blocks (``thinking`` blocks sent back are dropped: providers
take no reasoning in their input; a ``role: "system"`` message is a system
message), ``tools`` (``input_schema``), ``tool_choice``, ``max_tokens``,
``temperature``, ``top_p``, ``stop_sequences``, ``thinking`` and
``output_config.effort`` (the provider's reasoning effort), ``metadata``.

Fields that only hint (``cache_control`` on any block, ``context_management``,
``metadata``, ``service_tier``, a tool's ``defer_loading``, ``thinking``'s
``display``) are taken and ignored; a server tool Anthropic runs itself
(web search, web fetch, code execution) is dropped; a field that would
change the answer in a way tokenwire cannot deliver (``top_k``, MCP
servers, a container, documents, Anthropic-defined client tools without a
schema) is refused by name (``BadMessage``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .errors import BadMessage
from .messages import Generate
from .openai_chat import to_generate
from .openai_common import expect, plain_json, reject_unknown
from .validation import check_generate, quote

SUPPORTED: Final = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "metadata",
        "context_management",
        "service_tier",
    }
)
"""Every field tokenwire takes; any other is refused by name."""
SERVER_TOOLS: Final = ("web_search_", "web_fetch_", "code_execution_", "tool_search_")
"""Type prefixes of the tools Anthropic runs on its side: dropped."""
EFFORTS: Final = frozenset({"low", "medium", "high"})
THINKING_EFFORT: Final = ((4096, "low"), (16384, "medium"))
"""A thinking budget below each bound asks for that effort; above them: high."""

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """A ``POST /v1/messages`` body, read."""

    generate: Generate
    stream: bool
    model: str


def messages_request(body: Any, message_id: str) -> MessagesRequest:
    """The ``Generate`` a Messages request asks for (``BadMessage`` names the field)."""
    expect(body, dict, "$", "a JSON object")
    reject_unknown(body, SUPPORTED)
    model = expect(body.get("model"), str, "$.model", "a model name (string)")
    if body.get("max_tokens") is None:
        raise BadMessage("missing required field `max_tokens`", path="$.max_tokens")
    params: dict[str, Any] = {
        "max_tokens": expect(body["max_tokens"], int, "$.max_tokens", "an integer")
    }
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            params[name] = expect(body[name], (int, float), f"$.{name}", "a number")
    if body.get("stop_sequences"):
        stops = expect(body["stop_sequences"], list, "$.stop_sequences", "a list of strings")
        params["stop"] = [expect(s, str, f"$.stop_sequences[{i}]", "a string")
                          for i, s in enumerate(stops)]  # fmt: skip
    if (effort := _effort(body)) is not None:
        params["reasoning_effort"] = effort
    stream = body.get("stream")
    if stream is not None:
        expect(stream, bool, "$.stream", "a boolean")
    messages = _system(body.get("system"))
    turns = expect(body.get("messages"), list, "$.messages", "a list of messages")
    if not turns:
        raise BadMessage("`messages` must not be empty", path="$.messages")
    for i, turn in enumerate(turns):
        messages += _turn(turn, f"$.messages[{i}]")
    fields: dict[str, Any] = {
        "type": "generate",
        "id": message_id,
        "model": model,
        "messages": messages,
        "params": params,
    }
    if body.get("tools"):
        tools = [
            tool
            for i, t in enumerate(expect(body["tools"], list, "$.tools", "a list of tools"))
            if (tool := _tool(t, f"$.tools[{i}]")) is not None
        ]
        if tools:
            fields["tools"] = tools
    if (choice := _tool_choice(body.get("tool_choice"))) is not None and "tools" in fields:
        fields["tool_choice"] = choice
    generate = to_generate(fields)
    check_generate(generate)
    return MessagesRequest(generate, stream is True, model)


def _effort(body: dict[str, Any]) -> str | None:
    """The reasoning effort ``thinking`` (and ``output_config.effort``) ask for."""
    config = body.get("output_config")
    effort = None
    if config is not None:
        expect(config, dict, "$.output_config", "an object")
        reject_unknown(config, ("effort",), "$.output_config")
        if config.get("effort") is not None:
            said: str = expect(config["effort"], str, "$.output_config.effort", "a string")
            effort = said if said in EFFORTS else "high"  # "max": the most there is
    thinking = body.get("thinking")
    if thinking is None:
        return effort
    expect(thinking, dict, "$.thinking", "an object")
    kind = thinking.get("type")
    if kind == "disabled":
        return None
    if kind == "adaptive":
        return effort or "medium"
    if kind != "enabled":
        raise BadMessage(
            f"unknown thinking type {quote(kind)}: enabled, adaptive or disabled",
            path="$.thinking.type",
        )
    budget = expect(thinking.get("budget_tokens"), int, "$.thinking.budget_tokens", "an integer")
    if effort is not None:
        return effort
    for bound, name in THINKING_EFFORT:
        if budget < bound:
            return name
    return "high"


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    blocks = expect(system, list, "$.system", "a string or a list of text blocks")
    text = "\n\n".join(_text(b, f"$.system[{i}]") for i, b in enumerate(blocks))
    return [{"role": "system", "content": text}] if text else []


def _text(block: Any, path: str) -> str:
    expect(block, dict, path, "a content block (object)")
    if block.get("type") != "text":
        raise BadMessage(f"expected a text block, got {quote(block.get('type'))}", path=path)
    text: str = expect(block.get("text"), str, f"{path}.text", "a string")
    return text


def _turn(turn: Any, path: str) -> list[dict[str, Any]]:
    """One message as chat messages: a user's tool results become ``tool``
    messages (before the rest of it), an assistant's tool uses its calls."""
    expect(turn, dict, path, "a message (object)")
    role = turn.get("role")
    content = turn.get("content")
    if role not in ("user", "assistant", "system"):
        raise BadMessage(f"unknown role {quote(role)}", path=f"{path}.role")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = expect(content, list, f"{path}.content", "a string or a list of blocks")
    if role == "system":
        return [{"role": "system", "content": "".join(
            _text(b, f"{path}.content[{i}]") for i, b in enumerate(blocks))}]  # fmt: skip
    if role == "assistant":
        return _assistant(blocks, f"{path}.content")
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        where = f"{path}.content[{i}]"
        expect(block, dict, where, "a content block (object)")
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "image":
            parts.append(_image(block.get("source"), f"{where}.source"))
        elif kind == "tool_result":
            results.append(_tool_result(block, where))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise BadMessage(f"unsupported content block type {quote(kind)}", path=f"{where}.type")
    if parts:  # one text block as a string; several kept apart, as they came
        one = len(parts) == 1 and parts[0]["type"] == "text"
        results.append({"role": "user", "content": parts[0]["text"] if one else parts})
    return results


def _assistant(blocks: list[Any], path: str) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        where = f"{path}[{i}]"
        expect(block, dict, where, "a content block (object)")
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "tool_use":
            arguments = plain_json(block.get("input", {}), f"{where}.input")
            calls.append(
                {
                    "id": expect(block.get("id"), str, f"{where}.id", "a string"),
                    "type": "function",
                    "function": {
                        "name": expect(block.get("name"), str, f"{where}.name", "a string"),
                        "arguments": _encode(arguments).decode(),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # providers take no reasoning in their input
        else:
            raise BadMessage(f"unsupported content block type {quote(kind)}", path=f"{where}.type")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return [message] if texts or calls else []


def _tool_result(block: dict[str, Any], path: str) -> dict[str, Any]:
    call_id = expect(block.get("tool_use_id"), str, f"{path}.tool_use_id", "a string")
    content = block.get("content", "")
    if isinstance(content, list):
        content = "".join(
            _text(b, f"{path}.content[{i}]") for i, b in enumerate(content)
            if not (isinstance(b, dict) and b.get("type") == "image")
        )  # fmt: skip
    text = expect(content, str, f"{path}.content", "a string or text blocks")
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _image(source: Any, path: str) -> dict[str, Any]:
    expect(source, dict, path, "an image source (object)")
    kind = source.get("type")
    if kind == "url":
        url = expect(source.get("url"), str, f"{path}.url", "a string")
    elif kind == "base64":
        media = expect(source.get("media_type"), str, f"{path}.media_type", "a string")
        data = expect(source.get("data"), str, f"{path}.data", "a string")
        url = f"data:{media};base64,{data}"
    else:
        raise BadMessage(f"unsupported image source {quote(kind)}", path=f"{path}.type")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool(tool: Any, path: str) -> dict[str, Any] | None:
    """A tool as a chat function tool; None for a server tool (dropped)."""
    expect(tool, dict, path, "a tool (object)")
    kind = tool.get("type")
    if isinstance(kind, str) and kind.startswith(SERVER_TOOLS):
        return None
    if kind not in (None, "custom"):
        raise BadMessage(
            f"unsupported tool type {quote(kind)}: only tools with an input_schema",
            path=f"{path}.type",
        )
    reject_unknown(
        tool,
        ("type", "name", "description", "input_schema", "cache_control", "defer_loading",
         "strict", "input_examples"),
        path,
    )  # fmt: skip
    function: dict[str, Any] = {
        "name": expect(tool.get("name"), str, f"{path}.name", "a string"),
        "parameters": plain_json(
            expect(tool.get("input_schema"), dict, f"{path}.input_schema", "a JSON schema"),
            f"{path}.input_schema",
        ),
    }
    if tool.get("description") is not None:
        function["description"] = expect(tool["description"], str, f"{path}.description", "text")
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    expect(choice, dict, "$.tool_choice", "an object")
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        name = expect(choice.get("name"), str, "$.tool_choice.name", "a tool's name")
        return {"type": "function", "function": {"name": name}}
    raise BadMessage(f"unknown tool_choice type {quote(kind)}", path="$.tool_choice.type")
