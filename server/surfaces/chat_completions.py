"""OpenAI's HTTP surface: ``POST /v1/chat/completions`` and ``GET /v1/models``.

The server listens on one port for everything. ``FrontConnection`` (the
``websockets`` connection class the server uses) reads a request's first
line before websockets does: a request that cannot be a WebSocket
handshake (any method but GET, or one of ``HTTP_PATHS``) is handed, with
its socket, to aiohttp's HTTP/1.1 server (keep-alive, chunked bodies,
``handler_cancellation`` so a client that goes away cancels its request).
websockets accepts no request body, so a ``POST`` could not be served
there.

A chat completion is a session of its own, not resumable, with one
generation: the same admission, limits, engines, assembler and metrics as
``/v1/ws``. ``HttpLink`` is its link: it writes the frames, translated by
``tokenwire.protocol.openai_chat``, as SSE (``stream: true``) or as one
JSON body. A refusal or a failure before any output is an HTTP error with
OpenAI's error body (a 429 carries ``Retry-After``); a failure after output
has begun is an SSE ``error`` event, as OpenAI sends it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import msgspec
import structlog
from aiohttp import web
from websockets.asyncio.server import ServerConnection

from tokenwire.protocol import BadMessage, Error, Finish, ServerFrame
from tokenwire.protocol.openai_chat import ChatChunks, ChatCompletion, ChatRequest, chat_request
from tokenwire.protocol.openai_common import (
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    UNAUTHORIZED,
    OpenAIErrorKind,
    error_body,
    error_kind,
)

from ..errors import CloseCode, Refusal
from ..sessions.link import MERGE_BACKLOG, LinkBase, resolve

if TYPE_CHECKING:
    from ..app import TokenwireServer
    from ..sessions.session import Session

log = structlog.get_logger("tokenwire.server")

CHAT_PATH: Final = "/v1/chat/completions"
MODELS_PATH: Final = "/v1/models"
HTTP_PATHS: Final = frozenset({CHAT_PATH.encode(), MODELS_PATH.encode()})
"""Paths served over plain HTTP whatever the method."""
REQUEST_LINE_LIMIT: Final = 8192
"""Bytes of a request's first line read before deciding who serves it."""
KEEPALIVE_TIMEOUT: Final = 75.0
"""Seconds an idle HTTP keep-alive connection stays open."""
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}

_decode = msgspec.json.decode


def _dumps(value: Any) -> str:
    """aiohttp's ``json_response`` encoder: msgspec's."""
    return msgspec.json.encode(value).decode()


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
        self, *args: Any, http: Callable[[], asyncio.Protocol] | None = None, **kwargs: Any
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
        if end < 0 and len(head) < REQUEST_LINE_LIMIT:
            self._line = head
            return
        self._line = None
        if end < 0 or not _is_http(head[:end]):
            super().data_received(head)
            return
        assert self._http is not None
        http = self._http()
        transport = self.transport
        transport.set_protocol(http)
        http.connection_made(transport)
        http.data_received(head)
        # websockets' handshake task ends now, leaving the socket to aiohttp.
        self.transport = _Released()  # type: ignore[assignment]
        self.request_rcvd.set_result(None)


def _is_http(line: bytes) -> bool:
    method, _, rest = line.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    return method != b"GET" or path in HTTP_PATHS


def json_error(
    kind: OpenAIErrorKind,
    message: str,
    code: str | None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        error_body(message, kind, code, param),
        status=kind.status,
        headers=headers,
        dumps=_dumps,
    )


