"""Error codes of the contract and the protocol's own exceptions.

Exception tree::

    ProtocolError                 anything this package raises
    ├── BadMessage                a client message could not be taken (local: we refuse it)
    │                             carries the field path and, where it is safe, the generation id
    ├── RepeatedOutput            an upstream repeated the same chunk too often
    └── ProtocolViolation         a peer's frames broke an invariant (remote: the sender is wrong)
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Every ``code`` an ``error`` frame may carry (contract, "Error codes")."""

    BAD_MESSAGE = "bad_message"
    UNKNOWN_MODEL = "unknown_model"
    DUPLICATE_ID = "duplicate_id"
    TOO_MANY_GENERATIONS = "too_many_generations"
    CONVERSATION_BUSY = "conversation_busy"
    CONVERSATION_LIMIT = "conversation_limit"
    UPSTREAM_RATE_LIMITED = "upstream_rate_limited"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_REJECTED = "upstream_rejected"
    REPEATED_OUTPUT = "repeated_output"
    SHUTTING_DOWN = "shutting_down"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed if sent again later."""
        return self not in _NOT_RETRYABLE


_NOT_RETRYABLE = frozenset(
    {
        ErrorCode.BAD_MESSAGE,
        ErrorCode.UNKNOWN_MODEL,
        ErrorCode.DUPLICATE_ID,
        ErrorCode.UPSTREAM_REJECTED,
        ErrorCode.CONVERSATION_LIMIT,
    }
)


class ProtocolError(Exception):
    """Root of every exception raised by ``tokenwire.protocol``."""


class BadMessage(ProtocolError):
    """A client message that cannot be taken.

    ``path`` is the JSON path of the offending field (``$.params.n``) when
    there is one; ``generation_id`` is the message's ``id`` when the message
    is a ``generate`` whose ``id`` is itself valid, so that the error can be
    that generation's terminal frame.
    """

    def __init__(
        self, message: str, *, path: str | None = None, generation_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.generation_id = generation_id

    def __str__(self) -> str:
        return self.message


class RepeatedOutput(ProtocolError):
    """More than ``limit`` consecutive upstream chunks carried the same text."""

    def __init__(self, text: str, limit: int) -> None:
        super().__init__(f"the model repeated the same chunk more than {limit} times")
        self.text = text
        self.limit = limit


class ProtocolViolation(ProtocolError):
    """Frames received from a peer break one of the contract's invariants."""

    def __init__(self, message: str, *, generation_id: str | None = None) -> None:
        super().__init__(message)
        self.generation_id = generation_id
