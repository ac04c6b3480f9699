"""One HTTP request's link: the frames of its session's one generation,
translated by its surface's ``Translator`` (``tokenwire.protocol.surface``)
and written as SSE or as one JSON body.

A refusal or a failure before any output is an HTTP error with OpenAI's
error body (a 429 carries ``Retry-After``); a failure after output has
begun is the translator's own. A silent stream gets the surface's
keep-alive every ``sse_keepalive`` seconds. With ``resumable``, the
client's leaving detaches the session instead of ending it (the AI SDK's
chats); with ``rejoin``, the link resumes a session and replays its
generation (``GET /api/chat/{id}/stream``).
"""

from __future__ import annotations

import asyncio
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
from tokenwire.protocol.surface import Surface, SurfaceRequest

from ..errors import CloseCode
from ..sessions.link import MERGE_BACKLOG, LinkBase, resolve
from ..sessions.session import SessionContext
from .answers import JSON_HEADERS, error_response
from .gate import Gate

if TYPE_CHECKING:
    from ..sessions.session import Session

log = structlog.get_logger("tokenwire.server")

SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}

PlainRoute = tuple[HTTPStatus, bytes, str, Sequence[tuple[str, str]]]
"""A plain route's answer: status, body, content type, headers."""


class SurfaceHost(Protocol):
    """What a surface's handlers (the AI SDK's chats, Responses over HTTP,
    Anthropic's Messages) need of the HTTP surfaces (``http.HttpSurfaces``):
    one admission, the 400 of a bad request, the link that runs an answer."""

    @property
    def server(self) -> Any: ...

    @property
    def ui(self) -> Any:
        """The chats (``ui.UiChats``): where answers are named for a resume."""
        ...

    async def admit(
        self,
        request: web.Request,
        method: str,
        *,
        need_room: bool = True,
        body: bool = True,
        authorization: Sequence[str] | None = None,
    ) -> tuple[bytes | None, bytes] | web.StreamResponse: ...

    def bad_message(self, exc: BadMessage) -> web.Response: ...

    def link(self, surface: Surface, request: web.Request, asked: SurfaceRequest) -> HttpLink: ...


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
        keep: bool = False,
        detach: bool = False,
    ) -> web.StreamResponse:
        """Run the generation; its response once written. The client gone,
        it is cancelled, unless ``resumable``: then its session detaches
        and it runs on for ``orphan_timeout``, waiting for a resume.
        ``opened`` is awaited with the new session before the generation
        starts. With ``rejoin`` (a resume token), nothing starts: the
        session it names is resumed, the generation replayed from its first
        frame (nothing to resume: 204). With ``keep``, a resumable session
        stays (detached, for ``resume_ttl``) even once its client got the
        whole answer; with ``detach``, the generation starts and the link
        leaves it at once (a background response): the answer is 202, or
        the refusal."""
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
                if detach:
                    refused = [f for f in self._outbox if isinstance(f, Error)]
                    return error_response(refused[0]) if refused else web.Response(status=202)
            if self.asked.stream:
                return await self._stream()
            return await self._collect()
        finally:
            session = self.session or session  # a resume replaced the new one
            end = (self.ended and not keep) or not session.resumable
            await server.close_session(self, session, end=end)
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
                await response.write(self.asked.keepalive)
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
                if isinstance(frame, Finish):
                    self.finish = frame
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
