"""The WebSocket server: handshakes, HTTP routes, sessions, and draining.

``TokenwireServer`` holds what sessions share (settings, the upstream, the
metrics, the draining flag) and runs a ``websockets`` server on one port:
``/v1/ws`` upgrades to a session; ``/healthz``, ``/readyz`` and ``/metrics``
answer plain HTTP. Handshakes are judged in the contract's order: origin
(403), key (401), draining or full (503).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
from collections.abc import AsyncIterator, Sequence
from http import HTTPStatus
from typing import Final

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from tokenwire.protocol import ENCODING_BY_SUBPROTOCOL, Codec, Encoding

from . import web
from .config import ServerSettings
from .errors import CLOSE_REASONS, CloseCode
from .loop_lag import LoopLag
from .metrics import CONTENT_TYPE, Metrics
from .session import CLOSE_TIMEOUT, Session
from .upstream import Upstream

log = structlog.get_logger("tokenwire.server")

WS_PATH: Final = "/v1/ws"
AUTH_SUBPROTOCOL_PREFIX: Final = "tokenwire.bearer."
"""Browsers cannot set headers on a WebSocket handshake: they offer the key as
an extra subprotocol ``tokenwire.bearer.<base64url(key)>``, which the server
reads and never selects."""
RECEIVE_QUEUE: Final = 4
"""Client messages buffered before the server stops reading the socket; with
``max_message_bytes`` it bounds what one session can make the server hold."""
SERVER_HEADER: Final = "tokenwire"


class TokenwireServer:
    def __init__(self, settings: ServerSettings, upstream: Upstream) -> None:
        self.settings = settings
        self.upstream = upstream
        self.models = list(upstream.models)
        self.model_set = frozenset(self.models)
        self.metrics = Metrics()
        self.draining = False
        self.sessions: set[Session] = set()
        self.no_sessions = asyncio.Event()
        """Set while no session is open."""
        self.no_sessions.set()
        self.active_generations = 0
        self.loop_lag = LoopLag()
        self.history_bytes = 0
        """Bytes of conversation history all sessions keep (``max_total_history_bytes``)."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._keys = [k.encode() for k in settings.api_keys or ()]
        self._origins = frozenset(settings.allowed_origins or ())
        self._codecs = {encoding: Codec(encoding) for encoding in Encoding}
        self._server: Server | None = None

    # -- lifecycle ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def listen(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> AsyncIterator[tuple[str, int]]:
        """Serve on ``host:port`` (0: any free port); yields the bound address.

        ``reuse_port``: share the port with other processes (SO_REUSEPORT).
        """
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            compression="deflate" if self.settings.compression else None,
            max_size=self.settings.max_message_bytes,
            max_queue=RECEIVE_QUEUE,
            close_timeout=CLOSE_TIMEOUT,
            server_header=SERVER_HEADER,
            reuse_port=reuse_port,
        )
        watchdog = asyncio.create_task(self._watch_sends(), name="send watchdog")
        lag = asyncio.create_task(self.loop_lag.run(), name="loop lag")
        try:
            bound = self._server.sockets[0].getsockname()
            yield bound[0], bound[1]
        finally:
            self._server.close()
            await self._server.wait_closed()
            watchdog.cancel()
            lag.cancel()
            await self.upstream.close()

    async def _watch_sends(self) -> None:
        """Close sessions whose socket write has been blocked for ``send_timeout``.

        One task for all sessions, ticking every quarter of ``send_timeout``
        (at most every second), so a stalled reader is closed between
        ``send_timeout`` and 1.25 × ``send_timeout`` after its write began.
        """
        timeout = self.settings.send_timeout
        period = min(1.0, timeout / 4)
        clock = asyncio.get_running_loop().time
        while True:
            await asyncio.sleep(period)
            now = clock()
            for session in self.sessions:
                session.check_send(now, timeout)

    async def drain(self) -> None:
        """Stop taking work, let generations finish for ``drain_timeout``, end the rest."""
        self.draining = True
        log.info(
            "draining",
            sessions=len(self.sessions),
            generations=self.active_generations,
            drain_timeout=self.settings.drain_timeout,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_timeout):
                await self._idle.wait()
        await asyncio.gather(*(session.shutdown() for session in list(self.sessions)))
        log.info("drained")

    def generation_started(self) -> None:
        self.active_generations += 1
        self.metrics.generations_active.inc()
        self._idle.clear()

    def generation_ended(self) -> None:
        self.active_generations -= 1
        self.metrics.generations_active.dec()
        if self.active_generations == 0:
            self._idle.set()

    # -- connections ---------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        if len(self.sessions) >= self.settings.max_sessions:
            # A handshake raced past the check in _process_request.
            code = CloseCode.TRY_AGAIN_LATER
            await connection.close(code, CLOSE_REASONS[code])
            return
        encoding = ENCODING_BY_SUBPROTOCOL.get(connection.subprotocol or "", Encoding.JSON)
        session = Session(self, connection, self._codecs[encoding])
        self.sessions.add(session)
        self.no_sessions.clear()
        self.metrics.sessions.inc()
        self.metrics.sessions_opened.inc()
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if not self.sessions:
                self.no_sessions.set()
            self.metrics.sessions.dec()

    def _select_subprotocol(
        self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """The client's first tokenwire subprotocol; none offered means JSON."""
        for subprotocol in subprotocols:
            if subprotocol in ENCODING_BY_SUBPROTOCOL:
                return subprotocol
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == WS_PATH:
            return self._check_handshake(connection, request)
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.draining:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return connection.respond(HTTPStatus.OK, "ready\n")
        if path == "/metrics":
            return _response(HTTPStatus.OK, self.metrics.render(), CONTENT_TYPE)
        if (asset := web.ASSETS.get(path)) is not None:
            return _response(HTTPStatus.OK, asset.body, asset.content_type, asset.headers)
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._origins:
            origins = request.headers.get_all("Origin")
            if len(origins) > 1 or (origins and origins[0] not in self._origins):
                return self._refuse(connection, HTTPStatus.FORBIDDEN, "origin not allowed")
        if self._keys and not self._authenticated(request.headers):
            response = self._refuse(connection, HTTPStatus.UNAUTHORIZED, "missing or wrong API key")
            response.headers["WWW-Authenticate"] = 'Bearer realm="tokenwire"'
            return response
        if self.draining:
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "shutting down")
        if len(self.sessions) >= self.settings.max_sessions:
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "server full")
        return None

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, text: str) -> Response:
        self.metrics.handshakes_rejected.labels(str(status.value)).inc()
        return connection.respond(status, text + "\n")

    def _authenticated(self, headers: Headers) -> bool:
        presented = [
            value[len("Bearer ") :].strip().encode()
            for value in headers.get_all("Authorization")
            if value[: len("Bearer ")].lower() == "bearer "
        ]
        for header in headers.get_all("Sec-WebSocket-Protocol"):
            for offer in header.split(","):
                prefix, _, encoded = offer.strip().partition(AUTH_SUBPROTOCOL_PREFIX)
                if not prefix and encoded and (key := _decode_key(encoded)) is not None:
                    presented.append(key)
        # Compare against every key, in constant time for each.
        return any(hmac.compare_digest(p, k) for p in presented for k in self._keys)


def _decode_key(encoded: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return None


def auth_subprotocol(key: str) -> str:
    """The subprotocol a browser offers to present ``key``."""
    return AUTH_SUBPROTOCOL_PREFIX + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _response(
    status: HTTPStatus, body: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()
) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)
