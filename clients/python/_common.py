"""What the async and the sync client share: options, message building, and
the routing of received frames to generations. No I/O here."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import msgspec
import websockets

from tokenwire.protocol import (
    TERMINAL_FRAMES,
    Codec,
    Encoding,
    Error,
    Finish,
    Generate,
    GenerationFrame,
    Params,
    ProtocolViolation,
    Reasoning,
    Result,
    ResultBuilder,
    Token,
    ToolCallChunk,
    ToolCallComplete,
)

from .errors import ConnectionLost, GenerationError

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

    def __init__(self, generation_id: str, model: str) -> None:
        self.id = generation_id
        self.model = model
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
