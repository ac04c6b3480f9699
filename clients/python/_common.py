"""What the async and the sync client share: options, message building, and
the routing of received frames to generations. No I/O here."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final, Literal, TypeAlias

import msgspec
import websockets

from tokenwire.protocol import (
    TERMINAL_FRAMES,
    BadMessage,
    Codec,
    Encoding,
    Error,
    ErrorCode,
    Finish,
    Generate,
    GenerationFrame,
    Limits,
    Params,
    ProtocolViolation,
    Ready,
    Reasoning,
    ResetDone,
    Result,
    ResultBuilder,
    Resume,
    Resumed,
    ResumeFailed,
    ServerFrame,
    Token,
    ToolCallChunk,
    ToolCallComplete,
)

from .errors import ConnectionLost, GenerationError, ServerProtocolError

OPEN_TIMEOUT: Final = 10.0
"""Seconds a connection (handshake and ``ready``) may take."""
MAX_FRAME_BYTES: Final = 64 * 2**20
"""Largest frame the client takes: ``finish`` repeats the whole answer."""
RECONNECT_TIMEOUT: Final = 30.0
"""Seconds ``reconnect=True`` keeps trying before ``ConnectionLost``."""
RECONNECT_ERRORS: Final = (
    OSError,
    TimeoutError,
    websockets.InvalidHandshake,
    websockets.ConnectionClosed,
)
"""What a failed reconnection attempt raises; the next attempt follows."""
NO_RESUME_CODES: Final = frozenset({1002, 4008, 4009})
"""Close codes after which a session is not resumed: a protocol error, a
reader closed for being slow (its session ended), and the session resumed on
another connection."""
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 5.0

EncodingName: TypeAlias = Literal["json", "msgpack"]
StreamEvent: TypeAlias = Token | Reasoning | ToolCallChunk | ToolCallComplete
"""What iterating a generation yields; ``finish`` ends the iteration."""
Message: TypeAlias = Mapping[str, Any]


def codec_for(encoding: EncodingName | Encoding) -> Codec:
    return Codec(Encoding(encoding))


def handshake_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def backoff_delays() -> Any:
    """Exponential backoff with full jitter: 0.1 s, 0.2 s, ... up to 5 s."""
    delay = BACKOFF_FIRST
    while True:
        yield delay * (0.5 + secrets.randbelow(1000) / 1000)
        delay = min(delay * 2, BACKOFF_MAX)


def new_id() -> str:
    return "g-" + base64.urlsafe_b64encode(secrets.token_bytes(9)).decode()


def generate_message(
    *,
    id: str,
    model: str,
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    params: Params | Mapping[str, Any] | None,
    conversation: str | None,
) -> Generate:
    """A checked ``generate`` message; raises ``ValueError`` naming a bad field."""
    raw: dict[str, Any] = {"type": "generate", "id": id, "model": model, "messages": list(messages)}
    if tools is not None:
        raw["tools"] = list(tools)
    if tool_choice is not None:
        raw["tool_choice"] = tool_choice
    if params is not None:
        raw["params"] = msgspec.to_builtins(params) if isinstance(params, Params) else dict(params)
    if conversation is not None:
        raw["conversation"] = conversation
    try:
        return msgspec.convert(raw, Generate)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid generate: {exc}") from None


class ClientCore:
    """What the async and the sync client do alike, with no I/O: the
    connection's settings, what ``ready`` said, the table of generations in
    flight (guarded by ``_guard``: a lock for the sync client's threads, none
    for the asyncio one), frames routed to their generation, and the
    server's answers to a ``resume``. Each client adds its sockets, its
    reader (a task or a thread), and ``_send_again``."""

    _generations: dict[str, Any]
    """The generations in flight, by id (``AsyncGeneration`` or ``Generation``)."""
    _guard: AbstractContextManager[Any]
    _resuming: frozenset[str] = frozenset()
    """The generations the last ``resume`` listed (those in flight at the drop)."""
    _unsent: tuple[Generate, ...] = ()
    """Generations the resumed session never had: their ``generate`` was lost
    with the dropped connection. They are sent again once the session is back."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        encoding: EncodingName = "json",
        reconnect: bool = False,
        open_timeout: float = OPEN_TIMEOUT,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.url = url
        self.encoding = Encoding(encoding)
        self.reconnect = reconnect
        self._api_key = api_key
        self._codec = codec_for(self.encoding)
        self._open_timeout = open_timeout
        self._reconnect_timeout = reconnect_timeout
        self._max_frame_bytes = max_frame_bytes
        self._ready: Ready | None = None
        self._generations = {}
        self._closed = False
        self._token: str | None = None
        """The session's resume token (None: the server offers no resume)."""
        self._session: str | None = None
        self.resumes = 0
        """Connections resumed after a drop."""
        self.stray_frames = 0
        """Frames for a generation that is not active here: each breaks invariant 1."""
        self._setup()

    def _setup(self) -> None:
        """The client's own state: its connection, reader, locks (each client's)."""
        raise NotImplementedError

    # -- what the ready frame said ------------------------------------------

    @property
    def models(self) -> list[str]:
        """The models the server offers (from its ``ready`` frame)."""
        return list(self._ready.models) if self._ready else []

    @property
    def session(self) -> str | None:
        """The session's id (it stays the same across resumes)."""
        return self._session

    @property
    def limits(self) -> Limits | None:
        return self._ready.limits if self._ready else None

    # -- the generations in flight ----------------------------------------------

    def _forget(self, generation_id: str) -> Any:
        """Remove the generation from the table; it, or None."""
        with self._guard:
            return self._generations.pop(generation_id, None)

    def _core(self, generation_id: str) -> GenerationCore | None:
        """The generation's received state, if it is in the table."""
        with self._guard:
            generation = self._generations.get(generation_id)
        return generation._core if generation is not None else None

    def _lose_all(self, lost: ConnectionLost) -> None:
        with self._guard:
            generations = list(self._generations.values())
            self._generations.clear()
        for generation in generations:
            generation._lose(lost)

    def _route(self, frame: GenerationFrame) -> None:
        gid = frame.id
        with self._guard:
            generation = self._generations.get(gid) if gid is not None else None
        if generation is None:
            self.stray_frames += 1  # after its terminal frame, or never started here
            return
        generation._take(frame)
        if generation.done:
            with self._guard:
                self._generations.pop(generation.id, None)

    def _greeted(self, ready: Ready) -> bytes | None:
        """The server's ``ready`` on a new connection: the ``resume`` to send
        first when a session is being resumed (each generation in flight from
        the frame after the last one it got), else None (a new session). The
        caller holds the guard (the sync client opens connections under it)."""
        self._ready = ready
        if self._token is None:
            self._token, self._session = ready.resume_token, ready.session
            return None
        positions = {gid: g._core.builder.next_seq - 1 for gid, g in self._generations.items()}
        self._resuming = frozenset(positions)
        return self._codec.encode(Resume(token=self._token, generations=positions))

    def _take(self, frame: ServerFrame | None) -> list[str] | None:
        """A frame the reader got: routed to its generation, or taken as a
        resume's answer; a ``reset_done``'s ids are returned (its caller waits)."""
        match frame:
            case ResetDone(cancelled=ids):
                return ids
            case Resumed() | ResumeFailed():
                self._resume_answer(frame)
            case None | Ready() | Error(id=None):
                # A frame type from a later version, or an error about a
                # message the server could not take (this client checks its
                # messages before sending them).
                pass
            case _:
                self._route(frame)
        return None

    def _resumes_after(self, lost: ConnectionLost) -> bool:
        """Whether the session is resumed after the connection ended with ``lost``."""
        resumable = lost.code not in NO_RESUME_CODES and type(lost) is ConnectionLost
        return self.reconnect and not self._closed and self._token is not None and resumable

    def _add(self, generation: Any) -> None:
        """Put a new generation in the table (``duplicate_id`` if its id is in flight)."""
        with self._guard:
            if generation.id in self._generations:
                raise GenerationError.local(
                    ErrorCode.DUPLICATE_ID, f"generation {generation.id!r} is active", generation.id
                )
            self._generations[generation.id] = generation

    def _send_again(self, requests: Sequence[Generate]) -> None:
        """Send these ``generate`` messages on the current connection (each client's)."""
        raise NotImplementedError

    def _resume_answer(self, frame: Resumed | ResumeFailed) -> None:
        if isinstance(frame, Resumed):
            self.resumes += frame.id is None
            if frame.id is None:
                self._resuming = frozenset()
                unsent, self._unsent = self._unsent, ()
                if unsent:
                    self._send_again(unsent)
        elif frame.id is None:  # the session is gone: this connection's is the new one
            # The generations in flight at the drop are lost; those started
            # since went to the new session, and go on there.
            lost = ConnectionLost(
                f"the session could not be resumed ({frame.reason})", resume_failure=frame.reason
            )
            resuming, self._resuming, self._unsent = self._resuming, frozenset(), ()
            for gid in resuming:
                if (generation := self._forget(gid)) is not None:
                    generation._lose(lost)
            assert self._ready is not None
            self._token, self._session = self._ready.resume_token, self._ready.session
        elif (
            frame.reason == "unknown"
            and (core := self._core(frame.id)) is not None
            and core.request is not None
            and core.builder.next_seq == 0
        ):
            # Nothing of it came, and the session never had it: the server
            # never read its generate (it was on its way when the connection
            # dropped). Sending it again repeats nothing.
            self._unsent = (*self._unsent, core.request)
        elif (generation := self._forget(frame.id)) is not None:
            generation._lose(
                ConnectionLost(
                    f"{frame.id} could not be resumed ({frame.reason})",
                    resume_failure=frame.reason,
                )
            )


