"""The AI SDK's ``useChat`` over SSE: ``POST /api/chat`` and its stop.

``DefaultChatTransport`` posts a chat's messages (or, in the SDK's resume
recipe, only the last one) and reads the answer as the UI message stream
(``tokenwire.protocol.ai_sdk``). A request runs as every HTTP surface's
does (``HttpLink``: admission, limits, engines, metrics); what this module
adds is the chat: the history it keeps for a chat whose requests send only
their last message (keyed by the API key and the chat's id, at most
``max_ui_chats`` chats of ``max_history_bytes`` each, and
``max_total_history_bytes`` for all of them), and the chat's
running answer, which ``POST /api/chat/{id}/stop`` cancels (as a client
leaving its POST does at once).

An answer asked to survive drops (``"resume": true`` in the body, or
``ui_resume`` in the config) runs in a resumable session: its client gone,
it runs on for ``orphan_timeout``, and ``GET /api/chat/{id}/stream``
resumes that session (``Resumer``), replaying the whole message from its
first frame, then the live ones; with ``resume: redis`` on any node. The
store names each chat's answer (``ChatAnswers``) until a client has
received its end; then the chat answers 204.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from typing import Any, Final

import msgspec
import structlog
from aiohttp import web

from tokenwire.protocol import (
    BadMessage,
    Cancel,
    ErrorCode,
    Generate,
    assistant_message,
)
from tokenwire.protocol.ai_sdk import HEADERS, UiChunks, ui_request
from tokenwire.protocol.codec import decode_json, too_deep_is_bad_message
from tokenwire.protocol.openai_common import error_kind
from tokenwire.protocol.surface import Surface, SurfaceRequest

from ..stores.contract import ChatAnswer, ChatAnswers
from ..stores.resume import key_hash, token_hash
from .answers import json_error
from .http_link import HttpLink, SurfaceHost

log = structlog.get_logger("tokenwire.server")

ChatKey = tuple[bytes, str]
"""A chat: the API key that made it (empty without keys) and its id."""
KEPT_REASONS: Final = frozenset({"stop", "length", "tool_calls"})
"""Answers that become the chat's history (a cancelled or failed one does not)."""

_size: Final = msgspec.json.encode


