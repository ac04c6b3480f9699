"""HTTP surfaces: one generic link that serves any surface's translator.

The route table (``routes.py``) names the HTTP surfaces; ``HttpSurfaces``
is the aiohttp application behind them (and ``GET /v1/models``). A request
is a session of its own, not resumable, with one generation: the same
admission (``Gate.admission``), limits, engines, assembler and metrics as
``/v1/ws``. ``HttpLink`` is its link: it writes the frames, translated by the
surface's ``Translator`` (``tokenwire.protocol.surface``), as SSE or as one
JSON body. A refusal or a failure before any output is an HTTP error with
OpenAI's error body (a 429 carries ``Retry-After``); a failure after output
has begun is the translator's own (an SSE ``error`` event for Chat
Completions, as OpenAI sends it).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog
from aiohttp import web

from tokenwire.protocol import (
    BadMessage,
    Cancel,
    Error,
    Finish,
    Resume,
    Resumed,
    ResumeFailed,
    ServerFrame,
)
from tokenwire.protocol.codec import decode_json, too_deep_is_bad_message
from tokenwire.protocol.openai_common import (
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    UNAUTHORIZED,
    OpenAIErrorKind,
    error_kind,
)
from tokenwire.protocol.surface import Surface, SurfaceRequest

from ..errors import CloseCode, Refusal
from ..sessions.link import MERGE_BACKLOG, LinkBase, resolve
from ..sessions.session import SessionContext
from .answers import JSON_HEADERS, _dumps, error_response, json_error
from .cors import Cors
from .deadlines import REQUEST_TIMEOUT, DeadlinedHandler, RefusalLog, too_slow, track_requests
from .gate import Gate
from .routes import HTTP_ROUTES, ROUTES, WEBSOCKET_ROUTES, Route
from .ui import UiChats

if TYPE_CHECKING:
    from ..sessions.session import Session

log = structlog.get_logger("tokenwire.server")

KEEPALIVE_TIMEOUT: Final = 75.0
"""Seconds an idle HTTP keep-alive connection stays open."""
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}

KEEPALIVE: Final = b": keep-alive\n\n"
"""An SSE comment: what a silent stream writes every ``sse_keepalive`` seconds."""

PlainRoute = tuple[HTTPStatus, bytes, str, Sequence[tuple[str, str]]]
"""A plain route's answer: status, body, content type, headers."""


class HttpContext(SessionContext, Protocol):
    """What the HTTP surfaces need of the server (``app.TokenwireServer`` is one)."""

    gate: Gate
    started_at: float

    def plain_route(self, path: str, authorization: Sequence[str] = ()) -> PlainRoute | None: ...

    def open_session(
        self, link: HttpLink, key: bytes | None, *, resumable: bool | None = None
    ) -> Session: ...

    async def close_session(
        self, link: HttpLink, session: Session, *, end: bool = True
    ) -> None: ...

    async def resume(self, link: Any, message: Resume) -> None: ...


