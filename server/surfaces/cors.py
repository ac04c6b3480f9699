"""CORS for the HTTP surfaces: a frontend served from one of
``allowed_origins`` (a Next.js app on ``localhost:3000``) may call them.

With ``allowed_origins`` set, a request from a listed origin gets
``Access-Control-Allow-Origin`` on every answer, streams included (set as
the response is prepared), and its preflight ``OPTIONS`` is answered with
the methods and headers the surfaces take. An origin not listed gets
nothing (and the gate refuses its requests with 403). Without
``allowed_origins``, no CORS header at all: same origin only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web

METHODS: Final = "GET, POST, OPTIONS"
HEADERS: Final = "authorization, content-type"
EXPOSED: Final = "retry-after, x-vercel-ai-ui-message-stream"
MAX_AGE: Final = "600"
"""Seconds a browser may keep a preflight's answer."""


class Cors:
    """The middleware and the prepare hook, for ``origins``."""

    def __init__(self, origins: Sequence[str] | None) -> None:
        self.origins = frozenset(origins or ())

    def install(self, app: web.Application) -> None:
        if self.origins:
            app.middlewares.append(self.preflight)
            app.on_response_prepare.append(self.on_prepare)

    def _allowed(self, request: web.BaseRequest) -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin is not None and origin in self.origins else None

    @web.middleware
    async def preflight(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.method == "OPTIONS" and self._allowed(request) is not None:
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": METHODS,
                    "Access-Control-Allow-Headers": HEADERS,
                    "Access-Control-Max-Age": MAX_AGE,
                },
            )
        return await handler(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if (origin := self._allowed(request)) is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED
            response.headers.add("Vary", "Origin")