def error_response(frame: Error) -> web.Response:
    """A generation's ``error`` frame as an HTTP error (a 429 or 503 with ``Retry-After``)."""
    headers = None
    if frame.retry_after_ms is not None:
        headers = {"Retry-After": str(max(1, -(-frame.retry_after_ms // 1000)))}
    return json_error(error_kind(frame.code), frame.message, frame.code, headers=headers)


class OpenAIHttp:
    """The aiohttp application behind ``/v1/chat/completions`` and ``/v1/models``."""

    def __init__(self, server: TokenwireServer) -> None:
        self.server = server
        self._runner: web.AppRunner | None = None

    async def start(self) -> Callable[[], asyncio.Protocol]:
        """Set the application up; returns the protocol factory connections go to."""
        app = web.Application(client_max_size=self.server.settings.max_message_bytes)
        app.router.add_route("*", MODELS_PATH, self.models)
        app.router.add_route("*", CHAT_PATH, self.chat_completions)
        app.router.add_route("*", "/{tail:.*}", self.other)
        self._runner = runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        await runner.setup()
        assert runner.server is not None
        return runner.server

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- routes -----------------------------------------------------------------

    async def models(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return json_error(METHOD_NOT_ALLOWED, f"{request.method} is not allowed here", None)
        key = self.server.gate.key_of(request.headers.getall("Authorization", []))
        if (refused := self._refused(request, key, need_room=False)) is not None:
            return refused
        created = int(self.server.started_at)
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "tokenwire"}
            for name in self.server.models
        ]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return json_error(METHOD_NOT_ALLOWED, "use POST", None)
        key = self.server.gate.key_of(request.headers.getall("Authorization", []))
        if (refused := self._refused(request, key, need_room=True)) is not None:
            return refused
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.server.settings.max_message_bytes
            return json_error(PAYLOAD_TOO_LARGE, f"the body is over {limit} bytes", None)
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        try:
            try:
                body = _decode(raw)
            except msgspec.DecodeError as exc:
                raise BadMessage(f"invalid JSON: {exc}") from None
            chat = chat_request(body, completion_id)
        except BadMessage as exc:
            self.server.metrics.errors.labels("bad_message").inc()
            kind = error_kind("bad_message")
            return json_error(kind, exc.message, "bad_message", param=exc.path)
        return await HttpLink(self.server, request, chat).serve(key)

    async def other(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method in ("GET", "HEAD") and (plain := self.server.plain_route(path)):
            status, body, content_type, headers = plain
            response = web.Response(status=status, body=body, headers=dict(headers))
            response.headers["Content-Type"] = content_type
            return response
        if path in self.server.websocket_paths:
            return json_error(
                OpenAIErrorKind(426, "invalid_request_error"),
                f"{path} is a WebSocket endpoint: open it with a WebSocket client",
                None,
            )
        return json_error(
            NOT_FOUND,
            f"no route {request.method} {path[:100]}: tokenwire serves POST {CHAT_PATH}, "
            f"GET {MODELS_PATH}, and WebSockets at /v1/responses and /v1/ws",
            None,
        )

    def _refused(
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
    """One chat completion's link: its session's frames, written as SSE or
    as one JSON body to the HTTP response."""

    surface = "chat_completions"

    def __init__(self, server: TokenwireServer, request: web.Request, chat: ChatRequest) -> None:
        self.server = server
        self.context = server
        self.session: Session | None = None
        self.request = request
        self.chat = chat
        self.id = chat.generate.id
        self.encoding = "sse" if chat.stream else "json"
        self._outbox: deque[ServerFrame] = deque()
        self._writer_idle: asyncio.Future[None] | None = None
        self._closed = False
        self._task: asyncio.Task[Any] | None = None
        self._send_started = 0.0
        self._done: asyncio.Future[None] | None = None

    async def serve(self, key: bytes | None) -> web.StreamResponse:
        """Run the completion; its response once written (the client gone: cancelled)."""
        server = self.server
        self._task = asyncio.current_task()
        session = server.open_session(self, key)
        try:
            session.handle(self.chat.generate)
            if self.chat.stream:
                return await self._stream()
            return await self._collect()
        finally:
            await server.close_session(self, session)
            resolve(self._done)

    async def _next(self) -> list[ServerFrame]:
        """The frames queued now (waiting for one), held text included."""
        outbox = self._outbox
        while not outbox:
            if self._holding:
                self.release_held()
                continue
            self._writer_idle = asyncio.get_running_loop().create_future()
            await self._writer_idle
            self._writer_idle = None
        frames = list(outbox)
        outbox.clear()
        if self._holding:  # caught up: the held text goes out, merged
            self.release_held()
            frames += outbox
            outbox.clear()
        return frames

    async def _stream(self) -> web.StreamResponse:
        model = self.chat.generate.model
        chunks = ChatChunks(self.id, model, int(time.time()), include_usage=self.chat.include_usage)
        response: web.StreamResponse | None = None
        clock = asyncio.get_running_loop().time
        frames_sent = self.server.metrics.frames_sent
        while True:
            frames = [f for f in await self._next() if getattr(f, "id", None) == self.id]
            if not frames:
                continue
            if response is None:
                if isinstance(frames[0], Error):
                    return error_response(frames[0])
                response = web.StreamResponse(headers=SSE_HEADERS)
                await response.prepare(self.request)
            data = b"".join(chunks.feed(f) for f in frames)  # type: ignore[arg-type]
            self._send_started = clock()
            await response.write(data)
            self._send_started = 0.0
            frames_sent.inc(len(frames))
            if isinstance(frames[-1], Finish | Error):
                await response.write_eof()
                return response

    async def _collect(self) -> web.StreamResponse:
        completion = ChatCompletion(self.id, self.chat.generate.model, int(time.time()))
        while True:
            for frame in await self._next():
                if getattr(frame, "id", None) != self.id:
                    continue
                if isinstance(frame, Error):
                    return error_response(frame)
                if isinstance(frame, Finish):
                    return web.json_response(completion.body(frame), dumps=_dumps)
                completion.feed(frame)  # type: ignore[arg-type]

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

    async def close(self, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """Wait until the response is written (the drain ended its generation)."""
        if self._task is None or self._task.done():
            return
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._done)
