"""The WebSocket server: handshakes, HTTP routes, sessions, and draining.

``TokenwireServer`` holds what sessions share (settings, the upstream, the
metrics, the draining flag) and runs a ``websockets`` server on one port:
``/v1/ws`` upgrades to a session; ``/healthz``, ``/readyz`` and ``/metrics``
answer plain HTTP. Who may be served is the ``Gate``'s to judge (``gate.py``),
the same for every surface; a ``resume`` is the ``Resumer``'s
(``resuming.py``). The server keeps the session registry, the sweeper of
detached sessions, the leases (``resume: redis``) and the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from http import HTTPStatus
from typing import Any, Final

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve, unix_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from tokenwire.protocol import (
    ENCODING_BY_SUBPROTOCOL,
    Codec,
    Encoding,
    Resume,
)
from tokenwire.protocol.surface import Surface

from . import workers
from .config import ServerSettings
from .engines.upstream import Upstream
from .errors import CLOSE_REASONS, CloseCode
from .keepalive import KeepAlive
from .loop_lag import LoopLag
from .metrics import CONTENT_TYPE, Metrics
from .sessions.core import SessionLife, StopReason
from .sessions.link import CLOSE_TIMEOUT, Link
from .sessions.resuming import Resumer
from .sessions.session import Session
from .stores import open_store
from .stores.contract import ResponseStore
from .stores.resume import Cause, key_hash
from .surfaces import web
from .surfaces.front import FrontConnection
from .surfaces.gate import Gate
from .surfaces.gate import (
    auth_subprotocol as auth_subprotocol,  # where tests and tools import it from
)
from .surfaces.http import HttpSurfaces
from .surfaces.http_link import HttpLink, PlainRoute
from .surfaces.responses import ResponsesLink
from .surfaces.routes import RESPONSES_PATH, UI_SOCKET_PATH, WEBSOCKET_ROUTES
from .surfaces.ui_socket import UiAnswerLink, UiSocketLink
from .workers import Workers

log = structlog.get_logger("tokenwire.server")

RECEIVE_QUEUE: Final = 4
"""Client messages buffered before the server stops reading the socket; with
``max_message_bytes`` it bounds what one session can make the server hold."""
SERVER_HEADER: Final = "tokenwire"
NOT_FOUND_HINT: Final = (
    "not found: {path}\n"
    "tokenwire's WebSocket is at /v1/ws (ws://HOST:PORT/v1/ws); the chat page is at /;\n"
    "OpenAI's formats are at /v1/chat/completions, /v1/models and /v1/responses.\n"
)
WRONG_PROTOCOL_HINT: Final = (
    "this is OpenAI's Responses API WebSocket mode (/v1/responses); "
    "tokenwire's own protocol is at /v1/ws\n"
)
EVICTED_DEADLINE: Final = 1.0
"""The deadline (in 1970) an evicted session's Redis record gets: past, so
any node's resume of it hears ``expired``."""


