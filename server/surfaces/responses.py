"""OpenAI's Responses API in WebSocket mode, at ``/v1/responses``.

A connection is a session (not resumable) served by a ``ResponsesLink``: a
``Link`` that reads ``response.create`` events instead of tokenwire
messages and writes ``response.*`` events instead of frames, both
translated by ``tokenwire.protocol.openai_responses``. A ``response.create``
without ``stream_id`` runs one at a time per connection, as in OpenAI's
first WebSocket mode (a second one in flight: ``response_in_flight``). With
``stream_id`` it runs on that lane: a lane's responses run FIFO (a create
waits for the one before it), lanes run in parallel (up to
``max_generations``), and every event of a laned response echoes its
``stream_id``. ``response.cancel`` (``response_id``) ends that response
with ``response.incomplete`` and leaves the others streaming. Closing the
socket cancels every response in flight and closes their upstream requests.

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
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection

from tokenwire.protocol import (
    BadMessage,
    Cancel,
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
RESPONSE_NOT_FOUND: Final = "response_not_found"
MAX_QUEUED: Final = 256
"""``response.create`` events one lane may hold waiting (past it: ``overloaded``)."""

_encode = msgspec.json.encode


class ResponseState(enum.Enum):
    """A response of a ``/v1/responses`` connection (the lane it runs on is
    busy from ADMITTING until IDLE again)::

    IDLE ──► ADMITTING ──► STREAMING ──► IDLE
                └── refused ──────────────┘
    """

    IDLE = "idle"
    """Not in flight (its lane takes the next ``response.create``)."""
    ADMITTING = "admitting"
    """Its generation is being admitted; a refusal is an ``error`` event."""
    STREAMING = "streaming"
    """Admitted: ``response.created`` went, its events follow."""


_RESPONSE_MOVES: Final[Mapping[ResponseState, frozenset[ResponseState]]] = {
    ResponseState.IDLE: frozenset({ResponseState.ADMITTING}),
    ResponseState.ADMITTING: frozenset({ResponseState.STREAMING, ResponseState.IDLE}),
    ResponseState.STREAMING: frozenset({ResponseState.IDLE}),
}


@dataclass
class _Flight:
    """A response in flight on this connection."""

    events: ResponseEvents
    turn: list[dict[str, Any]]
    """Its history and input: its conversation so far."""
    state: ResponseState = ResponseState.IDLE

    def advance(self, to: ResponseState) -> None:
        """The response's one transition function."""
        self.state = advance(_RESPONSE_MOVES, self.state, to, "response")


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
        self._flights: dict[str, _Flight] = {}
        """The responses in flight, by id."""
        self._busy: set[str | None] = set()
        """Lanes with a response in flight (None: the one without ``stream_id``)."""
        self._waiting: dict[str, deque[ResponseRequest]] = {}
        """Each busy lane's next ``response.create`` events, in order."""
        self._made: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        """The conversation after each response this connection made (the newest)."""

    async def _handle(self, data: str | bytes) -> None:
        lane: str | None = None
        try:
            with too_deep_is_bad_message():
                event = decode_json(data)
                if isinstance(event, dict):
                    named = event.get("stream_id")
                    lane = named if isinstance(named, str) else None
                    if event.get("type") == "response.cancel":
                        self._cancel(event.get("response_id"), lane)
                        return
                request = response_request(event)
        except BadMessage as exc:
            self._error(ErrorCode.BAD_MESSAGE, exc.message, exc.path, lane)
            return
        if lane not in self._busy:
            await self._start(request)
        elif lane is None:
            running = [f.events.id for f in self._flights.values() if f.events.stream_id is None]
            self._error(
                RESPONSE_IN_FLIGHT,
                f"response {(running or ['?'])[0]} is in flight: responses without a stream_id "
                "run one at a time per connection; send the next response.create after its "
                "last event, or name a lane (stream_id)",
            )
        elif len(waiting := self._waiting.setdefault(lane, deque())) >= MAX_QUEUED:
            message = f"lane {lane[:80]!r} has {MAX_QUEUED} responses waiting"
            self._error(ErrorCode.OVERLOADED, message, "stream_id", lane)
        else:
            waiting.append(request)  # FIFO within the lane

    async def _start(self, request: ResponseRequest) -> None:
        """Run ``request`` on its lane (busy until it ends, or is refused)."""
        session = self.session
        if session is None:  # the connection went before its lane's turn came
            return
        lane = request.stream_id
        self._busy.add(lane)
        try:
            with too_deep_is_bad_message():
                history = await self._history(request)
                if history is None:
                    self._next(lane)
                    return
                response_id = self._store.new_id()
                generate = response_generate(request, response_id, history)
        except BadMessage as exc:
            self._error(ErrorCode.BAD_MESSAGE, exc.message, exc.path, lane)
            self._next(lane)
            return
        conversation = [*history, *request.input]
        limit = self.context.settings.max_history_bytes
        if request.previous_response_id is not None and len(_encode(conversation)) > limit:
            self._error(
                ErrorCode.CONVERSATION_LIMIT,
                f"the conversation would be over max_history_bytes ({limit})",
                "previous_response_id",
                lane,
            )
            self._next(lane)
            return
        if self.session is not session:  # the connection went meanwhile
            return
        events = ResponseEvents(request, response_id, int(time.time()), stream_id=lane)
        flight = self._flights[response_id] = _Flight(events, conversation)
        flight.advance(ResponseState.ADMITTING)
        session.handle(generate)
        if response_id in session.generations:  # admitted (else refused: an error event went)
            flight.advance(ResponseState.STREAMING)
            self._queue(events.opening())

    def _next(self, lane: str | None) -> None:
        """``lane``'s response ended: its next waiting one starts."""
        waiting = self._waiting.get(lane) if lane is not None else None
        if not waiting:
            self._waiting.pop(lane or "", None)
            self._busy.discard(lane)
            return
        self.context.background(self._start(waiting.popleft()))

    def _cancel(self, response_id: Any, lane: str | None) -> None:
        """``response.cancel``: that response ends (``response.incomplete``)."""
        session = self.session
        flight = self._flights.get(response_id) if isinstance(response_id, str) else None
        if flight is None or session is None:
            self._error(
                RESPONSE_NOT_FOUND,
                f"no response {str(response_id)[:80]!r} in flight on this connection",
                "response_id",
                lane,
            )
            return
        session.handle(Cancel(id=flight.events.id))

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
                request.stream_id,
            )
            return None
        return [message for kept in reversed(chain) for message in kept.messages]

    def _error(
        self, code: str, message: str, param: str | None = None, lane: str | None = None
    ) -> None:
        self.context.metrics.errors.labels(code).inc()
        self._queue([error_event(code, message, param, stream_id=lane)])

    def send(self, frames: Iterable[ServerFrame]) -> None:
        """Translate the session's frames to their responses' events."""
        out: list[bytes] = []
        for frame in frames:
            if isinstance(frame, Ready):
                continue
            gid = getattr(frame, "id", None)
            flight = self._flights.get(gid) if isinstance(gid, str) else None
            if flight is None:
                if isinstance(frame, Error) and frame.id is None:
                    out.append(error_event(frame.code, frame.message))
                continue
            events = flight.events
            if flight.state is ResponseState.ADMITTING:  # refused before it started
                assert isinstance(frame, Error)
                out.append(error_event(frame.code, frame.message, stream_id=events.stream_id))
                self._ended(flight, frame)
                continue
            out += events.translate(frame)  # type: ignore[arg-type]
            if isinstance(frame, Finish | Error):
                self._ended(flight, frame)
        if out:
            self._queue(out)

    def _ended(self, flight: _Flight, frame: Finish | Error) -> None:
        events = flight.events
        started = flight.state is ResponseState.STREAMING
        flight.advance(ResponseState.IDLE)
        del self._flights[events.id]
        self._next(events.stream_id)
        if not started or not isinstance(frame, Finish):
            return
        answer = assistant_message(frame.content, frame.tool_calls)
        request = events.request
        conversation = [*flight.turn, answer]
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
