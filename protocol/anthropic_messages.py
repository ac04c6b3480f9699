"""Anthropic's Messages API (``POST /v1/messages``): a generation's frames as
its events (a surface: ``tokenwire.protocol.surface``).

Streamed, every event is SSE with its ``event:`` line (the SDKs drop an
event without one): ``message_start``; per content block
``content_block_start``, ``content_block_delta`` (``text_delta``,
``thinking_delta``, ``input_json_delta``), ``content_block_stop``;
``message_delta`` (``stop_reason``: ``end_turn``, ``max_tokens``,
``tool_use``, ``refusal``; the usage, ``input_tokens`` included); and
``message_stop``. A failure after the stream began is an ``error`` event.
Not streamed, the finished ``message`` object.

Blocks follow one another, as Anthropic's do: a tool call whose fragments
arrive while another block is open waits and goes out whole after it, so
no block is reopened and no ``input_json_delta`` is empty. Reasoning from
a provider is a ``thinking`` block whose ``signature`` is empty.
The request side is ``anthropic_request``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from .errors import ErrorCode
from .messages import (
    Error,
    Finish,
    GenerationFrame,
    Reasoning,
    Token,
    ToolCallChunk,
    ToolCallComplete,
    Usage,
)

STOP_REASONS: Final[Mapping[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
"""tokenwire's finish reasons as Anthropic's ``stop_reason`` (else ``end_turn``)."""
ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
"""Anthropic's error ``type`` by HTTP status (another 5xx: ``api_error``)."""
IN_STREAM_ERRORS: Final[Mapping[str, str]] = {
    ErrorCode.UPSTREAM_RATE_LIMITED: "rate_limit_error",
    ErrorCode.OVERLOADED: "overloaded_error",
    ErrorCode.SHUTTING_DOWN: "overloaded_error",
    ErrorCode.UPSTREAM_TIMEOUT: "timeout_error",
    ErrorCode.UPSTREAM_REJECTED: "invalid_request_error",
}
"""An ``error`` frame's code as an in-stream error event's type (else ``api_error``)."""
PING: Final = b'event: ping\ndata: {"type":"ping"}\n\n'
"""What a silent stream gets every ``sse_keepalive`` seconds."""

