"""OpenAI's Responses API (WebSocket mode) as a translation of the tokenwire protocol.

``response_request`` (``openai_responses_request.py``) reads a
``response.create`` event: its input items become chat messages, its
function tools chat tools, and every field tokenwire cannot honour is
refused by name. ``ResponseEvents`` turns one
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
from .openai_common import ERROR_KINDS, error_kind
from .openai_responses_items import OutputItem
from .openai_responses_request import (
    BAD_REQUEST,
    SUPPORTED,
    SURFACE_ERRORS,
    ResponseRequest,
    input_messages,
    response_generate,
    response_request,
)

__all__ = [
    "SUPPORTED",
    "ResponseEvents",
    "ResponseRequest",
    "error_event",
    "input_messages",
    "response_generate",
    "response_request",
    "response_usage",
]

_encode = msgspec.json.encode

# -- events -----------------------------------------------------------------------


def error_event(
    code: str,
    message: str,
    param: str | None = None,
    sequence_number: int = 0,
    stream_id: str | None = None,
) -> bytes:
    """An ``error`` event: a request not taken (or refused before it started).

    Both shapes the SDKs read: openai-python 2.x's ``ResponseErrorEvent``
    (``code``, ``message``, ``param`` at the top) and 3.x's ``ResponseWsError``
    (an ``error`` object with OpenAI's ``type``, and the HTTP ``status``);
    with the lane's ``stream_id`` when the request named one.
    """
    kind = error_kind(code) if code in ERROR_KINDS else SURFACE_ERRORS.get(code, BAD_REQUEST)
    event: dict[str, Any] = {
        "type": "error",
        "code": code,
        "message": message,
        "param": param,
        "sequence_number": sequence_number,
        "status": kind.status,
        "error": {"type": kind.type, "code": code, "message": message, "param": param},
    }
    if stream_id is not None:
        event["stream_id"] = stream_id
    return _encode(event)


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


class ResponseEvents:
    """One response's events, made from its generation's frames.

    ``created`` gives the opening events; ``feed`` each frame's events (a
    list of encoded JSON events); after the terminal frame, ``output`` and
    ``status`` describe the finished response.
    """

    def __init__(
        self,
        request: ResponseRequest,
        response_id: str,
        created_at: int,
        *,
        sse: bool = False,
        stream: bool = True,
        stream_id: str | None = None,
        background: bool = False,
    ) -> None:
        self.request = request
        self.background = background
        """A background response: a cancel makes it ``cancelled``."""
        self.stream_id = stream_id
        """The WebSocket lane the response runs on: every event echoes it."""
        self._lane = b"" if stream_id is None else b',"stream_id":' + _encode(stream_id)
        self.id = response_id
        self.created_at = created_at
        self.sse = sse
        """Each event as SSE (``event: TYPE`` and ``data: JSON``: ``POST
        /v1/responses``), else one JSON message each (WebSocket mode)."""
        self.stream = stream
        """False: no events, the finished response as one JSON body
        (``translate`` gives it with the terminal frame)."""
        self.seq = 0
        self.status = "in_progress"
        self._items: list[OutputItem] = []
        self._open: OutputItem | None = None  # the open message or reasoning item
        self._calls: dict[int, OutputItem] = {}
        self._suffix = response_id.removeprefix("resp_")
        self.ended: dict[str, Any] = {}
        """The finished response's fields beside its output (usage, error...)."""

    def created(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``."""
        return [
            self._event("response.created", response=self.response()),
            self._event("response.in_progress", response=self.response()),
        ]

    def opening(self) -> list[bytes]:
        """``Translator.opening``: ``created`` (nothing for one JSON body)."""
        return self.created() if self.stream else []

    def translate(self, frame: GenerationFrame) -> list[bytes]:
        """``Translator.translate``: ``feed`` (for one JSON body: nothing,
        then the finished response with the terminal frame)."""
        events = self.feed(frame)
        if self.stream:
            return events
        if isinstance(frame, Finish | Error):
            return [_encode(self.response(**self.ended))]
        return []

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
            tail = (b',"logprobs":[]' if kind is Token else b"") + self._lane + b"}"
            event = item.delta_prefix + _encode(text) + b',"sequence_number":' + seq + tail
            events.append(item.delta_sse + event + b"\n\n" if self.sse else event)
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
            self.ended = {"usage": usage}
            if reason == "":
                self.status = "completed"
                return [
                    *events,
                    self._event("response.completed", response=self.response(usage=usage)),
                ]
            self.status = "cancelled" if self.background and reason is None else "incomplete"
            details = {"reason": reason} if reason else None
            self.ended["incomplete_details"] = details
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
            self.ended = {"error": error}
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
            "background": self.background,
            **self.request.echo,
        }
        body.update(fields)
        return body

    # -- items ----------------------------------------------------------------

    def _add(self, kind: str) -> OutputItem:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = OutputItem(kind, f"{prefix}_{self._suffix}_{len(self._items)}", len(self._items))
        self._items.append(item)
        return item

    def _open_call(
        self, frame: ToolCallChunk | ToolCallComplete, events: list[bytes]
    ) -> OutputItem:
        """A new ``function_call`` item for ``frame``'s call; its events go to ``events``."""
        call = self._add("function_call")
        call.call_id = frame.call_id or f"call_{self._suffix}_{frame.index}"
        call.name = frame.name or ""
        events += self._opened(call)
        return call

    def _opened(self, item: OutputItem) -> list[bytes]:
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
        item.delta_sse = b"event: " + delta.encode() + b"\ndata: "
        item.delta_prefix = (
            _encode(
                {"type": delta, "item_id": item.id, "output_index": item.index, "content_index": 0}
            )[:-1]
            + b',"delta":'
        )
        return events

    def _closed(self, item: OutputItem, status: str = "completed") -> list[bytes]:
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
        if self.stream_id is not None:
            fields["stream_id"] = self.stream_id
        self.seq += 1
        if self.sse:
            return b"event: " + kind.encode() + b"\ndata: " + _encode(fields) + b"\n\n"
        return _encode(fields)
