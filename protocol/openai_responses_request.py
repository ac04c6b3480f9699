"""OpenAI's Responses API: a ``response.create`` event read as a ``Generate``.

``response_request`` reads the event: its input items become chat messages,
its function tools chat tools, and every field tokenwire cannot honour is
refused by name (``BadMessage`` with the field's path). The events of the
answer are ``openai_responses.ResponseEvents``.

Pure code: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec

from .errors import BadMessage
from .messages import Generate
from .openai_chat import to_generate
from .openai_common import OpenAIErrorKind, expect, plain_json, reject_unknown
from .validation import check_generate, quote

HINTS: Final = frozenset(
    {
        "prompt_cache_key",
        "client_metadata",
        "safety_identifier",
        "service_tier",
        "prompt_cache_retention",
    }
)
"""Fields that only hint (caching keys, client metadata, service tiers):
taken with any value and ignored, as agents (Codex) send them."""
ECHOED: Final = (
    "instructions",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "max_output_tokens",
    "previous_response_id",
    "store",
    "metadata",
    "reasoning",
    "text",
    "parallel_tool_calls",
    "truncation",
    "user",
)
"""The request fields a response object repeats."""
SUPPORTED: Final = frozenset({"type", "model", "input", "include", "stream_id", *ECHOED, *HINTS})
"""Every ``response.create`` field tokenwire takes; any other is refused by name.
``truncation`` only as ``"disabled"``: another value asks for what tokenwire
does not do."""
NO_OP: Final[Mapping[str, tuple[Any, ...]]] = {
    "background": (False, None),
    "stream": (True, None),
    "top_logprobs": (None, 0),
    "max_tool_calls": (None,),
}
"""Fields sent with the API's default value: they ask for nothing, and pass.
(``stream: true`` is what WebSocket mode does anyway.)"""
HOSTED_TOOLS: Final = frozenset(
    {
        "web_search",
        "web_search_preview",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer_use_preview",
        "local_shell",
    }
)
"""Tools OpenAI runs on its side: no provider behind tokenwire runs them, so
they are dropped from the request (what agents send by default must pass)."""
MAX_METADATA: Final = 16
"""Keys a response's ``metadata`` may have (OpenAI's limit)."""
_ROLES: Final = frozenset({"user", "system", "developer", "assistant"})
BAD_REQUEST: Final = OpenAIErrorKind(400, "invalid_request_error")
SURFACE_ERRORS: Final = {
    "previous_response_not_found": OpenAIErrorKind(404, "invalid_request_error"),
    "response_in_flight": OpenAIErrorKind(409, "invalid_request_error"),
    "response_not_found": OpenAIErrorKind(404, "invalid_request_error"),
}
"""The errors of the Responses surface itself, as HTTP statuses and OpenAI types."""
_TOOL_CHOICES: Final = frozenset({"auto", "none", "required"})

_encode = msgspec.json.encode


class ResponseRequest(NamedTuple):
    """A ``response.create``, read: what to generate, and what the response echoes."""

    model: str
    input: list[dict[str, Any]]
    """The new input as chat messages (instructions and history not included)."""
    instructions: str | None
    tools: list[dict[str, Any]] | None
    """The function tools in Chat Completions' shape."""
    tool_choice: str | dict[str, Any] | None
    params: dict[str, Any]
    previous_response_id: str | None
    store: bool
    echo: dict[str, Any]
    """Request fields the response object repeats, in Responses' shape."""
    stream_id: str | None = None
    """The WebSocket lane (WebSocket mode only): FIFO within a lane, lanes
    in parallel; every event of the response echoes it."""


def http_response_request(body: Any) -> tuple[ResponseRequest, bool, bool]:
    """A ``POST /v1/responses`` body: the request (the fields of
    ``response.create``), whether it streams (``stream``, default false) and
    whether it runs in the background (``background``: on without its
    client, retrieved and cancelled by id; it must be stored)."""
    expect(body, dict, "$", "a JSON object")
    for name in ("type", "stream_id"):  # the WebSocket mode's envelope
        if name in body:
            raise BadMessage(f"`{name}` is not a field of POST /v1/responses", path=f"$.{name}")
    flags = []
    for name in ("stream", "background"):
        if body.get(name) is not None:
            expect(body[name], bool, f"$.{name}", "a boolean")
        flags.append(body.get(name) is True)
    stream, background = flags
    if background and body.get("store") is False:
        raise BadMessage("a background response must be stored (`store: false`)", path="$.store")
    event = {k: v for k, v in body.items() if k not in ("stream", "background")}
    event["type"] = "response.create"
    return response_request(event), stream, background


