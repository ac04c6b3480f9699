"""HTTP surfaces: the aiohttp application behind the HTTP routes.

The route table (``routes.py``) names the HTTP surfaces; ``HttpSurfaces``
is the aiohttp application behind them (and ``GET /v1/models``): one
admission for all (method, key, origin, room, body), and a handler per
surface: Chat Completions (its parser, from ``tokenwire.protocol``), the
AI SDK's chats (``ui.py``), Responses (``responses_http.py``), Anthropic's
Messages (``anthropic.py``). A request is a session of its own with one
generation: the same admission (``Gate.admission``), limits, engines,
assembler and metrics as ``/v1/ws``; ``HttpLink`` (``http_link.py``) is
its link.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog
from aiohttp import web

from tokenwire.protocol import BadMessage
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

from ..errors import Refusal
from .answers import _dumps, json_error
from .anthropic import AnthropicMessages
from .cors import Cors
from .deadlines import REQUEST_TIMEOUT, DeadlinedHandler, RefusalLog, too_slow, track_requests
from .http_link import HttpContext, HttpLink
from .responses_http import HttpResponses
from .routes import HTTP_ROUTES, ROUTES, WEBSOCKET_ROUTES, Route
from .ui import UiChats

log = structlog.get_logger("tokenwire.server")

KEEPALIVE_TIMEOUT: Final = 75.0
"""Seconds an idle HTTP keep-alive connection stays open."""


class HttpSurfaces:
    """The aiohttp application behind the HTTP routes (``routes.HTTP_ROUTES``)."""

    def __init__(self, server: HttpContext) -> None:
        self.server = server
        self._runner: web.AppRunner | None = None
        self.ui = UiChats(self)
        self.responses = HttpResponses(self)
        self.anthropic = AnthropicMessages(self)

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
            elif route.surface is Surface.RESPONSES:
                handler = self.responses.create
            elif route.surface is Surface.ANTHROPIC:
                handler = self.anthropic.create
            else:
                handler = self._generation(route)
            app.router.add_route("*", route.path, handler)
        self.ui.add_routes(app)
        self.anthropic.add_routes(app)
        self.responses.add_routes(app)
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
        self,
        request: web.Request,
        method: str,
        *,
        need_room: bool = True,
        body: bool = True,
        authorization: Sequence[str] | None = None,
    ) -> tuple[bytes | None, bytes] | web.StreamResponse:
        """A request to a route taking ``method``: the key it presented (in
        ``authorization``, else its ``Authorization`` headers) and its body
        (``body`` False: none read), or the answer that refuses it (405, the
        gate's refusal, 413, 408)."""
        if request.method != method:
            return json_error(METHOD_NOT_ALLOWED, f"use {method}", None)
        if authorization is None:
            authorization = request.headers.getall("Authorization", [])
        key = self.server.gate.key_of(authorization)
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
