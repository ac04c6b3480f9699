"""What a failure to connect means, for the async and the sync client: the
handshake's status or the OS's error as ``ConnectFailed`` with a hint, and
whether trying again may help. No I/O here."""

from __future__ import annotations

import errno
import socket
import urllib.parse
from typing import Final

import websockets

from .errors import ConnectFailed

_STATUS_HINTS: Final = {
    200: "that is a web page (tokenwire's chat page?), not a WebSocket",
    401: "the server needs an API key, or refused this one (api_key=...)",
    403: "the server does not allow this origin",
    404: "nothing is served there: a tokenwire URL ends in /v1/ws",
    503: "the server is full or shutting down; try again later",
}


def connect_failed(url: str, exc: BaseException) -> ConnectFailed:
    """A handshake's failure (websockets' or the OS's exception) as ``ConnectFailed``."""
    if isinstance(exc, websockets.InvalidStatus):
        status = exc.response.status_code
        said = exc.response.body.decode("utf-8", "replace").strip().partition("\n")[0][:200]
        hint = _STATUS_HINTS.get(status) or said or "the server refused the WebSocket handshake"
        if status in (200, 404) and not url.rstrip("/").endswith(WS_PATH):
            hint = f"{hint}; tokenwire's WebSocket is at {ws_url_of(url)}"
        return ConnectFailed(f"{url}: HTTP {status}: {hint}", url=url, status=status)
    cause = _cause(exc)
    if isinstance(exc, websockets.InvalidURI):
        message = "not a WebSocket URL (ws://HOST:PORT/v1/ws)"
    elif isinstance(exc, TimeoutError):
        message = "no answer in time: is the server running?"
    elif isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        message = f"cannot connect ({reason}): is the server running?"
    else:
        message = f"the handshake failed: {exc}"
    return ConnectFailed(f"{url}: {message}", url=url, cause=cause)


WS_PATH: Final = "/v1/ws"


def ws_url_of(url: str) -> str:
    """``url``'s server, at tokenwire's WebSocket path."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, WS_PATH, "", ""))


def not_tokenwire(url: str, what: str) -> ConnectFailed:
    """A server that took the handshake but did not greet with ``ready``
    (``what`` it did instead) is not tokenwire's ``/v1/ws``."""
    return ConnectFailed(
        f"{url}: {what}: this is not tokenwire's WebSocket (it is at {ws_url_of(url)})",
        url=url,
        cause="not_tokenwire",
    )


def _cause(exc: BaseException) -> str:
    """A failure to connect, in a word (``ConnectFailed.cause``)."""
    if isinstance(exc, websockets.InvalidURI):
        return "bad_url"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, socket.gaierror):
        return "unknown_host"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno == errno.ECONNRESET:
        return "reset"
    return type(exc).__name__


CONNECT_ERRORS: Final = (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI)
"""What opening a connection raises, turned into ``ConnectFailed``."""


def worth_retrying(exc: BaseException) -> bool:
    """Whether a reconnection attempt that failed so may succeed later: not
    when the server refused this client (401, 403, 404), or is no tokenwire
    server there (a page, another protocol)."""
    if not isinstance(exc, ConnectFailed):
        return True
    return exc.status not in (200, 400, 401, 403, 404) and exc.cause != "not_tokenwire"
