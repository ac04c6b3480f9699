"""Who may be served: API keys, allowed origins, and room for one more.

The ``Gate`` is what every surface asks before it serves a client (a
WebSocket handshake, a chat completion, a model list): one rule, in the
contract's order (origin 403, key 401, draining or full 503), whose
``Refusal`` each surface renders in its own format. It knows of the server
only what that rule needs (``Admitting``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence, Sized
from typing import Final, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..config import ServerSettings
from ..errors import Refusal
from ..metrics import Metrics

AUTH_SUBPROTOCOL_PREFIX: Final = "tokenwire.bearer."
"""Browsers cannot set headers on a WebSocket handshake: they offer the key as
an extra subprotocol ``tokenwire.bearer.<base64url(key)>``, which the server
reads and never selects."""


class Admitting(Protocol):
    """What admission reads of the server at the moment it judges."""

    @property
    def draining(self) -> bool: ...

    @property
    def connections(self) -> Sized: ...


class Gate:
    """API keys, allowed origins, and ``max_sessions``, judged for every surface."""

    def __init__(self, settings: ServerSettings, metrics: Metrics, server: Admitting) -> None:
        self._keys = [k.encode() for k in settings.api_keys or ()]
        self._origins = frozenset(settings.allowed_origins or ())
        self._max_sessions = settings.max_sessions
        self._metrics = metrics
        self._server = server

    @property
    def requires_key(self) -> bool:
        return bool(self._keys)

    def origin_allowed(self, origins: Sequence[str]) -> bool:
        """Whether a request with these ``Origin`` headers may be served."""
        if not self._origins:
            return True
        return len(origins) <= 1 and (not origins or origins[0] in self._origins)

    def admission(
        self,
        origins: Sequence[str],
        key: bytes | None,
        *,
        need_room: bool = True,
        need_key: bool = True,
    ) -> Refusal | None:
        """Whether a new client may be served, judged once for every surface
        in the contract's order (origin, key, draining, full); the refusal
        is counted here and each surface renders it (a WebSocket handshake's
        status, OpenAI's error body). ``key``: the configured key the
        request presented; ``need_room``: it opens a session (a model list
        does not). Only attached sessions count against ``max_sessions``:
        detached ones make room (``TokenwireServer._make_room``)."""
        refusal = None
        if not self.origin_allowed(origins):
            refusal = Refusal.ORIGIN
        elif self._keys and key is None and need_key:
            refusal = Refusal.KEY
        elif need_room and self._server.draining:
            refusal = Refusal.DRAINING
        elif need_room and len(self._server.connections) >= self._max_sessions:
            refusal = Refusal.FULL
        if refusal is not None:
            self._metrics.handshakes_rejected.labels(str(refusal.status.value)).inc()
        return refusal

    def handshake(
        self, connection: ServerConnection, request: Request, *, need_key: bool = True
    ) -> Response | None:
        """A WebSocket handshake's refusal as its HTTP response (None: go on;
        ``need_key`` False: the surface takes keys in its messages)."""
        refusal = self.admission(
            request.headers.get_all("Origin"),
            self.presented_key(request.headers),
            need_key=need_key,
        )
        if refusal is None:
            return None
        response = connection.respond(refusal.status, refusal.text + "\n")
        if refusal is Refusal.KEY:
            response.headers["WWW-Authenticate"] = 'Bearer realm="tokenwire"'
        return response

    def presented_key(self, headers: Headers) -> bytes | None:
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