class HttpSurfaces:
    """The aiohttp application behind the HTTP routes (``routes.HTTP_ROUTES``)."""

    def __init__(self, server: HttpContext) -> None:
        self.server = server
        self._runner: web.AppRunner | None = None
        self.ui = UiChats(self)

    async def start(self) -> Callable[[bytes], asyncio.Protocol]:
        """Set the application up; returns the protocol factory connections go
        to (given the connection's first request line)."""
        settings = self.server.settings
        app = web.Application(
            client_max_size=settings.max_message_bytes, middlewares=[track_requests]
        )
        Cors(settings.allowed_origins).install(app)
        for route in HTTP_ROUTES.values():
            handler: Callable[[web.Request], Any]
            if route.surface is None:
                handler = self.models
            elif route.surface is Surface.UI:
                handler = self.ui.chat
            else:
                handler = self._generation(route)
            app.router.add_route("*", route.path, handler)
        self.ui.add_routes(app)
        app.router.add_route("*", "/{tail:.*}", self.other)
        self._runner = runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
        await runner.setup()
        server = runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def connection(line: bytes) -> asyncio.Protocol:
            return DeadlinedHandler(
                server,
                loop=loop,
                header_timeout=settings.http_header_timeout,
                keepalive_timeout=KEEPALIVE_TIMEOUT,
                access_log=None,
                logger=RefusalLog(line),
            )

        return connection

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- routes -----------------------------------------------------------------

    async def models(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return json_error(METHOD_NOT_ALLOWED, f"{request.method} is not allowed here", None)
        key = self.server.gate.key_of(request.headers.getall("Authorization", []))
        if (refused := self.refused(request, key, need_room=False)) is not None:
            return refused
        created = int(self.server.started_at)
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "tokenwire"}
            for name in self.server.models
        ]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    def _generation(self, route: Route) -> Callable[[web.Request], Any]:
        """The handler of an HTTP surface's route: parse, admit, run one generation."""
        parse = route.parse
        surface = route.surface
        assert parse is not None and surface is not None

        async def handle(request: web.Request) -> web.StreamResponse:
            admitted = await self.admit(request, route.method)
            if isinstance(admitted, web.StreamResponse):
                return admitted
            key, raw = admitted
            try:
                with too_deep_is_bad_message():
                    asked = parse(decode_json(raw), route.new_id(), int(time.time()))
            except BadMessage as exc:
                return self.bad_message(exc)
            return await HttpLink(self.server, surface, request, asked).serve(key)

        return handle

    def link(self, surface: Surface, request: web.Request, asked: SurfaceRequest) -> HttpLink:
        """The link that runs ``asked`` for ``request``."""
        return HttpLink(self.server, surface, request, asked)

    async def admit(
        self, request: web.Request, method: str, *, need_room: bool = True, body: bool = True
    ) -> tuple[bytes | None, bytes] | web.StreamResponse:
        """A request to a route taking ``method``: the key it presented and its
        body (``body`` False: none read), or the answer that refuses it (405,
        the gate's refusal, 413, 408)."""
        if request.method != method:
            return json_error(METHOD_NOT_ALLOWED, f"use {method}", None)
        key = self.server.gate.key_of(request.headers.getall("Authorization", []))
        if (refused := self.refused(request, key, need_room=need_room)) is not None:
            return refused
        if not body:
            return key, b""
        raw = await self.read_body(request)
        if isinstance(raw, web.StreamResponse):
            return raw
        return key, raw

    def bad_message(self, exc: BadMessage) -> web.Response:
        """A request that could not be taken: 400 with OpenAI's body, counted."""
        self.server.metrics.errors.labels("bad_message").inc()
        kind = error_kind("bad_message")
        return json_error(kind, exc.message, "bad_message", param=exc.path)

    async def read_body(self, request: web.Request) -> bytes | web.StreamResponse:
        """The request's body, or the error response when it is too large
        (413) or too slow (408, ``http_body_timeout``)."""
        settings = self.server.settings
        try:
            async with asyncio.timeout(settings.http_body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = settings.max_message_bytes
            return json_error(PAYLOAD_TOO_LARGE, f"the body is over {limit} bytes", None)
        except TimeoutError:
            limit_s = settings.http_body_timeout
            log.warning("request too slow", phase="body", limit_s=limit_s, peer=request.remote)
            slow = json_error(REQUEST_TIMEOUT, too_slow("body", limit_s), "request_timeout")
            slow.force_close()
            return slow

    async def other(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        authorization = request.headers.getall("Authorization", [])
        if request.method in ("GET", "HEAD") and (
            plain := self.server.plain_route(path, authorization)
        ):
            status, body, content_type, headers = plain
            response = web.Response(status=status, body=body, headers=dict(headers))
            response.headers["Content-Type"] = content_type
            return response
        if path in WEBSOCKET_ROUTES:
            return json_error(
                OpenAIErrorKind(426, "invalid_request_error"),
                f"{path} is a WebSocket endpoint: open it with a WebSocket client",
                None,
            )
        http = ", ".join(f"{r.method} {r.path}" for r in ROUTES if not r.websocket)
        sockets = " and ".join(r.path for r in ROUTES if r.websocket)
        return json_error(
            NOT_FOUND,
            f"no route {request.method} {path[:100]}: tokenwire serves {http}, "
            f"and WebSockets at {sockets}",
            None,
        )

    def refused(
        self, request: web.Request, key: bytes | None, *, need_room: bool
    ) -> web.Response | None:
        """An error response if the request may not be served (``key``: the one it presented)."""
        origins = request.headers.getall("Origin", [])
        match self.server.gate.admission(origins, key, need_room=need_room):
            case None:
                return None
            case Refusal.ORIGIN:
                return json_error(
                    OpenAIErrorKind(403, "permission_error"), "origin not allowed", None
                )
            case Refusal.KEY:
                return json_error(
                    UNAUTHORIZED,
                    "missing or wrong API key (send Authorization: Bearer <key>)",
                    "invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="tokenwire"'},
                )
            case refusal:
                return json_error(
                    error_kind("overloaded"),
                    refusal.text,
                    "overloaded",
                    headers={"Retry-After": "1"},
                )


class HttpLink(LinkBase):
    """One HTTP request's link: its session's frames, translated by its
    surface's translator, written as SSE or as one JSON body."""

    def __init__(
        self, server: HttpContext, surface: Surface, request: web.Request, asked: SurfaceRequest
    ) -> None:
        self.server = server
        self.context = server
        self.surface = surface
        self.session: Session | None = None
        self.request = request
        self.asked = asked
        self.id = asked.generate.id
        self.encoding = "sse" if asked.stream else "json"
        self._outbox: deque[ServerFrame] = deque()
        self._writer_idle: asyncio.Future[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._send_started = 0.0
        self._done: asyncio.Future[None] | None = None
        self.finish: Finish | None = None
        """The generation's finish, once it came."""
        self.ended = False
        """Whether the client got the whole answer, its end included."""

    async def serve(
        self,
        key: bytes | None,
        *,
        resumable: bool = False,
        opened: Callable[[Session], Awaitable[None]] | None = None,
        rejoin: str | None = None,
    ) -> web.StreamResponse:
        """Run the generation; its response once written. The client gone,
        it is cancelled, unless ``resumable``: then its session detaches
        and it runs on for ``orphan_timeout``, waiting for a resume.
        ``opened`` is awaited with the new session before the generation
        starts. With ``rejoin`` (a resume token), nothing starts: the
        session it names is resumed, the generation replayed from its first
        frame (nothing to resume: 204)."""
        server = self.server
        self._task = asyncio.current_task()
        session = server.open_session(self, key, resumable=resumable or rejoin is not None)
        try:
            if rejoin is not None:
                await server.resume(self, Resume(token=rejoin, generations={self.id: -1}))
            else:
                if opened is not None:
                    await opened(session)
                session.handle(self.asked.generate)
            if self.asked.stream:
                return await self._stream()
            return await self._collect()
        finally:
            session = self.session or session  # a resume replaced the new one
            await server.close_session(self, session, end=self.ended or not session.resumable)
            resolve(self._done)

    async def _next(self, timeout: float | None = None) -> list[ServerFrame] | None:
        """The frames queued now (waiting for one), held text included; None
        when ``timeout`` seconds passed with none."""
        outbox = self._outbox
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not outbox:
            if self._holding:
                self.release_held()
                continue
            if deadline is not None and loop.time() >= deadline:
                return None
            self._writer_idle = waiter = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, resolve, waiter)
            await waiter
            self._writer_idle = None
            if timer is not None:
                timer.cancel()
        frames = list(outbox)
        outbox.clear()
        if self._holding:  # caught up: the held text goes out, merged
            self.release_held()
            frames += outbox
            outbox.clear()
        return frames

    async def _stream(self) -> web.StreamResponse:
        translator = self.asked.translator
        response: web.StreamResponse | None = None
        opened = False
        clock = asyncio.get_running_loop().time
        frames_sent = self.server.metrics.frames_sent
        keepalive = self.server.settings.sse_keepalive
        while True:
            queued = await self._next(keepalive)
            if queued is None:  # silent for sse_keepalive: a comment keeps proxies open
                if response is None:
                    response = await self._prepare()
                await response.write(KEEPALIVE)
                continue
            frames = [f for f in queued if getattr(f, "id", None) == self.id]
            if not opened and frames and isinstance(frames[0], Resumed | ResumeFailed):
                # a replay's answer: nothing to resume, or the frames follow
                resumed = frames.pop(0)
                if isinstance(resumed, ResumeFailed):
                    if response is None:
                        return web.Response(status=HTTPStatus.NO_CONTENT)
                    await response.write_eof()  # a keep-alive went out: an empty stream
                    return response
            if not frames:
                continue
            out: list[bytes] = []
            if not opened:
                if response is None and isinstance(frames[0], Error):
                    return error_response(frames[0])
                if response is None:
                    response = await self._prepare()
                out += translator.opening()
                opened = True
            assert response is not None
            for frame in frames:
                out += translator.translate(frame)  # type: ignore[arg-type]
            self._send_started = clock()
            await response.write(b"".join(out))
            self._send_started = 0.0
            frames_sent.inc(len(frames))
            if isinstance(frames[-1], Finish | Error):
                if isinstance(frames[-1], Finish):
                    self.finish = frames[-1]
                await response.write_eof()
                self.ended = True
                return response

    async def _prepare(self) -> web.StreamResponse:
        """The stream's response, its headers sent."""
        response = web.StreamResponse(headers=self.asked.headers or SSE_HEADERS)
        await response.prepare(self.request)
        return response

    async def _collect(self) -> web.StreamResponse:
        translator = self.asked.translator
        translator.opening()
        while True:
            for frame in await self._next() or ():
                if getattr(frame, "id", None) != self.id:
                    continue
                if isinstance(frame, Error):
                    self.ended = True
                    return error_response(frame)
                if body := translator.translate(frame):  # type: ignore[arg-type]
                    self.ended = True
                    return web.Response(body=b"".join(body), headers=JSON_HEADERS)

    # -- what a session asks of its link ---------------------------------------------

    def _wake_writer(self) -> None:
        resolve(self._writer_idle)

    @property
    def behind(self) -> bool:
        return self._send_started > 0.0 or len(self._outbox) >= MERGE_BACKLOG

    def send(self, frames: Iterable[ServerFrame]) -> None:
        self._outbox.extend(frames)
        self._wake_writer()

    def check_send(self, now: float, timeout: float) -> None:
        """The watchdog's call: a write blocked for ``timeout`` ends the request."""
        if 0.0 < self._send_started < now - timeout and self._task is not None:
            log.warning("slow reader", surface=self.surface)
            self._send_started = 0.0
            self._task.cancel()

    def stop(self) -> None:
        """Cancel the generation (its stream ends with the surface's own end)."""
        if self.session is not None:
            self.session.handle(Cancel(id=self.id))

    async def close(self, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """Wait until the response is written (the drain ended its generation);
        a response whose session a resume took elsewhere ends at once."""
        if self._task is None or self._task.done():
            return
        if code is CloseCode.RESUMED_ELSEWHERE:
            self._task.cancel()
            return
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._done)