def response_request(event: Any) -> ResponseRequest:
    """Read a ``response.create`` event; ``BadMessage`` names what is wrong or unsupported."""
    expect(event, dict, "$", "a JSON object")
    if event.get("type") != "response.create":
        raise BadMessage(
            f"unknown event type {quote(event.get('type'))}; expected `response.create`",
            path="$.type",
        )
    reject_unknown(event, SUPPORTED, defaults=NO_OP)
    model = expect(event.get("model"), str, "$.model", "a model name (string)")
    if event.get("input") is None:
        raise BadMessage("missing required field `input`", path="$.input")
    messages = input_messages(event["input"])
    instructions = event.get("instructions")
    if instructions is not None:
        expect(instructions, str, "$.instructions", "a string")
    tools = None
    if event.get("tools"):
        tools = [
            function
            for i, t in enumerate(expect(event["tools"], list, "$.tools", "a list"))
            for function in _tools(t, f"$.tools[{i}]")
        ] or None
    tool_choice = _tool_choice(event.get("tool_choice"))
    params: dict[str, Any] = {}
    for name in ("temperature", "top_p"):
        if event.get(name) is not None:
            params[name] = event[name]
    if event.get("max_output_tokens") is not None:
        params["max_tokens"] = event["max_output_tokens"]
    if (reasoning := event.get("reasoning")) is not None:
        expect(reasoning, dict, "$.reasoning", "an object")
        reject_unknown(
            {k: v for k, v in reasoning.items() if v is not None},
            ("effort", "summary", "generate_summary"),  # a summary is a hint
            "$.reasoning",
        )
        if reasoning.get("effort") is not None:
            params["reasoning_effort"] = reasoning["effort"]
    if (text := event.get("text")) is not None and (fmt := _text_format(text)) is not None:
        params["response_format"] = fmt
    if event.get("parallel_tool_calls") is not None:  # a hint: providers call as they do
        expect(event["parallel_tool_calls"], bool, "$.parallel_tool_calls", "a boolean")
    if event.get("truncation") not in (None, "disabled"):
        raise BadMessage('only `truncation: "disabled"` is supported', path="$.truncation")
    if event.get("include") is not None:  # extra output (encrypted reasoning...): none to add
        for i, name in enumerate(expect(event["include"], list, "$.include", "a list")):
            expect(name, str, f"$.include[{i}]", "a string")
    if event.get("user") is not None:
        expect(event["user"], str, "$.user", "a string")
    stream_id = event.get("stream_id")
    if stream_id is not None:
        expect(stream_id, str, "$.stream_id", "a lane's name (string)")
        if not 0 < len(stream_id) <= 256:
            raise BadMessage("`stream_id` must be 1 to 256 characters", path="$.stream_id")
    previous = event.get("previous_response_id")
    if previous is not None:
        expect(previous, str, "$.previous_response_id", "a response id (string)")
    store = event.get("store")
    if store is not None:
        expect(store, bool, "$.store", "a boolean")
    metadata = event.get("metadata")
    if metadata is not None:
        _check_metadata(metadata)
    echo = {  # ECHOED, in this order
        "instructions": instructions,
        "tools": event.get("tools") or [],
        "tool_choice": event.get("tool_choice") or "auto",
        "temperature": event.get("temperature"),
        "top_p": event.get("top_p"),
        "max_output_tokens": event.get("max_output_tokens"),
        "previous_response_id": previous,
        "store": store is not False,
        "metadata": metadata or {},
        "reasoning": reasoning,
        "text": text or {"format": {"type": "text"}},
        "parallel_tool_calls": event.get("parallel_tool_calls") is not False,
        "truncation": "disabled",
        "user": event.get("user"),
    }
    return ResponseRequest(
        model=model,
        input=messages,
        instructions=instructions,
        tools=tools,
        tool_choice=tool_choice,
        params=params,
        previous_response_id=previous,
        store=store is not False,
        echo=echo,
        stream_id=stream_id,
    )


def response_generate(
    request: ResponseRequest, response_id: str, history: list[dict[str, Any]]
) -> Generate:
    """The ``Generate`` for ``request``: its instructions, then the history of
    the response it continues, then its new input."""
    messages = list(history)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    messages += request.input
    if not messages:
        raise BadMessage("`input` is empty and continues nothing", path="$.input")
    fields: dict[str, Any] = {
        "type": "generate",
        "id": response_id,
        "model": request.model,
        "messages": messages,
    }
    if request.tools is not None:
        fields["tools"] = request.tools
    if request.tool_choice is not None:
        fields["tool_choice"] = request.tool_choice
    if request.params:
        fields["params"] = request.params
    generate = to_generate(fields)
    check_generate(generate)
    return generate


# -- input ------------------------------------------------------------------------


