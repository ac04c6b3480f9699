"""OpenAI's Responses API in WebSocket mode, at ``/v1/responses``.

A connection is a session (not resumable) served by a ``ResponsesLink``: a
``Link`` that reads ``response.create`` events instead of tokenwire
messages and writes ``response.*`` events instead of frames, both
translated by ``tokenwire.protocol.openai_responses``. Responses run one at a
time per connection, as in OpenAI's WebSocket mode; closing the socket
cancels the one in flight and closes its upstream request.

``previous_response_id`` continues a response the server kept. Each
response is kept as the messages it added (its input and its answer) and
the id of the response it continued, so a chain costs its messages once
and any of its responses can be continued (a fork). The connection keeps
the responses it made (``store: false`` ones only there); a stored
response (``store`` true, the default) is kept for ``response_ttl`` in this
node's memory (``response_store_bytes``) or, with ``resume: redis``, in
Redis, so that another connection, on any node, continues it.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection

from tokenwire.protocol import (
    BadMessage,
    Codec,
    Error,
    ErrorCode,
    Finish,
    Ready,
    ServerFrame,
    assistant_message,
)
from tokenwire.protocol.codec import decode_json, too_deep_is_bad_message
from tokenwire.protocol.openai_responses import (
    ResponseEvents,
    ResponseRequest,
    error_event,
    response_generate,
    response_request,
)
from tokenwire.protocol.surface import Surface

from ..sessions.core import advance
from ..sessions.link import Link, written_as_is
from ..stores.contract import KeptResponse, ResponseStore

if TYPE_CHECKING:
    from ..sessions.link import LinkContext

log = structlog.get_logger("tokenwire.session")

CONNECTION_RESPONSES: Final = 64
"""Responses a connection remembers for ``previous_response_id`` (the newest)."""
PREVIOUS_NOT_FOUND: Final = "previous_response_not_found"
RESPONSE_IN_FLIGHT: Final = "response_in_flight"

_encode = msgspec.json.encode


class ResponseState(enum.Enum):
    """A ``/v1/responses`` connection's response in flight::

    IDLE ──► ADMITTING ──► STREAMING ──► IDLE
                └── refused ──────────────┘
    """

    IDLE = "idle"
    """No response in flight: a ``response.create`` is taken."""
    ADMITTING = "admitting"
    """Its generation is being admitted; a refusal is an ``error`` event."""
    STREAMING = "streaming"
    """Admitted: ``response.created`` went, its events follow."""


_RESPONSE_MOVES: Final[Mapping[ResponseState, frozenset[ResponseState]]] = {
    ResponseState.IDLE: frozenset({ResponseState.ADMITTING}),
    ResponseState.ADMITTING: frozenset({ResponseState.STREAMING, ResponseState.IDLE}),
    ResponseState.STREAMING: frozenset({ResponseState.IDLE}),
}


class ResponsesLink(Link):
    """A ``/v1/responses`` connection: ``response.create`` in, ``response.*`` events out."""

    surface = Surface.RESPONSES

    def __init__(
        self,
        context: LinkContext,
        connection: ServerConnection,
        codec: Codec,
        store: ResponseStore,
    ) -> None:
        super().__init__(context, connection, codec)
        self._encode = written_as_is  # events are encoded as they are made
        self._store = store
        self.response_state = ResponseState.IDLE
        self._events: ResponseEvents | None = None
        """The response in flight (ADMITTING or STREAMING)."""
        self._turn: list[dict[str, Any]] = []
        """The in-flight response's history and input: its conversation so far."""
        self._made: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        """The conversation after each response this connection made (the newest)."""

    async def _handle(self, data: str | bytes) -> None:
        session = self.session
        assert session is not None
        if self._events is not None:  # ADMITTING is over once session.handle returns
            self._error(
                RESPONSE_IN_FLIGHT,
                f"response {self._events.id} is in flight: responses run one at a time "
                "per connection; send the next response.create after its last event",
            )
            return
        try:
            with too_deep_is_bad_message():
                request = response_request(decode_json(data))
                history = await self._history(request)
                if history is None:
                    return
                response_id = self._store.new_id()
                generate = response_generate(request, response_id, history)
        except BadMessage as exc:
            self._error(ErrorCode.BAD_MESSAGE, exc.message, exc.path)
            return
        conversation = [*history, *request.input]
        limit = self.context.settings.max_history_bytes
        if request.previous_response_id is not None and len(_encode(conversation)) > limit:
            self._error(
                ErrorCode.CONVERSATION_LIMIT,
                f"the conversation would be over max_history_bytes ({limit})",
                "previous_response_id",
            )
            return
        events = ResponseEvents(request, response_id, int(time.time()))
        self._events, self._turn = events, conversation
        self._advance_response(ResponseState.ADMITTING)
        session.handle(generate)
        if response_id in session.generations:  # admitted (else refused: an error event went)
            self._advance_response(ResponseState.STREAMING)
            self._queue(events.opening())

    def _advance_response(self, to: ResponseState) -> None:
        """The in-flight response's one transition function."""
        self.response_state = advance(_RESPONSE_MOVES, self.response_state, to, "response")
        if to is ResponseState.IDLE:
            self._events = None

    async def _history(self, request: ResponseRequest) -> list[dict[str, Any]] | None:
        """The conversation ``previous_response_id`` names (None: an error event went)."""
        previous = request.previous_response_id
        if previous is None:
            return []
        if (made := self._made.get(previous)) is not None:
            return made
        session = self.session
        assert session is not None
        chain = await self._store.chain(previous)
        if chain is None or any(kept.key != session.key_hash for kept in chain):
            self._error(
                PREVIOUS_NOT_FOUND,
                f"no response {previous[:80]!r} to continue: unknown, expired, or made "
                "with store false on another connection",
                "previous_response_id",
            )
            return None
        return [message for kept in reversed(chain) for message in kept.messages]

    def _error(self, code: str, message: str, param: str | None = None) -> None:
        self.context.metrics.errors.labels(code).inc()
        self._queue([error_event(code, message, param)])

    def send(self, frames: Iterable[ServerFrame]) -> None:
        """Translate the session's frames to the in-flight response's events."""
        out: list[bytes] = []
        for frame in frames:
            if isinstance(frame, Ready):
                continue
            events = self._events
            if events is None or getattr(frame, "id", None) != events.id:
                if isinstance(frame, Error) and frame.id is None:
                    out.append(error_event(frame.code, frame.message))
                continue
            if self.response_state is ResponseState.ADMITTING:  # refused before it started
                assert isinstance(frame, Error)
                out.append(error_event(frame.code, frame.message))
                self._advance_response(ResponseState.IDLE)
                continue
            out += events.translate(frame)  # type: ignore[arg-type]
            if isinstance(frame, Finish | Error):
                self._ended(events, frame)
        if out:
            self._queue(out)

    def _ended(self, events: ResponseEvents, frame: Finish | Error) -> None:
        self._advance_response(ResponseState.IDLE)
        if not isinstance(frame, Finish):
            return
        answer = assistant_message(frame.content, frame.tool_calls)
        request = events.request
        conversation = [*self._turn, answer]
        self._made[events.id] = conversation
        while len(self._made) > CONNECTION_RESPONSES:
            self._made.popitem(last=False)
        if request.store and self.session is not None:
            kept = KeptResponse(
                key=self.session.key_hash,
                previous=request.previous_response_id,
                messages=[*request.input, answer],
            )
            self.context.background(self._store.put(events.id, kept))