class UiChats:
    """The chats of ``/api/chat``: their kept history and running answers."""

    def __init__(self, surfaces: SurfaceHost) -> None:
        self.surfaces = surfaces
        self.server = surfaces.server
        self.history: OrderedDict[ChatKey, tuple[list[dict[str, Any]], int]] = OrderedDict()
        """Each kept chat's messages and their size (JSON bytes), the oldest first."""
        self.history_bytes = 0
        self.running: dict[ChatKey, HttpLink] = {}
        self._answers: ChatAnswers | None = None

    @property
    def answers(self) -> ChatAnswers:
        """Each chat's resumable answer, as the store names it."""
        if self._answers is None:
            self._answers = self.server.store.chats()
        return self._answers

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/chat/{chat_id}/stop", self.stop)
        app.router.add_route("*", "/api/chat/{chat_id}/stream", self.stream)

    @property
    def default_model(self) -> str:
        model: str = self.server.settings.default_model or self.server.models[0]
        return model

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/chat``: one answer, streamed as UI message chunks."""
        admitted = await self.surfaces.admit(request, "POST")
        if isinstance(admitted, web.StreamResponse):
            return admitted
        key, raw = admitted
        gid = f"msg-{secrets.token_hex(12)}"
        try:
            with too_deep_is_bad_message():
                body = decode_json(raw)
                history = None
                if isinstance(body, dict) and isinstance(body.get("id"), str):
                    kept = self.history.get((key or b"", body["id"]))
                    history = kept[0] if kept is not None else None
                asked = ui_request(
                    body,
                    gid,
                    default_model=self.default_model,
                    new_message_id=gid,
                    history=history,
                )
        except BadMessage as exc:
            return self.surfaces.bad_message(exc)
        limit = self.server.settings.max_history_bytes
        if len(_size(asked.history)) > limit:
            code = ErrorCode.CONVERSATION_LIMIT
            message = f"the chat would be over max_history_bytes ({limit})"
            return json_error(error_kind(code), message, code)
        chat: ChatKey = (key or b"", asked.chat_id)
        await self.cancel(key, asked.chat_id)  # a new message supersedes the answer running
        translator = UiChunks(asked.message_id)
        asked_for = SurfaceRequest(asked.generate, translator, stream=True, headers=HEADERS)
        link = self.surfaces.link(Surface.UI, request, asked_for)
        resumable = (asked.resume or self.server.settings.ui_resume) and self.server.store.keeps
        name = chat_name(key, asked.chat_id)
        answer = ChatAnswer("", gid, asked.message_id)

        async def opened(session: Any) -> None:
            answer.token = session.token
            await self.answers.put(name, answer)

        self.running[chat] = link
        try:
            response = await link.serve(
                key, resumable=resumable, opened=opened if resumable else None
            )
        finally:
            if self.running.get(chat) is link:
                del self.running[chat]
        if link.ended and answer.token:
            await self.answers.drop(name, gid)
        finish = link.finish
        if finish is not None and finish.reason in KEPT_REASONS:
            said = assistant_message(finish.content, finish.tool_calls)
            self._keep(chat, [*asked.history, said])
        return response

    async def stop(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/chat/{id}/stop``: cancel the chat's running answer (its
        upstream request closes); any body is accepted, and ignored."""
        admitted = await self.surfaces.admit(request, "POST", need_room=False, body=False)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        stopped = await self.cancel(admitted[0], request.match_info["chat_id"])
        return web.json_response({"stopped": stopped})

    async def cancel(self, key: bytes | None, chat_id: str) -> bool:
        """Cancel the chat's running answer, wherever it runs (its upstream
        request closes); whether one ran."""
        link = self.running.get((key or b"", chat_id))
        if link is not None:
            link.stop()
        return await self.cancel_answer(chat_name(key, chat_id)) or link is not None

    async def cancel_answer(self, name: str) -> bool:
        """Cancel the answer the store names ``name``, wherever it runs;
        whether one ran."""
        answer = await self.answers.get(name)
        if answer is None:
            return False
        server = self.server
        h = token_hash(answer.token)
        session = server.sessions.get(h)
        if session is not None:
            if not session.running(answer.gid):
                return False
            session.handle(Cancel(id=answer.gid))
            return True
        record = await server.store.load(h)  # on another node
        owner = record.owners.get(answer.gid) if record is not None else None
        if owner is None:
            return False
        await server.store.cancel(h, answer.gid, owner)
        return True

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/chat/{id}/stream`` (``reconnectToStream``): the chat's
        answer that no client received whole, replayed from its start, then
        live; 204 when there is none."""
        admitted = await self.surfaces.admit(request, "GET", body=False)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        key = admitted[0]
        name = chat_name(key, request.match_info["chat_id"])
        answer = await self.answers.get(name)
        if answer is None:
            return web.Response(status=204)
        asked_for = SurfaceRequest(
            replayed(answer.gid), UiChunks(answer.message_id), stream=True, headers=HEADERS
        )
        link = self.surfaces.link(Surface.UI, request, asked_for)
        response = await link.serve(key, rejoin=answer.token)
        if link.ended:
            await self.answers.drop(name, answer.gid)
        return response

    def _keep(self, chat: ChatKey, messages: list[dict[str, Any]]) -> None:
        """The chat's history after an answer, the oldest chats forgotten
        past ``max_ui_chats`` or past ``max_total_history_bytes`` for all of
        them (a chat over ``max_history_bytes`` is not kept: its next
        request must send its messages)."""
        settings = self.server.settings
        if (old := self.history.pop(chat, None)) is not None:
            self.history_bytes -= old[1]
        size = len(_size(messages))
        if size > settings.max_history_bytes:
            return
        self.history[chat] = (messages, size)
        self.history_bytes += size
        while self.history and (
            len(self.history) > settings.max_ui_chats
            or self.history_bytes > settings.max_total_history_bytes
        ):
            self.history_bytes -= self.history.popitem(last=False)[1][1]


def chat_name(key: bytes | None, chat_id: str) -> str:
    """A chat's name in the store: its API key's hash and its id, hashed."""
    named = f"{key_hash(key)}\0{chat_id}".encode()
    return hashlib.sha256(named).hexdigest()[:40]


def replayed(gid: str) -> Generate:
    """The request of a link that replays generation ``gid`` (never run:
    a replay names the generation, not what it asked)."""
    return Generate(id=gid, model="replay", messages=[{"role": "user", "content": ""}])