class TokenwireServer:
    def __init__(
        self, settings: ServerSettings, upstream: Upstream, workers: Workers | None = None
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = open_store(settings, self.metrics)
        """Where sessions are kept for a resume (``stores.contract``)."""
        self.workers = workers if not self.store.shared else None
        """This worker's peers (``--workers`` without a shared store: ``workers.py``)."""
        self.upstream = upstream
        self.models = list(upstream.models)
        self.model_set = frozenset(self.models)
        self.draining = False
        self.connections: set[Link | HttpLink | UiAnswerLink] = set()
        """Every open link: WebSocket connections and chat completions in progress."""
        self.no_sessions = asyncio.Event()
        """Set while no connection is open."""
        self.no_sessions.set()
        self.sessions: dict[str, Session] = {}
        """Every session, attached or DETACHED, by its token's hash."""
        self.active_generations = 0
        self.loop_lag = LoopLag()
        self.keepalive = KeepAlive(settings.ping_interval, settings.ping_timeout)
        self.history_bytes = 0
        """Bytes of conversation history all sessions keep (``max_total_history_bytes``)."""
        self._idle = asyncio.Event()
        self._idle.set()
        self.gate = Gate(settings, self.metrics, self)
        """Who may be served (keys, origins, room): asked by every surface."""
        self._codecs = {encoding: Codec(encoding) for encoding in Encoding}
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.started_at = time.time()
        self.http = HttpSurfaces(self)
        self.responses: ResponseStore = self.store.responses(self.workers)
        """Responses kept for ``previous_response_id`` (``/v1/responses``)."""
        self.resumer = Resumer(self)

    # -- lifecycle ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def listen(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> AsyncIterator[tuple[str, int]]:
        """Serve on ``host:port`` (0: any free port); yields the bound address.

        ``reuse_port``: share the port with other processes (SO_REUSEPORT).
        """
        http = await self.http.start()
        self._server = await serve(
            self._handle,
            host,
            port,
            create_connection=functools.partial(FrontConnection, http=http),  # type: ignore[arg-type]
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            compression="deflate" if self.settings.compression else None,
            max_size=self.settings.max_message_bytes,
            max_queue=RECEIVE_QUEUE,
            close_timeout=CLOSE_TIMEOUT,
            ping_interval=None,  # one task pings them all (keepalive.py)
            server_header=SERVER_HEADER,
            reuse_port=reuse_port,
        )
        peers: Server | None = None
        if self.workers is not None:  # the other workers reach this one here
            self.workers.listening()
            peers = await unix_serve(
                self._handle,
                self.workers.socket(self.workers.number),
                process_request=self._process_peer_request,
                select_subprotocol=self._select_subprotocol,
                compression=None,
                max_size=self.settings.max_message_bytes,
                max_queue=RECEIVE_QUEUE,
                close_timeout=CLOSE_TIMEOUT,
                server_header=SERVER_HEADER,
            )
        watchdog = asyncio.create_task(self._watch_sends(), name="send watchdog")
        lag = asyncio.create_task(self.loop_lag.run(), name="loop lag")
        sweeper = asyncio.create_task(self._sweep(), name="orphan sweeper")
        background = [watchdog, lag, sweeper, *self.keepalive.start()]
        await self.store.start()
        background += self.store.serve(self)  # leases, and cancels from other nodes
        try:
            bound = self._server.sockets[0].getsockname()
            yield bound[0], bound[1]
        finally:
            self._server.close()
            if peers is not None:
                peers.close()
                await peers.wait_closed()
            await self._server.wait_closed()
            # Detached sessions' generations end before the upstream closes.
            await asyncio.gather(
                *(s.end(StopReason.DISCONNECT) for s in list(self.sessions.values()))
            )
            for task in background:
                task.cancel()
            await self.http.close()
            await self.store.close()
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
            for link in self.connections:
                link.check_send(now, timeout)

    async def _sweep(self) -> None:
        """Cancel the generations of sessions DETACHED for ``orphan_timeout``,
        and forget those DETACHED for ``resume_ttl``."""
        settings = self.settings
        clock = asyncio.get_running_loop().time
        period = min(1.0, settings.orphan_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = clock()
            for session in list(self.sessions.values()):
                orphaned = session.orphaned_for(now)
                if not orphaned:
                    continue
                if orphaned >= session.orphan_timeout and session.core.active:
                    await self._orphan(session)
                if orphaned >= settings.resume_ttl:
                    self.resumer.expire(session, Cause.RESUME_TTL)
                    await session.end(StopReason.DISCONNECT)

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
        await asyncio.gather(*(session.shutdown() for session in list(self.sessions.values())))
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

    async def _orphan(self, session: Session) -> None:
        """Cancel a DETACHED session's generations, except those another node
        relays to the client that resumed there."""
        ids = list(session.generations)
        watched = await self.store.watched((session.token_hash, gid) for gid in ids)
        if session.life is not SessionLife.DETACHED:
            return  # resumed meanwhile
        ids = [gid for gid in ids if (session.token_hash, gid) not in watched]
        ids += [gid for gid, entry in session.core.active.items() if entry.remote]
        stopped = [e for gid in ids if (e := session.core.stop(gid, StopReason.DISCONNECT))]
        session.interrupt(stopped)

    def running(self) -> list[tuple[str, str]]:
        """This node's running generations, as (session hash, id): their leases."""
        return [(h, gid) for h, s in self.sessions.items() for gid in s.generations]

    def cancel(self, h: str, gid: str) -> None:
        """Another node asked to cancel one of this node's generations."""
        session = self.sessions.get(h)
        if session is not None and (entry := session.core.stop(gid, StopReason.CANCEL)):
            session.interrupt([entry])

    def session_ended(self, session: Session) -> None:
        if self.sessions.get(session.token_hash) is session:
            del self.sessions[session.token_hash]

    # -- connections ---------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        if len(self.connections) >= self.settings.max_sessions:
            # A handshake raced past the check in _process_request.
            code = CloseCode.TRY_AGAIN_LATER
            await connection.close(code, CLOSE_REASONS[code])
            return
        self.keepalive.add(connection)
        encoding = ENCODING_BY_SUBPROTOCOL.get(connection.subprotocol or "", Encoding.JSON)
        request = connection.request
        key = self.gate.presented_key(request.headers) if request else None
        link: Link
        route = WEBSOCKET_ROUTES.get(request.path.partition("?")[0]) if request else None
        if route is not None and route.surface is Surface.RESPONSES:
            link = ResponsesLink(self, connection, self._codecs[Encoding.JSON], self.responses)
        elif route is not None and route.surface is Surface.UI:
            link = UiSocketLink(self, connection, self._codecs[Encoding.JSON], self.http.ui)
        else:
            link = Link(self, connection, self._codecs[encoding])
        link.key = key
        session = self.open_session(link, key, attach=False)  # link.run greets it
        try:
            await link.run(session)
        finally:
            self.closed(link)

    def open_session(
        self,
        link: Link | HttpLink | UiAnswerLink,
        key: bytes | None,
        *,
        attach: bool = True,
        resumable: bool | None = None,
    ) -> Session:
        """A new session served by ``link``, of its surface (resumable as the
        surface is, unless ``resumable`` says: an AI SDK chat's answer asks)."""
        surface = link.surface
        token = self.workers.new_token() if self.workers is not None else None
        resumable = surface.resumable if resumable is None else resumable
        session = Session(self, key_hash(key), token, resumable=resumable, surface=surface)
        self._make_room()
        self.sessions[session.token_hash] = session
        self.connections.add(link)
        self.no_sessions.clear()
        self.metrics.attached.inc()
        self.metrics.sessions_opened.inc()
        if attach:
            session.attach(link)
        return session

    async def close_session(
        self, link: HttpLink | UiAnswerLink, session: Session, *, end: bool = True
    ) -> None:
        """An HTTP answer ended (or its client left): its generation stops,
        unless the session is resumable and not ``end``ed (DETACHED, it runs on)."""
        try:
            await session.detach(link, end=end)
        finally:
            self.closed(link)

    def closed(self, link: Link | HttpLink | UiAnswerLink) -> None:
        """``link`` serves nothing any more."""
        self.connections.discard(link)
        if not self.connections:
            self.no_sessions.set()
        self.metrics.attached.dec()

    def _make_room(self) -> None:
        """Sessions are bounded by ``max_sessions`` in all, attached or not
        (the handshake refuses only when that many are attached): past it
        the session DETACHED longest ago is forgotten, its generations
        cancelled, and a later resume of it hears ``expired``."""
        excess = len(self.sessions) - self.settings.max_sessions
        if excess < 0:
            return
        detached = sorted(
            (s for s in self.sessions.values() if s.life is SessionLife.DETACHED),
            key=lambda s: s.detached_at,
        )
        for session in detached[: excess + 1]:
            log.info("session evicted", session=session.id, reason="max_sessions")
            self.metrics.sessions_evicted.inc()
            self.resumer.expire(session, Cause.MAX_SESSIONS)
            self.session_ended(session)
            self.background(session.kept.detached(EVICTED_DEADLINE))  # no node resumes it
            self.background(session.end(StopReason.DISCONNECT))

    async def resume(self, link: Link, message: Resume) -> None:
        """A ``resume``, the first message on ``link`` (``resuming.Resumer``)."""
        await self.resumer.resume(link, message)

    def background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` on its own, kept referenced until it is done."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _select_subprotocol(
        self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """The client's first tokenwire subprotocol; none offered means JSON.
        On ``/api/chat/ws``, the first one offered (Node's ``ws`` aborts a
        handshake where none is selected; a key comes as one)."""
        request = connection.request
        if request is not None and request.path.partition("?")[0] == UI_SOCKET_PATH:
            return subprotocols[0] if subprotocols else None
        for subprotocol in subprotocols:
            if subprotocol in ENCODING_BY_SUBPROTOCOL:
                return subprotocol
        return None

    async def _process_peer_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """A request from another worker, on this one's Unix socket: a piped
        session's handshake, or a stored response's chain."""
        path = request.path.partition("?")[0]
        if not path.startswith(workers.CHAIN_PATH):
            return self._process_request(connection, request)
        chain = await self.responses.chain(path[len(workers.CHAIN_PATH) :])
        if chain is None:
            return _response(HTTPStatus.NOT_FOUND, b"", "application/octet-stream")
        return _response(HTTPStatus.OK, workers.encode_chain(chain), "application/msgpack")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == RESPONSES_PATH and any(
            offer.strip() in ENCODING_BY_SUBPROTOCOL
            for header in request.headers.get_all("Sec-WebSocket-Protocol")
            for offer in header.split(",")
        ):
            return connection.respond(HTTPStatus.BAD_REQUEST, WRONG_PROTOCOL_HINT)
        if path == UI_SOCKET_PATH:  # the AI SDK sends keys in its frames
            return self.gate.handshake(connection, request, need_key=False)
        if path in WEBSOCKET_ROUTES:
            return self.gate.handshake(connection, request)
        authorization = request.headers.get_all("Authorization")
        if (plain := self.plain_route(path, authorization)) is not None:
            status, body, content_type, headers = plain
            return _response(status, body, content_type, headers)
        return connection.respond(HTTPStatus.NOT_FOUND, NOT_FOUND_HINT.format(path=path[:100]))

    def plain_route(self, path: str, authorization: Sequence[str] = ()) -> PlainRoute | None:
        """The answer to ``GET path`` for the plain HTTP routes (None: no such
        route). With ``api_keys`` set, ``/metrics`` (model names, traffic,
        errors) wants one of them too, as ``Authorization: Bearer``."""
        text = "text/plain; charset=utf-8"
        if path == "/healthz":
            return HTTPStatus.OK, b"ok\n", text, ()
        if path == "/readyz":
            if self.draining:
                return HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n", text, ()
            return HTTPStatus.OK, b"ready\n", text, ()
        if path == "/metrics":
            if self.gate.requires_key and self.gate.key_of(authorization) is None:
                challenge = (("WWW-Authenticate", 'Bearer realm="tokenwire"'),)
                return HTTPStatus.UNAUTHORIZED, b"a key is required\n", text, challenge
            return HTTPStatus.OK, self.metrics.render(), CONTENT_TYPE, ()
        if (asset := web.ASSETS.get(path)) is not None:
            return HTTPStatus.OK, asset.body, asset.content_type, asset.headers
        return None


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
