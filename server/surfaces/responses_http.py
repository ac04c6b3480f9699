"""OpenAI's Responses API over HTTP: ``POST /v1/responses``.

How the OpenAI SDKs' ``client.responses.create(...)``, the Agents SDK and
Codex talk by default. A request is the body of a ``response.create``
(``tokenwire.protocol.openai_responses_request``) plus ``stream``; it runs
as every HTTP surface's does (``HttpLink``: admission, limits, engines,
metrics). ``stream: true`` answers the same ``response.*`` events as the
WebSocket mode, as SSE with ``event:`` lines; ``stream: false`` the
finished ``response`` object. ``previous_response_id`` continues a response
kept by any surface (``store``, the default: kept for ``response_ttl``, in
Redis with ``resume: redis``); a client that leaves its stream cancels it.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgspec
from aiohttp import web

from tokenwire.protocol import BadMessage, ErrorCode, Finish, assistant_message
from tokenwire.protocol.codec import decode_json, too_deep_is_bad_message
from tokenwire.protocol.openai_common import error_kind
from tokenwire.protocol.openai_responses import ResponseEvents, response_generate
from tokenwire.protocol.openai_responses_request import SURFACE_ERRORS, http_response_request
from tokenwire.protocol.surface import Surface, SurfaceRequest

from ..stores.contract import KeptResponse
from ..stores.resume import key_hash
from .answers import json_error
from .responses import PREVIOUS_NOT_FOUND


class ResponsesLink(Protocol):
    """The link that runs one response (``http.HttpLink``)."""

    finish: Finish | None

    async def serve(self, key: bytes | None) -> web.StreamResponse: ...


class ResponsesHost(Protocol):
    """What this surface needs of the HTTP surfaces (``http.HttpSurfaces``)."""

    @property
    def server(self) -> Any: ...

    async def admit(
        self, request: web.Request, method: str, *, need_room: bool = True, body: bool = True
    ) -> tuple[bytes | None, bytes] | web.StreamResponse: ...

    def bad_message(self, exc: BadMessage) -> web.Response: ...

    def link(
        self, surface: Surface, request: web.Request, asked: SurfaceRequest
    ) -> ResponsesLink: ...


class HttpResponses:
    """``POST /v1/responses``."""

    def __init__(self, surfaces: ResponsesHost) -> None:
        self.surfaces = surfaces
        self.server = surfaces.server

    async def create(self, request: web.Request) -> web.StreamResponse:
        surfaces = self.surfaces
        admitted = await surfaces.admit(request, "POST")
        if isinstance(admitted, web.StreamResponse):
            return admitted
        key, raw = admitted
        store = self.server.responses
        owner = key_hash(key)
        try:
            with too_deep_is_bad_message():
                asked, stream = http_response_request(decode_json(raw))
                history: list[dict[str, Any]] = []
                if (previous := asked.previous_response_id) is not None:
                    chain = await store.chain(previous)
                    if chain is None or any(kept.key != owner for kept in chain):
                        return json_error(
                            SURFACE_ERRORS[PREVIOUS_NOT_FOUND],
                            f"no response {previous[:80]!r} to continue: unknown, expired, "
                            "or made with store false",
                            PREVIOUS_NOT_FOUND,
                            param="previous_response_id",
                        )
                    history = [m for kept in reversed(chain) for m in kept.messages]
                response_id = store.new_id()
                generate = response_generate(asked, response_id, history)
        except BadMessage as exc:
            return surfaces.bad_message(exc)
        limit = self.server.settings.max_history_bytes
        if history and len(msgspec.json.encode([*history, *asked.input])) > limit:
            code = ErrorCode.CONVERSATION_LIMIT
            message = f"the conversation would be over max_history_bytes ({limit})"
            return json_error(error_kind(code), message, code, param="previous_response_id")
        events = ResponseEvents(asked, response_id, int(time.time()), sse=True, stream=stream)
        link = surfaces.link(Surface.RESPONSES, request, SurfaceRequest(generate, events, stream))
        response = await link.serve(key)
        finish = link.finish
        if finish is not None and asked.store:
            answer = assistant_message(finish.content, finish.tool_calls)
            kept = KeptResponse(
                key=owner, previous=asked.previous_response_id, messages=[*asked.input, answer]
            )
            await store.put(response_id, kept)
        return response