_encode = msgspec.json.encode


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body for an HTTP error."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def usage_of(usage: Usage | None) -> dict[str, Any]:
    """tokenwire's usage as Anthropic's (``cache_read_input_tokens`` where known)."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    out: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
    }
    details = usage.prompt_tokens_details
    if details is not None and details.cached_tokens is not None:
        out["cache_read_input_tokens"] = details.cached_tokens
        out["input_tokens"] = max(0, usage.prompt_tokens - details.cached_tokens)
    return out


class _Call:
    """A tool call, until its block went out."""

    __slots__ = ("arguments", "call_id", "done", "name")

    def __init__(self, call_id: str, name: str) -> None:
        self.call_id = call_id
        self.name = name
        self.arguments: list[str] = []
        self.done = False


class MessageEvents:
    """One message's events (a ``Translator``)."""

    keepalive = PING

    def __init__(self, message_id: str, model: str, *, stream: bool = True) -> None:
        self.id = message_id
        self.model = model
        self.stream = stream
        self.blocks: list[dict[str, Any]] = []
        """The message's content blocks so far (for the whole message)."""
        self._open: str | None = None
        """The kind of the block open now: text, thinking, or tool_use."""
        self._open_call: int | None = None
        self._calls: dict[int, _Call] = {}
        """Tool calls whose block has not ended, by index."""

    # -- Translator ---------------------------------------------------------------------

    def opening(self) -> list[bytes]:
        if not self.stream:
            return []
        message = self.message(None, {"input_tokens": 0, "output_tokens": 0})
        return [_event("message_start", message=message)]

    def translate(self, frame: GenerationFrame) -> list[bytes]:
        events = self.feed(frame)
        if self.stream:
            return events
        if isinstance(frame, Finish):
            stop = STOP_REASONS.get(frame.reason, "end_turn")
            return [_encode(self.message(stop, usage_of(frame.usage)))]
        return []

    # -- events -------------------------------------------------------------------------

    def feed(self, frame: GenerationFrame) -> list[bytes]:
        """The events of one frame (and the blocks they add)."""
        events: list[bytes] = []
        if isinstance(frame, Token | Reasoning):
            kind = "text" if isinstance(frame, Token) else "thinking"
            if self._open != kind:
                events += self._close()
                block = {"type": kind, kind: ""}
                if kind == "thinking":
                    block["signature"] = ""  # a provider's reasoning carries none
                events += self._start(block)
            self.blocks[-1][kind] += frame.text
            delta = {"type": f"{kind}_delta", kind: frame.text}
            events.append(_event("content_block_delta", index=len(self.blocks) - 1, delta=delta))
        elif isinstance(frame, ToolCallChunk | ToolCallComplete):
            events += self._call(frame)
        elif isinstance(frame, Finish):
            events += self._close()
            while self._calls:  # calls that waited for another block
                events += self._whole(min(self._calls))
            stop = STOP_REASONS.get(frame.reason, "end_turn")
            usage = usage_of(frame.usage)
            ended = {"stop_reason": stop, "stop_sequence": None}
            events.append(_event("message_delta", delta=ended, usage=usage))
            events.append(_event("message_stop"))
        elif isinstance(frame, Error):
            kind = IN_STREAM_ERRORS.get(frame.code, "api_error")
            events.append(_event("error", error={"type": kind, "message": frame.message}))
        return events if self.stream else []

    def _call(self, frame: ToolCallChunk | ToolCallComplete) -> list[bytes]:
        index = frame.index
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _Call(frame.call_id or f"toolu_{index}", frame.name or "")
        elif frame.name and not call.name:
            call.name = frame.name
        if isinstance(frame, ToolCallComplete):
            call.arguments = [frame.arguments]
            call.done = True
        elif frame.arguments:
            call.arguments.append(frame.arguments)
        events: list[bytes] = []
        if self._open_call == index:  # its block is open: the fragment goes out
            if isinstance(frame, ToolCallChunk) and frame.arguments:
                events.append(self._json(frame.arguments))
            if call.done:
                events += self._close()
            return events
        if self._open is None or self._open != "tool_use":  # no call open: this one opens
            events += self._close()
            if index not in self._calls or self._open_call is not None:
                return events  # the close sent it whole (it was done), or another
            events += self._start_call(index, call)
            if call.done:
                events += self._close()
        return events  # another call's block is open: this one waits

    def _start_call(self, index: int, call: _Call) -> list[bytes]:
        block = {"type": "tool_use", "id": call.call_id, "name": call.name, "input": {}}
        events = self._start(block)
        self._open_call = index
        if arguments := "".join(call.arguments):
            events.append(self._json(arguments))
        return events

    def _whole(self, index: int) -> list[bytes]:
        """A call that waited: its block, whole."""
        call = self._calls[index]
        return [*self._start_call(index, call), *self._close()]

    def _json(self, fragment: str) -> bytes:
        delta = {"type": "input_json_delta", "partial_json": fragment}
        return _event("content_block_delta", index=len(self.blocks) - 1, delta=delta)

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        self.blocks.append(block)
        self._open = block["type"]
        content = {**block, "input": {}} if block["type"] == "tool_use" else block
        return [_event("content_block_start", index=len(self.blocks) - 1, content_block=content)]

    def _close(self) -> list[bytes]:
        """End the open block (a tool call's input is parsed, as the SDK does)."""
        if self._open is None:
            return []
        if self._open_call is not None:
            call = self._calls.pop(self._open_call)
            self.blocks[-1]["input"] = _parsed("".join(call.arguments))
            self._open_call = None
        self._open = None
        events = [_event("content_block_stop", index=len(self.blocks) - 1)]
        waiting = [index for index, call in sorted(self._calls.items()) if call.done]
        if waiting:  # a finished call that waited (its own end sends the next)
            events += self._whole(waiting[0])
        return events

    def message(self, stop_reason: str | None, usage: dict[str, Any]) -> dict[str, Any]:
        """The message object (``message_start``'s, or the whole answer)."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks if stop_reason is not None else [],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }


def _parsed(arguments: str) -> Any:
    """A tool call's arguments as its ``input`` (an object; ``{}`` if not JSON)."""
    try:
        value = msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _event(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode({"type": kind, **fields}) + b"\n\n"
