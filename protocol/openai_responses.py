"""OpenAI's Responses API (WebSocket mode) as a translation of the tokenwire protocol.

``response_request`` reads a ``response.create`` event: its input items
become chat messages, its function tools chat tools, and every field
tokenwire cannot honour is refused by name. ``ResponseEvents`` turns one
generation's frames into the ``response.*`` events OpenAI documents, each
with its ``sequence_number``:

- ``reasoning`` frames open a ``reasoning`` item: ``response.reasoning_text.delta``;
- ``token`` frames open a ``message`` item with one ``output_text`` part:
  ``response.output_text.delta``;
- each tool call (by ``index``) is a ``function_call`` item:
  ``response.function_call_arguments.delta``, done at its ``tool_call_complete``;
- ``finish`` closes what is open, then ``response.completed`` (``response.incomplete``
  for ``length``, ``content_filter`` or a cancel); an ``error`` frame is
  ``response.failed``, or a plain ``error`` event for a request refused
  before it started.

Pure code: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec

from .errors import BadMessage, ErrorCode
from .messages import (
    Error,
    Finish,
    Generate,
    GenerationFrame,
    Reasoning,
    Token,
    ToolCallChunk,
    ToolCallComplete,
    Usage,
)
from .openai_chat import to_generate
from .openai_common import (
    ERROR_KINDS,
    OpenAIErrorKind,
    error_kind,
    expect,
    plain_json,
    reject_unknown,
)
from .validation import check_generate, quote

SUPPORTED: Final = frozenset(
    {
        "type",
        "model",
        "input",
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
        "include",
        "user",
    }
)
"""Every ``response.create`` field tokenwire takes; any other is refused by name.
``parallel_tool_calls`` only as ``true``, ``truncation`` only as ``"disabled"``
and ``include`` only empty: their other values ask for what tokenwire does not do."""
NO_OP: Final[Mapping[str, tuple[Any, ...]]] = {
    "background": (False, None),
    "stream": (True, None),
    "top_logprobs": (None, 0),
    "max_tool_calls": (None,),
    "service_tier": (None, "auto"),
    "prompt_cache_key": (None,),
    "safety_identifier": (None,),
}
"""Fields sent with the API's default value: they ask for nothing, and pass.
(``stream: true`` is what WebSocket mode does anyway.)"""
MAX_METADATA: Final = 16
"""Keys a response's ``metadata`` may have (OpenAI's limit)."""
_ROLES: Final = frozenset({"user", "system", "developer", "assistant"})
BAD_REQUEST: Final = OpenAIErrorKind(400, "invalid_request_error")
SURFACE_ERRORS: Final = {
    "previous_response_not_found": OpenAIErrorKind(404, "invalid_request_error"),
    "response_in_flight": OpenAIErrorKind(409, "invalid_request_error"),
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
            _tool(t, f"$.tools[{i}]")
            for i, t in enumerate(expect(event["tools"], list, "$.tools", "a list"))
        ]
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
            {k: v for k, v in reasoning.items() if v is not None}, ("effort",), "$.reasoning"
        )
        if reasoning.get("effort") is not None:
            params["reasoning_effort"] = reasoning["effort"]
    if (text := event.get("text")) is not None and (fmt := _text_format(text)) is not None:
        params["response_format"] = fmt
    if event.get("parallel_tool_calls") not in (None, True):
        raise BadMessage(
            "`parallel_tool_calls: false` is not supported", path="$.parallel_tool_calls"
        )
    if event.get("truncation") not in (None, "disabled"):
        raise BadMessage('only `truncation: "disabled"` is supported', path="$.truncation")
    if event.get("include"):
        raise BadMessage("`include` is not supported", path="$.include")
    if event.get("user") is not None:
        expect(event["user"], str, "$.user", "a string")
    previous = event.get("previous_response_id")
    if previous is not None:
        expect(previous, str, "$.previous_response_id", "a response id (string)")
    store = event.get("store")
    if store is not None:
        expect(store, bool, "$.store", "a boolean")
    metadata = event.get("metadata")
    if metadata is not None:
        _check_metadata(metadata)
    echo = {
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
        "parallel_tool_calls": True,
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


def _tool(tool: Any, path: str) -> dict[str, Any]:
    expect(tool, dict, path, "a tool (object)")
    if tool.get("type") != "function":
        raise BadMessage(
            f"unsupported tool type {quote(tool.get('type'))}: only `function` tools",
            path=f"{path}.type",
        )
    reject_unknown(tool, ("type", "name", "description", "parameters", "strict"), path)
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


# -- events -----------------------------------------------------------------------


def error_event(
    code: str, message: str, param: str | None = None, sequence_number: int = 0
) -> bytes:
    """An ``error`` event: a request not taken (or refused before it started).

    Both shapes the SDKs read: openai-python 2.x's ``ResponseErrorEvent``
    (``code``, ``message``, ``param`` at the top) and 3.x's ``ResponseWsError``
    (an ``error`` object with OpenAI's ``type``, and the HTTP ``status``).
    """
    kind = error_kind(code) if code in ERROR_KINDS else SURFACE_ERRORS.get(code, BAD_REQUEST)
    return _encode(
        {
            "type": "error",
            "code": code,
            "message": message,
            "param": param,
            "sequence_number": sequence_number,
            "status": kind.status,
            "error": {"type": kind.type, "code": code, "message": message, "param": param},
        }
    )


def response_usage(usage: Usage | None) -> dict[str, Any] | None:
    """``usage`` in Responses' shape."""
    if usage is None:
        return None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
    reasoning = (
        usage.completion_tokens_details.reasoning_tokens
        if usage.completion_tokens_details
        else None
    )
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached or 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning or 0},
        "total_tokens": usage.total_tokens,
    }