def input_messages(value: Any) -> list[dict[str, Any]]:
    """A Responses ``input`` (text, or a list of items) as chat messages.

    Messages, ``function_call`` and ``function_call_output`` items are taken;
    ``reasoning`` items a client passes back are dropped (chat providers take
    no reasoning in their input); any other item type is refused.
    """
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    items = expect(value, list, "$.input", "a string or a list of items")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        path = f"$.input[{i}]"
        expect(item, dict, path, "an input item (object)")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, path))
        elif kind == "function_call":
            call = {
                "id": expect(item.get("call_id"), str, f"{path}.call_id", "a string"),
                "type": "function",
                "function": {
                    "name": expect(item.get("name"), str, f"{path}.name", "a string"),
                    "arguments": expect(
                        item.get("arguments"), str, f"{path}.arguments", "a string"
                    ),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # one turn: text and calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = _text_of(output, f"{path}.output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": expect(item.get("call_id"), str, f"{path}.call_id", "a string"),
                    "content": expect(output, str, f"{path}.output", "a string"),
                }
            )
        elif kind == "reasoning":
            continue
        else:
            raise BadMessage(f"unsupported input item type {quote(kind)}", path=f"{path}.type")
    return messages


def _message(item: dict[str, Any], path: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise BadMessage(f"unknown role {quote(role)}", path=f"{path}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    parts = expect(content, list, f"{path}.content", "a string or a list of content parts")
    if role != "user":
        return {"role": role, "content": _text_of(parts, f"{path}.content")}
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        where = f"{path}.content[{j}]"
        expect(part, dict, where, "a content part (object)")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            out.append(
                {"type": "text", "text": expect(part.get("text"), str, f"{where}.text", "a string")}
            )
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise BadMessage("only `image_url` images are supported", path=f"{where}.image_url")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        else:
            raise BadMessage(f"unsupported content part type {quote(kind)}", path=f"{where}.type")
    return {"role": role, "content": out}


def _text_of(parts: list[Any], path: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        where = f"{path}[{j}]"
        expect(part, dict, where, "a content part (object)")
        if part.get("type") not in ("input_text", "output_text", "text"):
            raise BadMessage(
                f"unsupported content part type {quote(part.get('type'))} here (text only)",
                path=f"{where}.type",
            )
        texts.append(expect(part.get("text"), str, f"{where}.text", "a string"))
    return "".join(texts)


def _tools(tool: Any, path: str) -> list[dict[str, Any]]:
    """A tool as chat tools: a function tool; a ``namespace`` tool's
    function tools, flattened; none for a hosted tool (``HOSTED_TOOLS``)."""
    expect(tool, dict, path, "a tool (object)")
    kind = tool.get("type")
    if kind in HOSTED_TOOLS:
        return []
    if kind == "namespace":
        inner = expect(tool.get("tools"), list, f"{path}.tools", "a list of tools")
        return [f for i, t in enumerate(inner) for f in _tools(t, f"{path}.tools[{i}]")]
    return [_tool(tool, path)]


def _tool(tool: Any, path: str) -> dict[str, Any]:
    expect(tool, dict, path, "a tool (object)")
    if tool.get("type") != "function":
        raise BadMessage(
            f"unsupported tool type {quote(tool.get('type'))}: only `function` tools",
            path=f"{path}.type",
        )
    reject_unknown(
        tool, ("type", "name", "description", "parameters", "strict", "defer_loading"), path
    )
    function: dict[str, Any] = {
        "name": expect(tool.get("name"), str, f"{path}.name", "a string"),
        "parameters": plain_json(
            tool.get("parameters") or {"type": "object", "properties": {}}, f"{path}.parameters"
        ),
    }
    if tool.get("description") is not None:
        function["description"] = expect(
            tool["description"], str, f"{path}.description", "a string"
        )
    if tool.get("strict") is not None:
        function["strict"] = expect(tool["strict"], bool, f"{path}.strict", "a boolean")
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> str | dict[str, Any] | None:
    if choice is None or (isinstance(choice, str) and choice in _TOOL_CHOICES):
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("name"), str)
    ):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadMessage(
        f"unsupported tool_choice {quote(choice)}: `auto`, `none`, `required` or a function",
        path="$.tool_choice",
    )


def _text_format(text: Any) -> dict[str, Any] | None:
    expect(text, dict, "$.text", "an object")
    reject_unknown({k: v for k, v in text.items() if v is not None}, ("format",), "$.text")
    fmt = text.get("format")
    if fmt is None:
        return None
    expect(fmt, dict, "$.text.format", "an object")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": plain_json(schema, "$.text.format")}
    raise BadMessage(f"unsupported text format {quote(kind)}", path="$.text.format.type")


def _check_metadata(metadata: Any) -> None:
    expect(metadata, dict, "$.metadata", "an object")
    if len(metadata) > MAX_METADATA:
        raise BadMessage(f"at most {MAX_METADATA} metadata keys", path="$.metadata")
    for key, value in metadata.items():
        if len(key) > 64:
            raise BadMessage("metadata keys are at most 64 characters", path="$.metadata")
        expect(value, str, f"$.metadata.{key}", "a string")
        if len(value) > 512:
            raise BadMessage("metadata values are at most 512 characters", path=f"$.metadata.{key}")