class GenerationView:
    """What the async and the sync generation show alike, read from their core."""

    _core: GenerationCore

    @property
    def id(self) -> str:
        return self._core.id

    @property
    def model(self) -> str:
        return self._core.model

    @property
    def text(self) -> str:
        """The answer's text received so far."""
        return self._core.text

    @property
    def done(self) -> bool:
        return self._core.done


class GenerationCore:
    """One generation's received state: frames checked and built into a result."""

    def __init__(self, generation_id: str, model: str, request: Generate | None = None) -> None:
        self.id = generation_id
        self.model = model
        self.request = request
        """The ``generate`` that started it (sent again if the server never read it)."""
        self.builder = ResultBuilder(generation_id, model=model)
        self.outcome: Result | BaseException | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def text(self) -> str:
        """The answer's text received so far."""
        return self.builder.text

    def take(self, frame: GenerationFrame) -> StreamEvent | BaseException | None:
        """Take a frame; return what iterating the generation should see next.

        A stream event for the iterator; ``None`` after ``finish`` (iteration
        ends); an exception after ``error`` or a broken invariant.
        """
        try:
            self.builder.add(frame)
        except ProtocolViolation as exc:
            self.outcome = exc
            return exc
        if isinstance(frame, TERMINAL_FRAMES):
            result = self.builder.result()
            if isinstance(frame, Error):
                self.outcome = GenerationError.from_frame(frame)
                return self.outcome
            self.outcome = result
            return None
        assert not isinstance(frame, Finish)
        return frame

    def lose(self, exc: ConnectionLost) -> bool:
        """End with ``exc`` if still pending; whether it was."""
        if self.outcome is not None:
            return False
        self.outcome = exc
        return True

    def result(self) -> Result:
        outcome = self.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome


def server_protocol_error(exc: BadMessage) -> ServerProtocolError:
    return ServerProtocolError(
        f"the server sent a frame this client cannot read: {exc}",
        code=1002,
        reason="protocol error",
    )
