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
import functools
import hmac
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
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
    Error,
    Finish,
    GenerationFrame,
    Resume,
    Resumed,
    ResumeFailed,
    ResumeFailure,
    ServerFrame,
)

from . import resume, web, workers
from .config import ServerSettings
from .core import SessionLife, StopReason
from .errors import CLOSE_REASONS, CloseCode, Refusal
from .link import CLOSE_TIMEOUT, Link
from .loop_lag import LoopLag
from .metrics import CONTENT_TYPE, Metrics
from .openai_http import FrontConnection, HttpLink, OpenAIHttp
from .redis_store import Record, RedisStore, Replay
from .responses import RESPONSES_PATH, ResponsesLink, ResponseStore, response_store
from .resume import (
    GAP,
    Cause,
    MemoryLogs,
    contiguous,
    key_hash,
    same_key,
    seq_of,
    token_hash,
)
from .session import SKIP_ALL, Session
from .upstream import Upstream
from .workers import Workers

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
NOT_FOUND_HINT: Final = (
    "not found: {path}\n"
    "tokenwire's WebSocket is at /v1/ws (ws://HOST:PORT/v1/ws); the chat page is at /;\n"
    "OpenAI's formats are at /v1/chat/completions, /v1/models and /v1/responses.\n"
)
EVICTED_DEADLINE: Final = 1.0
"""The deadline (in 1970) an evicted session's Redis record gets: past, so
any node's resume of it hears ``expired``."""
EXPIRED_KEPT: Final = 65_536
"""Tokens of expired sessions remembered, so that a late resume hears ``expired``."""


