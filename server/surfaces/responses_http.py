"""OpenAI's Responses API over HTTP: ``POST /v1/responses``, retrieve, cancel.

How the OpenAI SDKs' ``client.responses.create(...)``, the Agents SDK and
Codex talk by default. A request is the body of a ``response.create``
(``tokenwire.protocol.openai_responses_request``) plus ``stream``; it runs
as every HTTP surface's does (``HttpLink``: admission, limits, engines,
metrics). ``stream: true`` answers the same ``response.*`` events as the
WebSocket mode, as SSE with ``event:`` lines; ``stream: false`` the
finished ``response`` object. ``previous_response_id`` continues a response
kept by any surface (``store``, the default: kept for ``response_ttl``, in
Redis with ``resume: redis``); a client that leaves its stream cancels it.

``background: true`` runs the response on without its client (for
``resume_ttl``): its session is resumable and the store names it (the
chats' ``ChatAnswers``), so ``GET /v1/responses/{id}?stream=true&
starting_after=N`` resumes that session and replays its events after N
(exactly: the frames are kept, and translated again from the first), then
the live ones; ``POST /v1/responses/{id}/cancel`` cancels it (status
``cancelled``). ``GET /v1/responses/{id}`` answers the kept response
object: a background one's as it started, any stored one's once finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

import msgspec
from aiohttp import web

from tokenwire.protocol import BadMessage, Error, ErrorCode, Finish, assistant_message
from tokenwire.protocol.codec import decode_json, too_deep_is_bad_message
from tokenwire.protocol.openai_common import NOT_FOUND, error_kind
from tokenwire.protocol.openai_responses import ResponseEvents, response_generate
from tokenwire.protocol.openai_responses_kept import After, finished, stored_request
from tokenwire.protocol.openai_responses_request import (
    SURFACE_ERRORS,
    ResponseRequest,
    http_response_request,
)
from tokenwire.protocol.surface import Surface, SurfaceRequest

from ..stores.contract import ChatAnswer, KeptResponse
from ..stores.resume import key_hash
from .answers import JSON_HEADERS, json_error
from .http_link import HttpLink, SurfaceHost
from .responses import PREVIOUS_NOT_FOUND
from .ui import chat_name, replayed

_encode: Final = msgspec.json.encode
CANCEL_WAIT: Final = 2.0
"""Seconds ``POST /v1/responses/{id}/cancel`` waits for the response to end."""


class HttpResponses:
    """``POST /v1/responses``, ``GET /v1/responses/{id}`` and its cancel."""

    def __init__(self, surfaces: SurfaceHost) -> None:
        self.surfaces = surfaces
        self.server = surfaces.server

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/v1/responses/{response_id}", self.retrieve)
        app.router.add_route("*", "/v1/responses/{response_id}/cancel", self.cancel)

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
                asked, stream, background = http_response_request(decode_json(raw))
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
        events = ResponseEvents(
            asked, response_id, int(time.time()), sse=True, stream=stream, background=background
        )
        link = surfaces.link(Surface.RESPONSES, request, SurfaceRequest(generate, events, stream))
        if background:
            return await self._background(link, key, events)
        response = await link.serve(key)
        finish = link.finish
        if finish is not None and asked.store:  # its object as the client got it
            await self._keep(owner, asked, finish, _encode(events.response(**events.ended)))
        return response

    async def _keep(
        self, owner: str, asked: ResponseRequest, frame: Finish | Error, body: bytes
    ) -> None:
        """Keep a finished response: its messages (a ``previous_response_id``
        continues them) and its object (retrieve)."""
        messages = []
        if isinstance(frame, Finish):
            messages = [*asked.input, assistant_message(frame.content, frame.tool_calls)]
        kept = KeptResponse(owner, asked.previous_response_id, messages, body)
        await self.server.responses.put(frame.id or "", kept)

    async def _background(
        self, link: HttpLink, key: bytes | None, events: ResponseEvents
    ) -> web.StreamResponse:
        """A background response: it runs on without its client, named for
        a replay, its object kept as it starts and once it ends."""
        server = self.server
        owner = key_hash(key)
        asked = events.request
        started = msgspec.json.encode(events.response())
        kept = KeptResponse(owner, asked.previous_response_id, [], started)
        await server.responses.put(events.id, kept)
        name = chat_name(key, f"response:{events.id}")

        def ended(frame: Finish | Error) -> None:
            server.background(self._keep(owner, asked, frame, finished(events, frame)))

        async def opened(session: Any) -> None:
            session.orphan_timeout = float(server.settings.resume_ttl)
            session.ended_hook = ended
            await self.surfaces.ui.answers.put(name, ChatAnswer(session.token, events.id, ""))

        stream = events.stream
        answer = await link.serve(key, resumable=True, opened=opened, keep=True, detach=not stream)
        if stream or answer.status != 202:
            return answer
        return web.Response(body=started, headers=JSON_HEADERS)

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/responses/{id}``: the kept object; with ``stream=true``,
        a background response's events after ``starting_after``."""
        admitted = await self.surfaces.admit(request, "GET", need_room=False, body=False)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        key = admitted[0]
        response_id = request.match_info["response_id"]
        kept = await self.server.responses.get(response_id)
        if kept is None or kept.key != key_hash(key) or kept.body is None:
            return _not_found(response_id)
        if request.query.get("stream") != "true":
            return web.Response(body=kept.body, headers=JSON_HEADERS)
        try:
            after = int(request.query.get("starting_after", "-1"))
        except ValueError:
            return self.surfaces.bad_message(
                BadMessage("`starting_after` is a sequence number", path="starting_after")
            )
        answer = await self.surfaces.ui.answers.get(chat_name(key, f"response:{response_id}"))
        if answer is None:
            return json_error(
                SURFACE_ERRORS[PREVIOUS_NOT_FOUND],
                f"response {response_id[:80]!r} has no events to stream: only a background "
                "response's are kept, for resume_ttl",
                "response_not_found",
            )
        said = msgspec.json.decode(kept.body)
        events = ResponseEvents(
            stored_request(said), response_id, int(said.get("created_at", 0)), sse=True,
            background=True,
        )  # fmt: skip
        asked = SurfaceRequest(replayed(response_id), After(events, after), stream=True)
        link = self.surfaces.link(Surface.RESPONSES, request, asked)
        return await link.serve(key, rejoin=answer.token, keep=True)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/responses/{id}/cancel``: a background response is
        cancelled (its upstream request closes); its object, once it ended."""
        admitted = await self.surfaces.admit(request, "POST", need_room=False, body=False)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        key = admitted[0]
        response_id = request.match_info["response_id"]
        store = self.server.responses
        kept = await store.get(response_id)
        if kept is None or kept.key != key_hash(key) or kept.body is None:
            return _not_found(response_id)
        if not msgspec.json.decode(kept.body).get("background"):
            return self.surfaces.bad_message(
                BadMessage("only a background response can be cancelled", path="response_id")
            )
        if await self.surfaces.ui.cancel_answer(chat_name(key, f"response:{response_id}")):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_WAIT):
                    while msgspec.json.decode(kept.body or b"{}").get("status") == "in_progress":
                        await asyncio.sleep(0.01)
                        kept = await store.get(response_id) or kept
        return web.Response(body=kept.body, headers=JSON_HEADERS)


def _not_found(response_id: str) -> web.Response:
    return json_error(
        NOT_FOUND, f"no response {response_id[:80]!r}: unknown, expired, or not stored", None
    )
