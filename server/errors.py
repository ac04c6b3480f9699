"""The server's close codes and the root of its own exceptions.

Exception tree::

    ServerError                    anything tokenwire.server raises on purpose
    ├── ConfigError                a configuration that cannot be used (config.py)
    ├── UpstreamFailure            a generation's failure, in the contract's terms (failures.py)
    └── IllegalTransition          a lifecycle move the state machine refuses (core.py): a bug
"""

from __future__ import annotations

import enum
from http import HTTPStatus


class CloseCode(enum.IntEnum):
    """The WebSocket close codes the server sends."""

    GOING_AWAY = 1001
    """The server is shutting down (after draining)."""
    INVALID_DATA = 1007
    MESSAGE_TOO_BIG = 1009
    """A client message larger than ``max_message_bytes`` (sent by websockets)."""
    INTERNAL_ERROR = 1011
    """The worker holding a piped session went away (``--workers``): resume again."""
    TRY_AGAIN_LATER = 1013
    """A handshake raced past the ``max_sessions`` check."""
    SLOW_READER = 4008
    """The client took nothing for ``send_timeout``, or let ``max_queued_frames`` pile up."""
    RESUMED_ELSEWHERE = 4009
    """A ``resume`` on another connection took the session over."""


CLOSE_REASONS: dict[CloseCode, str] = {
    CloseCode.GOING_AWAY: "server shutting down",
    CloseCode.INTERNAL_ERROR: "session lost; resume again",
    CloseCode.TRY_AGAIN_LATER: "server full",
    CloseCode.SLOW_READER: "slow reader",
    CloseCode.RESUMED_ELSEWHERE: "session resumed elsewhere",
}


class Refusal(enum.Enum):
    """Why a new client is not served (``TokenwireServer.admission``)."""

    ORIGIN = (HTTPStatus.FORBIDDEN, "origin not allowed")
    KEY = (HTTPStatus.UNAUTHORIZED, "missing or wrong API key")
    DRAINING = (HTTPStatus.SERVICE_UNAVAILABLE, "shutting down")
    FULL = (HTTPStatus.SERVICE_UNAVAILABLE, "server full")

    def __init__(self, status: HTTPStatus, text: str) -> None:
        self.status = status
        self.text = text


class ServerError(Exception):
    """Root of the exceptions ``tokenwire.server`` raises on purpose."""


class IllegalTransition(ServerError):
    """A generation or session was asked to move where its state machine forbids."""