class TokenwireServer:
    def __init__(
        self, settings: ServerSettings, upstream: Upstream, workers: Workers | None = None
    ) -> None:
        self.settings = settings
        self.workers = workers if settings.resume != "redis" else None
        """This worker's peers (``--workers`` without Redis: ``workers.py``)."""
        self.upstream = upstream
        self.models = list(upstream.models)
        self.model_set = frozenset(self.models)
        self.metrics = Metrics()
        self.draining = False
        self.connections: set[Link | HttpLink] = set()
        """Every open link: WebSocket connections and chat completions in progress."""
        self.no_sessions = asyncio.Event()
        """Set while no connection is open."""
        self.no_sessions.set()
        self.sessions: dict[str, Session] = {}
        """Every session, attached or DETACHED, by its token's hash."""
        self._expired: dict[str, tuple[str, Cause]] = {}
        """Token hash → key hash of sessions ended by ``resume_ttl`` or
        evicted at ``max_sessions`` (the newest few), and which."""
        self.memory_logs = (
            MemoryLogs(settings.resume_generation_bytes, settings.resume_total_bytes)
            if settings.resume == "memory"
            else None
        )
        self.redis = (
            RedisStore(settings.redis_url or "", settings, self.metrics)
            if settings.resume == "redis"
            else None
        )
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
        self._tasks: set[asyncio.Task[None]] = set()
        self.started_at = time.time()
        self.websocket_paths = frozenset({WS_PATH, RESPONSES_PATH})
        self.openai_http = OpenAIHttp(self)
        self.responses: ResponseStore = response_store(settings, self.redis, self.workers)
        """Responses kept for ``previous_response_id`` (``/v1/responses``)."""

    # -- lifecycle ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def listen(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> AsyncIterator[tuple[str, int]]:
        """Serve on ``host:port`` (0: any free port); yields the bound address.

        ``reuse_port``: share the port with other processes (SO_REUSEPORT).
        """
        http = await self.openai_http.start()
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
        background = [watchdog, lag, sweeper]
        if self.redis is not None:
            await self.redis.start()
            self.redis.on_cancel = self._cancelled_elsewhere
            background.append(asyncio.create_task(self.redis.listen(), name="cancel listener"))
            background.append(asyncio.create_task(self._renew(), name="lease renewal"))
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
            await self.openai_http.close()
            if self.redis is not None:
                await self.redis.close()
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
                if orphaned >= settings.orphan_timeout and session.core.active:
                    await self._orphan(session)
                if orphaned >= settings.resume_ttl:
                    self._expire(session, Cause.RESUME_TTL)
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
        if self.redis is not None:
            watched = await self.redis.watched((session.token_hash, gid) for gid in ids)
            if session.life is not SessionLife.DETACHED:
                return  # resumed meanwhile
            ids = [gid for gid in ids if (session.token_hash, gid) not in watched]
            for gid in list(session.core.active):
                if session.core.active[gid].remote:
                    ids.append(gid)
        stopped = [e for gid in ids if (e := session.core.stop(gid, StopReason.DISCONNECT))]
        session.interrupt(stopped)

    async def _renew(self) -> None:
        """``resume: redis``: renew the leases on this node's running
        generations (three times a lease) and take cancels asked by key."""
        assert self.redis is not None
        while True:
            await asyncio.sleep(self.settings.resume_lease / 3)
            await self._renew_once()

    async def _renew_once(self) -> None:
        assert self.redis is not None
        running = [(h, gid) for h, s in self.sessions.items() for gid in s.generations]
        for h, gid in await self.redis.renew(running):
            self._cancelled_elsewhere(h, gid)

    def _cancelled_elsewhere(self, h: str | None, gid: str | None) -> None:
        """Another node asked to cancel one of this node's generations (None:
        check every one, the listener having been away)."""
        if h is None or gid is None:
            asyncio.get_running_loop().create_task(self._renew_once())
            return
        session = self.sessions.get(h)
        if session is not None and (entry := session.core.stop(gid, StopReason.CANCEL)):
            session.interrupt([entry])

    def _expire(self, session: Session, cause: Cause) -> None:
        """A later resume of ``session`` hears ``expired``."""
        self._expired[session.token_hash] = session.key_hash, cause
        while len(self._expired) > EXPIRED_KEPT:
            del self._expired[next(iter(self._expired))]

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
        encoding = ENCODING_BY_SUBPROTOCOL.get(connection.subprotocol or "", Encoding.JSON)
        request = connection.request
        key = self._presented_key(request.headers) if request else None
        link: Link
        if request is not None and request.path.partition("?")[0] == RESPONSES_PATH:
            link = ResponsesLink(self, connection, self._codecs[Encoding.JSON], self.responses)
        else:
            link = Link(self, connection, self._codecs[encoding])
        link.key = key
        session = self.open_session(link, key, attach=False)  # link.run greets it
        try:
            await link.run(session)
        finally:
            self._closed(link)

    def open_session(
        self, link: Link | HttpLink, key: bytes | None, *, attach: bool = True
    ) -> Session:
        """A new session served by ``link``, of its surface (the OpenAI
        surfaces' sessions are not resumable)."""
        surface = link.surface
        token = self.workers.new_token() if self.workers is not None else None
        session = Session(self, key_hash(key), token, resumable=surface == "ws", surface=surface)
        self._make_room()
        self.sessions[session.token_hash] = session
        self.connections.add(link)
        self.no_sessions.clear()
        self.metrics.attached.inc()
        self.metrics.sessions_opened.inc()
        if attach:
            session.attach(link)
        return session

    async def close_session(self, link: HttpLink, session: Session) -> None:
        """A chat completion ended (or its client left): its generation is stopped."""
        try:
            await session.detach(link, end=True)
        finally:
            self._closed(link)

    def _closed(self, link: Link | HttpLink) -> None:
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
            self._expire(session, Cause.MAX_SESSIONS)
            self.session_ended(session)
            if self.redis is not None:  # so that no node resumes it
                self.background(self.redis.set_deadline(session, EVICTED_DEADLINE))
            self.background(session.end(StopReason.DISCONNECT))

    async def resume(self, link: Link, message: Resume) -> None:
        """A ``resume``, the first message on ``link``: attach the session it
        names, and replay what each listed generation missed.

        The answers come in the order listed, each ``resumed`` followed by
        the frames it replays; then the session's own answer (``id`` null);
        then the live frames. With Redis, one round trip reads the session's
        record and every listed generation's stored frames. A session this
        node holds is attached before that read, its live frames held
        meanwhile (``Session.park``), so none falls between the read and the
        attach.
        """
        owner = self.workers.token_owner(message.token) if self.workers is not None else None
        if owner is not None:  # another worker holds the session
            await workers.pipe(self, link, message, owner)
            return
        fresh = link.session
        assert fresh is not None
        wanted = token_hash(message.token)
        positions = message.generations
        session = self.sessions.get(wanted) if wanted != fresh.token_hash else None
        record: Record | None = None
        stored: dict[str, Replay] = {}
        held_here = (
            session is not None
            and self._resume_failure(fresh.key_hash, wanted, session, None) is None
        )
        if session is not None and held_here:
            self._take_over(fresh, session, link, positions)
            if self.redis is not None:
                record, stored = await self.redis.fetch(wanted, positions)
        else:
            if self.redis is not None and wanted != fresh.token_hash:
                record, stored = await self.redis.fetch(wanted, positions)
            failure = self._resume_failure(fresh.key_hash, wanted, session, record)
            if failure is not None:
                reason, cause = failure
                self.metrics.resumes.labels(reason).inc()
                link.send([ResumeFailed(id=gid, reason=reason) for gid in positions])
                link.send([resume.failed(self.metrics, None, reason, cause)])
                return
            assert record is not None  # known to Redis only: its generations ran elsewhere
            session = Session(self, record.key_hash, message.token, record.session_id)
            session.generated = True
            self.sessions[wanted] = session
            self._take_over(fresh, session, link, positions)
        if record is not None:
            for name, messages in record.conversations.items():
                self.history_bytes += session.core.restore(name, messages)
        if self.redis is None:
            for gid, last_seq in positions.items():
                link.send(self._replay(session, gid, last_seq))
            link.send([Resumed(id=None)])
            return
        self.background(self.redis.set_deadline(session, 0))
        if session.link is not link:
            return  # another resume took the session meanwhile
        replayed = [
            (gid, self._replay_stored(session, record, gid, last_seq, stored.get(gid, "gap")))
            for gid, last_seq in positions.items()
        ]
        link.send([Resumed(id=None)])
        for gid, last in replayed:  # now the live frames
            session.unpark(gid, last)

    def _take_over(
        self, fresh: Session, session: Session, link: Link, positions: Mapping[str, int]
    ) -> None:
        """``link`` serves ``session`` from now on, instead of the new session
        its ``ready`` announced (which has done nothing yet)."""
        fresh.discard()
        session.attach(link)
        self.metrics.resumes.labels("resumed").inc()
        log.info("session resumed", session=session.id, generations=len(positions))
        if self.redis is not None:
            session.park(positions)

    def background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` on its own, kept referenced until it is done."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resume_failure(
        self, key: str, wanted: str, session: Session | None, record: Record | None
    ) -> tuple[ResumeFailure, Cause] | None:
        """Why a resume of ``wanted`` presented with ``key`` fails, or None."""
        if session is not None:
            if same_key(session.key_hash, key) and session.resumable:
                return None
            return "unknown", Cause.NO_SESSION
        if record is not None:
            if not same_key(record.key_hash, key):
                return "unknown", Cause.NO_SESSION
            return ("expired", Cause.RECORD_EXPIRED) if record.expired(time.time()) else None
        expired = self._expired.get(wanted)
        if expired is not None and same_key(expired[0], key):
            return "expired", expired[1]
        return "unknown", Cause.NO_SESSION

    def _replay(self, session: Session, gid: str, last_seq: int) -> list[ServerFrame]:
        """``resume: memory``: the frames after ``last_seq``, from the node's memory."""
        frame_log = session.logs.get(gid)
        if frame_log is None:
            return [resume.failed(self.metrics, gid, "unknown", Cause.NOT_STARTED)]
        frames: list[GenerationFrame] | str = frame_log.after(last_seq)
        if frames == GAP or isinstance(frames, str):
            cause = frame_log.dropped_by or Cause.TOTAL_BYTES
            end = frame_log.first_seq - 1 if not frame_log.evicted else None
            span = (last_seq + 1, end)
            session.delivered[gid] = SKIP_ALL  # nothing more of it goes to this client
            return [resume.failed(self.metrics, gid, "gap", cause, frames=span)]
        return [Resumed(id=gid, after_seq=last_seq), *frames]

    def _replay_stored(
        self, session: Session, record: Record | None, gid: str, last_seq: int, stored: Replay
    ) -> int | None:
        """``resume: redis``: the frames after ``last_seq`` as read from Redis;
        the live ones follow (from this node's generation, or relayed from the
        node running it: ``Session.relay``) after the seq returned (None: the
        session never had ``gid``).

        A generation of this node that ended may still have frames on their
        way: waiting to be stored (``RedisStore.queued``), or stored since
        the read and held for the replay (``Session.parked_for``). They come
        live, as a running generation's do: only frames that went unkept
        make a ``gap``.
        """
        link = session.link
        store = self.redis
        assert link is not None and store is not None
        here = (
            gid in session.generations
            or gid in session.owners
            or store.queued(session, gid)
            or session.parked_for(gid)
        )
        ended_here = gid in session.known and not here
        elsewhere = None if here or ended_here or record is None else record.requests.get(gid)
        live = here or elsewhere is not None
        frames: list[GenerationFrame] | ResumeFailure = stored
        if isinstance(stored, list) and not contiguous(stored, last_seq):
            frames = "gap"  # the oldest were trimmed, or never stored
        elif stored == "unknown":  # nothing stored after last_seq
            frames = [] if live else "gap" if ended_here or gid in session.known else "unknown"
        elif isinstance(stored, list) and not live:
            # Ended without a stored terminal frame: what follows was lost
            # with Redis's data.
            ended = bool(stored) and isinstance(stored[-1], Finish | Error)
            frames = stored if ended else "gap"
        if frames == "unknown":
            link.send([resume.failed(self.metrics, gid, "unknown", Cause.NOT_STARTED)])
            return None
        if isinstance(frames, str):
            lost = session.lost.get(gid) or (record.lost.get(gid) if record else None)
            span: tuple[int, int | None] = (last_seq + 1, None)  # the tail is missing
            if isinstance(stored, list) and stored:
                head = seq_of(stored[0])
                span = (
                    (last_seq + 1, head - 1)
                    if head > last_seq + 1
                    else (seq_of(stored[-1]) + 1, None)
                )
            failure = resume.failed(self.metrics, gid, "gap", lost or Cause.DATA_GONE, frames=span)
            link.send([failure])
            return SKIP_ALL
        link.send([Resumed(id=gid, after_seq=last_seq), *frames])
        last = seq_of(frames[-1]) if frames else last_seq
        ended = bool(frames) and isinstance(frames[-1], Finish | Error)
        if not ended and elsewhere is not None and record is not None:
            session.relay(elsewhere, record.owners.get(gid, ""), last)
        return last

    def _select_subprotocol(
        self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """The client's first tokenwire subprotocol; none offered means JSON."""
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
        if path in self.websocket_paths:
            return self._check_handshake(connection, request)
        if (plain := self.plain_route(path)) is not None:
            status, body, content_type, headers = plain
            return _response(status, body, content_type, headers)
        return connection.respond(HTTPStatus.NOT_FOUND, NOT_FOUND_HINT.format(path=path[:100]))

    def plain_route(
        self, path: str
    ) -> tuple[HTTPStatus, bytes, str, Sequence[tuple[str, str]]] | None:
        """The answer to ``GET path`` for the plain HTTP routes (None: no such route)."""
        text = "text/plain; charset=utf-8"
        if path == "/healthz":
            return HTTPStatus.OK, b"ok\n", text, ()
        if path == "/readyz":
            if self.draining:
                return HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n", text, ()
            return HTTPStatus.OK, b"ready\n", text, ()
        if path == "/metrics":
            return HTTPStatus.OK, self.metrics.render(), CONTENT_TYPE, ()
        if (asset := web.ASSETS.get(path)) is not None:
            return HTTPStatus.OK, asset.body, asset.content_type, asset.headers
        return None

    @property
    def requires_key(self) -> bool:
        return bool(self._keys)

    def origin_allowed(self, origins: Sequence[str]) -> bool:
        """Whether a request with these ``Origin`` headers may be served."""
        if not self._origins:
            return True
        return len(origins) <= 1 and (not origins or origins[0] in self._origins)

    def admission(
        self, origins: Sequence[str], key: bytes | None, *, need_room: bool = True
    ) -> Refusal | None:
        """Whether a new client may be served, judged once for every surface
        in the contract's order (origin, key, draining, full); the refusal
        is counted here and each surface renders it (a WebSocket handshake's
        status, OpenAI's error body). ``key``: the configured key the
        request presented; ``need_room``: it opens a session (a model list
        does not). Only attached sessions count against ``max_sessions``:
        detached ones make room (``_make_room``)."""
        refusal = None
        if not self.origin_allowed(origins):
            refusal = Refusal.ORIGIN
        elif self._keys and key is None:
            refusal = Refusal.KEY
        elif need_room and self.draining:
            refusal = Refusal.DRAINING
        elif need_room and len(self.connections) >= self.settings.max_sessions:
            refusal = Refusal.FULL
        if refusal is not None:
            self.metrics.handshakes_rejected.labels(str(refusal.status.value)).inc()
        return refusal

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        refusal = self.admission(
            request.headers.get_all("Origin"), self._presented_key(request.headers)
        )
        if refusal is None:
            return None
        response = connection.respond(refusal.status, refusal.text + "\n")
        if refusal is Refusal.KEY:
            response.headers["WWW-Authenticate"] = 'Bearer realm="tokenwire"'
        return response

    def _presented_key(self, headers: Headers) -> bytes | None:
        """The configured key the handshake presented (None: none, or no keys)."""
        return self.key_of(
            headers.get_all("Authorization"), headers.get_all("Sec-WebSocket-Protocol")
        )

    def key_of(
        self, authorization: Sequence[str], subprotocols: Sequence[str] = ()
    ) -> bytes | None:
        """The configured key presented in these ``Authorization`` headers (as
        ``Bearer``) or offered subprotocols (None: none, or no keys)."""
        presented = [
            value[len("Bearer ") :].strip().encode()
            for value in authorization
            if value[: len("Bearer ")].lower() == "bearer "
        ]
        for header in subprotocols:
            for offer in header.split(","):
                prefix, _, encoded = offer.strip().partition(AUTH_SUBPROTOCOL_PREFIX)
                if not prefix and encoded and (key := _decode_key(encoded)) is not None:
                    presented.append(key)
        # Compare against every key, in constant time for each.
        found = None
        for k in self._keys:
            for p in presented:
                if hmac.compare_digest(p, k):
                    found = k
        return found


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
