"""The HTTP server's connections: deadlines for slow requests, one line for a refused one.

aiohttp's HTTP/1.1 server has no deadline for a request's headers: a client
that sends them a byte a second holds its connection (and a descriptor)
for as long as it likes. ``DeadlinedHandler`` is aiohttp's connection
handler with one: from the moment a request's first bytes arrive (the
connection's first request: from the hand-off by the port splitter), its
headers must be complete within ``http_header_timeout``, else the client
gets a 408 and the connection closes. The body's deadline
(``http_body_timeout``) is the surface's own, where it reads the body.

aiohttp logs a request it refuses (bad framing, an over-long line, a
smuggling attempt) as a plain-text traceback: any client could fill the
log. ``RefusalLog`` stands in for its logger: a refused request is one JSON
line at warning, with the peer and the reason, no traceback; anything else
aiohttp reports is an error with its traceback (a defect of tokenwire's).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import msgspec
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from tokenwire.protocol.openai_common import OpenAIErrorKind, error_body

log = structlog.get_logger("tokenwire.server")

REQUEST_TIMEOUT: Final = OpenAIErrorKind(408, "invalid_request_error")


def too_slow(phase: str, seconds: float) -> str:
    """The 408's message (``phase``: headers or body)."""
    return f"the request's {phase} did not arrive within {seconds:g} s"


class RefusalLog:
    """aiohttp's server logger for one connection (``line``: its first request line)."""

    def __init__(self, line: bytes) -> None:
        method, _, rest = line.decode("latin-1").partition(" ")
        self.method = method[:16]
        self.path = rest.partition(" ")[0][:200]

    def exception(self, message: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        peer = args[0] if args else None
        if isinstance(exc_info, HttpProcessingError):
            reason = exc_info.message if isinstance(exc_info.message, str) else str(exc_info)
            log.warning(
                "request refused",
                method=self.method,
                path=self.path,
                reason=reason.strip()[:200] or type(exc_info).__name__,
                status=exc_info.code,
                peer=peer,
            )
            return
        log.error("http request failed", peer=peer, exc_info=exc_info or True)

    def debug(self, message: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):  # aiohttp's "not HTTP at all" (TLS, ...)
            self.exception(message, *args, exc_info=exc_info)

    def warning(self, message: str, *args: Any, **_: Any) -> None:
        log.warning("http server", message=message % args if args else message)

    info = warning
    error = exception


class DeadlinedHandler(RequestHandler):
    """aiohttp's connection handler, with a deadline on each request's headers."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.in_request = False
        self._deadline: asyncio.TimerHandle | None = None
        self._peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if data and not self.in_request and self._deadline is None:
            self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def began(self) -> None:
        """A request's headers were complete: its handler runs."""
        self.in_request = True
        self._disarm()

    def ended(self) -> None:
        self.in_request = False

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport = self.transport
        if self.in_request or transport is None or transport.is_closing():
            return
        log.warning(
            "request too slow", phase="headers", limit_s=self.header_timeout, peer=self._peer
        )
        body = msgspec.json.encode(
            error_body(too_slow("headers", self.header_timeout), REQUEST_TIMEOUT, "request_timeout")
        )
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.force_close()


@web.middleware
async def track_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tell the connection's handler when a request is being served."""
    protocol = request.protocol
    if not isinstance(protocol, DeadlinedHandler):
        response: web.StreamResponse = await handler(request)
        return response
    protocol.began()
    try:
        response = await handler(request)
        return response
    finally:
        protocol.ended()
