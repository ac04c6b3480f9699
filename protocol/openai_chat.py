"""OpenAI Chat Completions as a translation of the tokenwire protocol.

``chat_request`` turns a ``POST /v1/chat/completions`` body into a
``Generate`` (refusing, by name, every field tokenwire does not support);
``ChatChunks`` turns the generation's frames into the SSE stream OpenAI's
SDKs read (``stream: true``), and ``ChatCompletion`` into the one JSON body
of ``stream: false``.

The frames' text goes out as it came: one ``chat.completion.chunk`` per
``token`` (or merged ``token``, when the client reads slower than the model
writes). A chunk is a fixed prefix, the JSON-encoded text and a fixed suffix,
so a token costs one string encode.

Pure code: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec

from .codec import split_path
from .errors import BadMessage
from .messages import (
    Error,
    Finish,
    Generate,
    GenerationFrame,
    Params,
    Reasoning,
    Token,
    ToolCallChunk,
    Usage,
    assistant_message,
)
from .openai_common import error_body, error_kind, expect, reject_unknown
from .surface import SurfaceRequest, Translator
from .validation import check_generate

PARAMS: Final = Params.__struct_fields__
"""Request fields passed to the provider as sampling parameters."""
SUPPORTED: Final = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "max_completion_tokens",
        *PARAMS,
    }
)
"""Every request field tokenwire takes; any other is refused by name."""
NO_OP: Final[Mapping[str, tuple[Any, ...]]] = {
    "logprobs": (False, None),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "parallel_tool_calls": (True, None),
    "store": (False, None),
    "metadata": (None, {}),
    "service_tier": (None, "auto"),
}
"""Fields some clients send with the API's default value: they ask for
nothing tokenwire does not do, so they pass (any other value is refused)."""

_encode = msgspec.json.encode


class ChatRequest(NamedTuple):
    generate: Generate
    stream: bool
    include_usage: bool


def chat_request(body: Any, completion_id: str) -> ChatRequest:
    """The ``Generate`` a Chat Completions request asks for, named ``completion_id``.

    Raises ``BadMessage`` (with the field's path) for a malformed or
    unsupported request.
    """
    expect(body, dict, "$", "a JSON object")
    reject_unknown(body, SUPPORTED, defaults=NO_OP)
    stream = body.get("stream")
    if stream is not None:
        expect(stream, bool, "$.stream", "a boolean")
    include_usage = False
    if (options := body.get("stream_options")) is not None:
        expect(options, dict, "$.stream_options", "an object")
        reject_unknown(options, ("include_usage",), "$.stream_options")
        include_usage = bool(
            expect(
                options.get("include_usage", False),
                bool,
                "$.stream_options.include_usage",
                "a boolean",
            )
        )
    if body.get("n") not in (None, 1):
        raise BadMessage("only `n: 1` is supported (one choice per request)", path="$.n")
    params = {k: body[k] for k in PARAMS if body.get(k) is not None}
    if (limit := body.get("max_completion_tokens")) is not None:
        if "max_tokens" in params:
            raise BadMessage(
                "give `max_tokens` or `max_completion_tokens`, not both",
                path="$.max_completion_tokens",
            )
        params["max_tokens"] = limit
    fields: dict[str, Any] = {
        "type": "generate",
        "id": completion_id,
        "model": body.get("model"),
        "messages": body.get("messages"),
    }
    for name in ("tools", "tool_choice"):
        if body.get(name) is not None:
            fields[name] = body[name]
    if params:
        fields["params"] = params
    generate = to_generate(fields)
    check_generate(generate, from_json=True)
    return ChatRequest(generate, bool(stream), include_usage)


def chat_surface(body: Any, completion_id: str, created: int) -> SurfaceRequest:
    """The surface contract's parser for ``POST /v1/chat/completions``: the
    ``Generate`` and its translator (``ChatChunks`` to stream, else
    ``ChatCompletion``). Raises ``BadMessage`` as ``chat_request`` does."""
    chat = chat_request(body, completion_id)
    model = chat.generate.model
    translator: Translator
    if chat.stream:
        translator = ChatChunks(completion_id, model, created, include_usage=chat.include_usage)
    else:
        translator = ChatCompletion(completion_id, model, created)
    return SurfaceRequest(chat.generate, translator, chat.stream)


def to_generate(fields: dict[str, Any]) -> Generate:
    """``fields`` as a ``Generate``, its types checked (``BadMessage`` with the path)."""
    try:
        return msgspec.convert(fields, Generate)
    except msgspec.ValidationError as exc:
        message, path = split_path(exc)
        if path is not None and path.startswith("$.params."):
            path = "$." + path[len("$.params.") :]  # the request's own field
        raise BadMessage(message, path=path) from None


def usage_dict(usage: Usage) -> dict[str, Any]:
    """``usage`` in Chat Completions' shape."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    details = usage.prompt_tokens_details
    if details is not None and details.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": details.cached_tokens}
    completion = usage.completion_tokens_details
    if completion is not None and completion.reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": completion.reasoning_tokens}
    return out


def finish_reason(reason: str) -> str:
    """tokenwire's finish reason as OpenAI's (a cancel reads as ``stop``)."""
    return "stop" if reason == "cancelled" else reason


def frame_error_body(frame: Error) -> dict[str, Any]:
    """An ``error`` frame as OpenAI's error body."""
    return error_body(frame.message, error_kind(frame.code), frame.code)


class ChatChunks:
    """A generation's frames as Chat Completions SSE (``data: {...}\\n\\n`` each)."""

    __slots__ = ("_head", "_include_usage", "_role", "_suffix", "_text_prefix")

    def __init__(
        self, completion_id: str, model: str, created: int, *, include_usage: bool = False
    ) -> None:
        head = _encode(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
        )[:-1]
        self._head = b"data: " + head + b',"choices":[{"index":0,"delta":'
        self._text_prefix = self._head + b'{"content":'
        self._suffix = b',"finish_reason":null}]}\n\n'
        self._include_usage = include_usage
        self._role = True

    def opening(self) -> list[bytes]:
        return []

    def translate(self, frame: GenerationFrame) -> list[bytes]:
        """``Translator.translate``: the SSE event for ``frame``, if it says anything."""
        data = self.feed(frame)
        return [data] if data else []

    def feed(self, frame: GenerationFrame) -> bytes:
        """The SSE bytes for ``frame`` (empty for a frame with nothing to say)."""
        if type(frame) is Token:
            if self._role:
                return self._delta({"content": frame.text})
            return self._text_prefix + _encode(frame.text) + b"}" + self._suffix
        if isinstance(frame, Reasoning):
            return self._delta({"reasoning_content": frame.text})
        if isinstance(frame, ToolCallChunk):
            call: dict[str, Any] = {"index": frame.index}
            function: dict[str, Any] = {"arguments": frame.arguments}
            if frame.call_id is not None:
                call["id"] = frame.call_id
                call["type"] = "function"
            if frame.name is not None:
                function["name"] = frame.name
            call["function"] = function
            return self._delta({"tool_calls": [call]})
        if isinstance(frame, Finish):
            out = self._head + b'{},"finish_reason":'
            out += _encode(finish_reason(frame.reason)) + b"}]}\n\n"
            if self._include_usage and frame.usage is not None:
                usage = _encode(usage_dict(frame.usage))
                out += self._head[: -len(b'{"index":0,"delta":')] + b'],"usage":' + usage + b"}\n\n"
            return out + b"data: [DONE]\n\n"
        if isinstance(frame, Error):
            return b"data: " + _encode(frame_error_body(frame)) + b"\n\n"
        return b""  # tool_call_complete: the fragments said it all

    def _delta(self, delta: dict[str, Any]) -> bytes:
        if self._role:
            self._role = False
            delta = {"role": "assistant", **delta}
        return self._head + _encode(delta) + self._suffix


class ChatCompletion:
    """A generation's frames as the one ``chat.completion`` body of ``stream: false``."""

    def __init__(self, completion_id: str, model: str, created: int) -> None:
        self.id = completion_id
        self.model = model
        self.created = created
        self._reasoning: list[str] = []

    def opening(self) -> list[bytes]:
        return []

    def translate(self, frame: GenerationFrame) -> list[bytes]:
        """``Translator.translate``: nothing until the ``finish`` frame, then the body."""
        if isinstance(frame, Finish):
            return [_encode(self.body(frame))]
        self.feed(frame)
        return []

    def feed(self, frame: GenerationFrame) -> None:
        if isinstance(frame, Reasoning):
            self._reasoning.append(frame.text)

    def body(self, finish: Finish) -> dict[str, Any]:
        message = assistant_message(finish.content, finish.tool_calls, "".join(self._reasoning))
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason(finish.reason),
                    "logprobs": None,
                }
            ],
        }
        if finish.usage is not None:
            body["usage"] = usage_dict(finish.usage)
        return body
