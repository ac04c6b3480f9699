"""The surface contract: how a wire format other than tokenwire's own is served.

A *surface* is a protocol clients already speak (OpenAI's Chat Completions
over HTTP, its Responses events over a WebSocket, ...). The server runs every
surface's generations the same way (admission, limits, engines, the
assembler); what differs is only the translation, and that is pure, here in
``tokenwire.protocol``:

- a request parser: the client's request (decoded JSON) in, a
  ``SurfaceRequest`` out (the ``Generate`` it asks for and the translator for
  its answer), or ``BadMessage`` naming the field;
- a ``Translator``: the generation's frames in, the surface's wire messages
  out, as bytes: SSE events (``data: ...\\n\\n``), WebSocket messages, or the
  one JSON body of a request that did not ask to stream.

``tokenwire.server.surfaces`` does the I/O: a route table maps a method and a
path to a surface, and one HTTP link (``surfaces/http.py``) or WebSocket link
serves any translator. ``docs/architecture.md`` has the recipe for a new one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from .messages import Generate, GenerationFrame


class Surface(enum.StrEnum):
    """A protocol tokenwire serves."""

    WS = "ws"
    """tokenwire's own, at ``/v1/ws`` (resumable)."""
    RESPONSES = "responses"
    """OpenAI's Responses API at ``/v1/responses`` (WebSocket mode, and HTTP)."""
    CHAT_COMPLETIONS = "chat_completions"
    """OpenAI's Chat Completions over HTTP (SSE or one JSON body)."""
    UI = "ui"
    """The AI SDK's UI message stream (``useChat``), at ``/api/chat``."""
    ANTHROPIC = "anthropic_messages"
    """Anthropic's Messages API, at ``POST /v1/messages``."""

    @property
    def resumable(self) -> bool:
        """Whether its sessions outlive a dropped connection (its clients know ``resume``)."""
        return self is Surface.WS


class Translator(Protocol):
    """One generation's frames as a surface's wire messages."""

    def opening(self) -> list[bytes]:
        """What goes out before the first frame's messages (once the
        generation is known to have output)."""
        ...

    def translate(self, frame: GenerationFrame) -> list[bytes]:
        """The messages for one frame, in order (none while a whole body is
        being built: its one message comes with the terminal frame)."""
        ...


@dataclass(frozen=True, slots=True)
class SurfaceRequest:
    """What a surface's request asks for."""

    generate: Generate
    """The generation to run."""
    translator: Translator
    """How its frames are written back."""
    stream: bool
    """Whether the answer streams (SSE) or is one body."""
    headers: Mapping[str, str] | None = None
    """A stream's response headers, when the surface names its own."""
    keepalive: bytes = b": keep-alive\n\n"
    """What a silent stream gets every ``sse_keepalive`` seconds (an SSE
    comment; Anthropic's surface sends its ``ping`` event)."""
