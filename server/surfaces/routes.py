"""The route table: which surface a method and a path reach.

Every surface is named by ``tokenwire.protocol.surface.Surface`` (in
metrics' ``surface`` label, in logs, on its sessions). ``ROUTES`` maps a method and a path to one:
WebSocket surfaces are reached by a GET handshake (``app.TokenwireServer``
picks the link), HTTP ones by their method (``http.HttpSurfaces`` serves
them with one generic link, given the surface's parser from
``tokenwire.protocol``). The port splitter (``front.py``) hands a request
to the HTTP server when no WebSocket route can take it.

A new HTTP surface is a parser and translator in ``tokenwire.protocol``
(``protocol/surface.py``), a member of ``Surface`` and a line here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tokenwire.protocol.openai_chat import chat_surface
from tokenwire.protocol.surface import Surface, SurfaceRequest

HttpParser = Callable[[Any, str, int], SurfaceRequest]
"""A surface's request parser: the decoded body, the response's id and its
creation time (Unix seconds) in; ``BadMessage`` for a bad request."""


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of the route table."""

    method: str
    path: str
    surface: Surface | None
    """None: a route that runs no generation (the model list)."""
    websocket: bool = False
    """Reached by a WebSocket handshake (``GET``)."""
    parse: HttpParser | None = None
    """An HTTP surface's request parser (None for ``/api/chat`` and ``POST
    /v1/responses``, whose requests continue what the server kept:
    ``surfaces/ui.py``, ``surfaces/responses_http.py``)."""
    id_prefix: str = ""
    """An HTTP surface's response ids: this prefix and 24 hex digits."""

    def new_id(self) -> str:
        return f"{self.id_prefix}{secrets.token_hex(12)}"


WS_PATH: Final = "/v1/ws"
RESPONSES_PATH: Final = "/v1/responses"
CHAT_PATH: Final = "/v1/chat/completions"
MODELS_PATH: Final = "/v1/models"
MESSAGES_PATH: Final = "/v1/messages"
UI_PATH: Final = "/api/chat"
UI_SOCKET_PATH: Final = "/api/chat/ws"

ROUTES: Final = (
    Route("GET", WS_PATH, Surface.WS, websocket=True),
    Route("GET", RESPONSES_PATH, Surface.RESPONSES, websocket=True),
    Route("POST", RESPONSES_PATH, Surface.RESPONSES, id_prefix="resp_"),
    Route("POST", CHAT_PATH, Surface.CHAT_COMPLETIONS, parse=chat_surface, id_prefix="chatcmpl-"),
    Route("GET", MODELS_PATH, None),
    Route("POST", MESSAGES_PATH, Surface.ANTHROPIC, id_prefix="msg_"),
    Route("POST", UI_PATH, Surface.UI, id_prefix="msg-"),
    Route("GET", UI_SOCKET_PATH, Surface.UI, websocket=True),
)

WEBSOCKET_ROUTES: Final = {route.path: route for route in ROUTES if route.websocket}
HTTP_ROUTES: Final = {route.path: route for route in ROUTES if not route.websocket}
HTTP_PATHS: Final = frozenset(path.encode() for path in HTTP_ROUTES if path not in WEBSOCKET_ROUTES)
"""Paths served over plain HTTP whatever the method (``/v1/responses`` is
HTTP but for a GET, its WebSocket handshake)."""
WEBSOCKET_PATHS: Final = frozenset(path.encode() for path in WEBSOCKET_ROUTES)
API_PREFIXES: Final = (b"/v1/", b"/api/")
"""Paths under them that are no WebSocket route are the HTTP server's, on every
method (so an unknown one is a JSON 404, never the page server's)."""