_INCOMPLETE: Final[Mapping[str, str | None]] = {
    "length": "max_output_tokens",
    "content_filter": "content_filter",
    "cancelled": None,
}


class _Item:
    """An output item being streamed: a message, a reasoning or a function call."""

    __slots__ = ("call_id", "delta_prefix", "id", "index", "kind", "name", "parts", "status")

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.parts: list[str] = []
        self.call_id = ""
        self.name = ""
        self.delta_prefix = b""
        self.status = "in_progress"
        """``completed``, or ``incomplete`` when the response failed before it ended."""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def text_events(self) -> str:
        """The prefix of a message's or a reasoning's text events (``.delta``, ``.done``)."""
        return "response.output_text" if self.kind == "message" else "response.reasoning_text"

    def part(self, text: str) -> dict[str, Any]:
        """The content part of a message (``output_text``) or reasoning (``reasoning_text``)."""
        if self.kind == "message":
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {"type": "reasoning_text", "text": text}

    def body(self, status: str) -> dict[str, Any]:
        content = [self.part(self.text)] if status != "in_progress" else []
        if self.kind == "message":
            return {
                "id": self.id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content,
            }
        if self.kind == "reasoning":
            return {
                "id": self.id,
                "type": "reasoning",
                "summary": [],
                "content": content,
                "status": status,
            }
        return {
            "id": self.id,
            "type": "function_call",
            "status": status,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.text,
        }


