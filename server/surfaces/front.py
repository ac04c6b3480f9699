"""The port splitter: one port for WebSockets and plain HTTP.

``FrontConnection`` (the ``websockets`` connection class the server uses)
reads a request's first line before websockets does: a request that cannot
be a WebSocket handshake (any method but GET, a path of an HTTP route,
``routes.HTTP_PATHS``, or any other ``/v1/`` or ``/api/`` path) is handed,
with its socket, to aiohttp's HTTP/1.1 server (keep-alive, chunked
bodies, ``handler_cancellation`` so a client that goes away cancels its
request). websockets accepts no request body, so a ``POST`` could not be
served there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import structlog
from websockets.asyncio.server import ServerConnection

from .routes import API_PREFIXES, HTTP_PATHS, WEBSOCKET_PATHS

log = structlog.get_logger("tokenwire.server")

REQUEST_LINE_LIMIT: Final = 8192
"""Bytes of a request's first line read before deciding who serves it."""


class _Released:
    """Stands in for the transport of a connection handed to aiohttp: what
    websockets does to its transport afterwards (abort it) does nothing."""

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return True


class FrontConnection(ServerConnection):
    """websockets' server connection, which first reads the request line and
    hands a request that is not a WebSocket handshake to aiohttp."""

    def __init__(
        self,
        *args: Any,
        http: Callable[[bytes], asyncio.Protocol] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._http = http
        self._line: bytes | None = b"" if http is not None else None

    def data_received(self, data: bytes) -> None:
        if self._line is None:
            super().data_received(data)
            return
        head = self._line + data
        end = head.find(b"\n")
        if not head[:1].isupper():  # no HTTP method: a TLS hello, a stray protocol
            self._line = None
            peer = self.transport.get_extra_info("peername")
            reason = "not HTTP (TLS on a plain port?)" if head[:1] == b"\x16" else "not HTTP"
            log.info("request refused", reason=reason, peer=peer[0] if peer else None)
            self.transport.close()
            return
        if end < 0 and len(head) < REQUEST_LINE_LIMIT:
            self._line = head
            return
        self._line = None
        if end < 0 or not is_http(head[:end]):
            super().data_received(head)
            return
        assert self._http is not None
        http = self._http(head[:end])
        transport = self.transport
        transport.set_protocol(http)
        http.connection_made(transport)
        http.data_received(head)
        # websockets' handshake task ends now, leaving the socket to aiohttp.
        self.transport = _Released()  # type: ignore[assignment]
        self.request_rcvd.set_result(None)


def is_http(line: bytes) -> bool:
    """Whether the request whose first line is ``line`` goes to the HTTP server."""
    method, _, rest = line.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if method != b"GET" or path in HTTP_PATHS:
        return True
    return path.startswith(API_PREFIXES) and path not in WEBSOCKET_PATHS
