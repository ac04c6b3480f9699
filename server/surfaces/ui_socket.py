"""The AI SDK's ``WebSocketChatTransport``, served at ``/api/chat/ws``.

One socket carries a chat's requests, told apart by ``requestId`` (the
frames of ``ai/src/ui/websocket-chat-transport.ts``): ``send`` runs an
answer (the body of ``POST /api/chat``, translated by the same
``UiChunks``), ``abort`` cancels it and closes its upstream request,
``resume`` replays a running answer's chunks after ``lastSequence`` (all of
them without one) and goes on live, or says ``no-active``. The server sends
``start``, ``chunk`` (``sequence``: the chunk's index in the message, from
0), ``end``, ``error`` (``errorText``) and ``no-active``.

Keys: a ``send`` or ``resume`` frame's ``headers.authorization`` (``Bearer
KEY``: the SDK sends keys there, browsers cannot set a handshake's
headers), else the handshake's. A frame without a valid key gets ``error``
and runs nothing. An answer is kept by its chat (its key and id) while it
runs on this socket; a dropped socket ends its answers (the SDK resumes
only what still runs).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec
from websockets.asyncio.server import ServerConnection

from tokenwire.protocol import BadMessage, Cancel, Codec, Error, Finish, Ready, ServerFrame
from tokenwire.protocol.ai_sdk import UiChunks, ui_request
from tokenwire.protocol.codec import decode_json, too_deep_is_bad_message
from tokenwire.protocol.surface import Surface

from ..sessions.link import Link, written_as_is

if TYPE_CHECKING:
    from ..sessions.link import LinkContext

_encode: Final = msgspec.json.encode


@dataclass
class _Answer:
    """One ``send``'s answer on this socket."""

    request_id: str
    chat: tuple[bytes, str]
    chunks: UiChunks
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every chunk so far, for a ``resume`` (freed when the answer ends)."""
    listeners: list[str] = field(default_factory=list)
    """The requests (the ``send``, then ``resume``s) its chunks go to."""
    started: bool = False


class UiSocketLink(Link):
    """A ``/api/chat/ws`` connection."""

    surface = Surface.UI

    def __init__(
        self, context: LinkContext, connection: ServerConnection, codec: Codec, ui: Any
    ) -> None:
        super().__init__(context, connection, codec)
        self._encode = written_as_is
        self._ui = ui
        self._answers: dict[str, _Answer] = {}
        """Running answers, by generation id."""

    async def _handle(self, data: str | bytes) -> None:
        session = self.session
        if session is None:
            return
        try:
            frame = decode_json(data)
        except BadMessage as exc:
            self._say("error", "", errorText=exc.message)
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("requestId"), str):
            self._say("error", "", errorText="a frame is an object with a requestId")
            return
        request_id: str = frame["requestId"]
        kind = frame.get("type")
        if kind == "abort":
            for gid, answer in self._answers.items():
                if request_id in answer.listeners:
                    session.handle(Cancel(id=gid))
            return
        if kind not in ("send", "resume"):
            self._say("error", request_id, errorText=f"unknown frame type {str(kind)[:40]!r}")
            return
        key = self._key_of(frame)
        if key is None:
            self._say("error", request_id, errorText="missing or wrong API key")
            return
        if kind == "resume":
            self._resume(request_id, (key, str(frame.get("id", ""))), frame.get("lastSequence"))
            return
        given = frame.get("body")
        body: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
        for name in ("id", "messages", "trigger", "messageId"):
            if name in frame:
                body[name] = frame[name]
        gid = f"msg-{secrets.token_hex(12)}"
        try:
            with too_deep_is_bad_message():
                asked = ui_request(
                    body, gid, default_model=self._ui.default_model, new_message_id=gid
                )
        except BadMessage as exc:
            self._say("error", request_id, errorText=exc.message)
            return
        chat = (key, asked.chat_id)
        answer = _Answer(request_id, chat, UiChunks(asked.message_id), listeners=[request_id])
        self._answers[gid] = answer
        session.handle(asked.generate)
        if gid in session.generations:
            answer.started = True
            self._say("start", request_id)

    def _key_of(self, frame: dict[str, Any]) -> bytes | None:
        """The configured key the frame (else the handshake) presented;
        ``b""`` when the server takes no keys; None: refused."""
        gate = self._ui.server.gate
        if not gate.requires_key:
            return b""
        headers = frame.get("headers")
        authorization = []
        if isinstance(headers, dict):
            authorization = [
                str(v) for k, v in headers.items() if str(k).lower() == "authorization"
            ]
        key: bytes | None = gate.key_of(authorization) or self.key
        return key

    def _resume(self, request_id: str, chat: tuple[bytes, str], last: Any) -> None:
        after = last if isinstance(last, int) and not isinstance(last, bool) else -1
        for answer in self._answers.values():
            if answer.chat == chat:
                answer.listeners.append(request_id)
                self._say("start", request_id)
                for sequence, chunk in enumerate(answer.sent):
                    if sequence > after:
                        self._chunk(request_id, sequence, chunk)
                return
        self._say("no-active", request_id)

    def send(self, frames: Iterable[ServerFrame]) -> None:
        """The session's frames as chunks of their answers."""
        for frame in frames:
            if isinstance(frame, Ready):
                continue
            gid = getattr(frame, "id", None)
            answer = self._answers.get(gid) if isinstance(gid, str) else None
            if answer is None:
                if isinstance(frame, Error) and frame.id is None:
                    self._say("error", "", errorText=frame.message)
                continue
            if not answer.started:  # refused before it started
                assert isinstance(frame, Error)
                del self._answers[frame.id]  # type: ignore[arg-type]
                self._say("error", answer.request_id, errorText=frame.message)
                continue
            for chunk in answer.chunks.chunks(frame):  # type: ignore[arg-type]
                sequence = len(answer.sent)
                answer.sent.append(chunk)
                for listener in answer.listeners:
                    self._chunk(listener, sequence, chunk)
            if isinstance(frame, Finish | Error):
                del self._answers[frame.id]  # type: ignore[arg-type]
                for listener in answer.listeners:
                    self._say("end", listener)

    def _chunk(self, request_id: str, sequence: int, chunk: dict[str, Any]) -> None:
        self._say("chunk", request_id, sequence=sequence, chunk=chunk)

    def _say(self, kind: str, request_id: str, **fields: Any) -> None:
        self._queue([_encode({"type": kind, "requestId": request_id, **fields})])