class ResponseEvents:
    """One response's events, made from its generation's frames.

    ``created`` gives the opening events; ``feed`` each frame's events (a
    list of encoded JSON events); after the terminal frame, ``output`` and
    ``status`` describe the finished response.
    """

    def __init__(self, request: ResponseRequest, response_id: str, created_at: int) -> None:
        self.request = request
        self.id = response_id
        self.created_at = created_at
        self.seq = 0
        self.status = "in_progress"
        self._items: list[_Item] = []
        self._open: _Item | None = None  # the open message or reasoning item
        self._calls: dict[int, _Item] = {}
        self._suffix = response_id.removeprefix("resp_")

    def created(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``."""
        return [
            self._event("response.created", response=self.response()),
            self._event("response.in_progress", response=self.response()),
        ]

    def opening(self) -> list[bytes]:
        """``Translator.opening``: ``created``."""
        return self.created()

    def translate(self, frame: GenerationFrame) -> list[bytes]:
        """``Translator.translate``: ``feed``."""
        return self.feed(frame)

    def feed(self, frame: GenerationFrame) -> list[bytes]:
        """The events for one of the response's frames."""
        kind = type(frame)
        if kind is Token or kind is Reasoning:
            item = self._open
            wanted = "message" if kind is Token else "reasoning"
            events: list[bytes] = []
            if item is None or item.kind != wanted:
                events += self._close_open()
                item = self._open = self._add(wanted)
                events += self._opened(item)
            text: str = frame.text  # type: ignore[union-attr]
            item.parts.append(text)
            seq = str(self.seq).encode()
            self.seq += 1
            tail = b',"logprobs":[]}' if kind is Token else b"}"
            events.append(item.delta_prefix + _encode(text) + b',"sequence_number":' + seq + tail)
            return events
        if isinstance(frame, ToolCallChunk):
            events = self._close_open()
            call = self._calls.get(frame.index)
            if call is None:
                call = self._calls[frame.index] = self._open_call(frame, events)
            elif frame.name and not call.name:
                call.name = frame.name
            call.parts.append(frame.arguments)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.id,
                    output_index=call.index,
                    delta=frame.arguments,
                )
            )
            return events
        if isinstance(frame, ToolCallComplete):
            call = self._calls.pop(frame.index, None)
            events = []
            if call is None:  # complete with no fragment before it
                events = self._close_open()
                call = self._open_call(frame, events)
            call.parts = [frame.arguments]
            if frame.name:
                call.name = frame.name
            return events + self._closed(call)
        if isinstance(frame, Finish):
            events = self._close_all()
            reason = _INCOMPLETE.get(frame.reason, "")
            usage = response_usage(frame.usage)
            if reason == "":
                self.status = "completed"
                return [
                    *events,
                    self._event("response.completed", response=self.response(usage=usage)),
                ]
            self.status = "incomplete"
            details = {"reason": reason} if reason else None
            return [
                *events,
                self._event(
                    "response.incomplete",
                    response=self.response(usage=usage, incomplete_details=details),
                ),
            ]
        if isinstance(frame, Error):
            events = self._close_all("incomplete")
            self.status = "failed"
            code = (
                "rate_limit_exceeded"
                if frame.code == ErrorCode.UPSTREAM_RATE_LIMITED
                else "server_error"
            )
            error = {"code": code, "message": f"{frame.code}: {frame.message}"}
            return [*events, self._event("response.failed", response=self.response(error=error))]
        return []

    @property
    def output(self) -> list[dict[str, Any]]:
        return [item.body(item.status) for item in self._items]

    def response(self, **fields: Any) -> dict[str, Any]:
        """The response object, as it stands."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "model": self.request.model,
            "output": self.output if self.status != "in_progress" else [],
            "error": None,
            "incomplete_details": None,
            "usage": None,
            "background": False,
            **self.request.echo,
        }
        body.update(fields)
        return body

    # -- items ----------------------------------------------------------------

    def _add(self, kind: str) -> _Item:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = _Item(kind, f"{prefix}_{self._suffix}_{len(self._items)}", len(self._items))
        self._items.append(item)
        return item

    def _open_call(self, frame: ToolCallChunk | ToolCallComplete, events: list[bytes]) -> _Item:
        """A new ``function_call`` item for ``frame``'s call; its events go to ``events``."""
        call = self._add("function_call")
        call.call_id = frame.call_id or f"call_{self._suffix}_{frame.index}"
        call.name = frame.name or ""
        events += self._opened(call)
        return call

    def _opened(self, item: _Item) -> list[bytes]:
        events = [
            self._event(
                "response.output_item.added", output_index=item.index, item=item.body("in_progress")
            )
        ]
        if item.kind == "function_call":
            return events
        part = item.part("")
        events.append(
            self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=part,
            )
        )
        delta = item.text_events + ".delta"
        item.delta_prefix = (
            _encode(
                {"type": delta, "item_id": item.id, "output_index": item.index, "content_index": 0}
            )[:-1]
            + b',"delta":'
        )
        return events

    def _closed(self, item: _Item, status: str = "completed") -> list[bytes]:
        item.status = status
        text = item.text
        if item.kind == "function_call":
            return [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.index,
                    name=item.name,
                    arguments=text,
                ),
                self._event(
                    "response.output_item.done", output_index=item.index, item=item.body(status)
                ),
            ]
        logprobs: dict[str, Any] = {"logprobs": []} if item.kind == "message" else {}
        done = self._event(
            item.text_events + ".done",
            item_id=item.id,
            output_index=item.index,
            content_index=0,
            text=text,
            **logprobs,
        )
        return [
            done,
            self._event(
                "response.content_part.done",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=item.part(text),
            ),
            self._event(
                "response.output_item.done", output_index=item.index, item=item.body(status)
            ),
        ]

    def _close_open(self, status: str = "completed") -> list[bytes]:
        item, self._open = self._open, None
        return self._closed(item, status) if item is not None else []

    def _close_all(self, status: str = "completed") -> list[bytes]:
        events = self._close_open(status)
        for call in self._calls.values():
            events += self._closed(call, "incomplete")
        self._calls.clear()
        return events

    def _event(self, kind: str, **fields: Any) -> bytes:
        fields["type"] = kind
        fields["sequence_number"] = self.seq
        self.seq += 1
        return _encode(fields)
