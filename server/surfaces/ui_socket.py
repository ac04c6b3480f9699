"""The AI SDK's ``WebSocketChatTransport``, served at ``/api/chat/ws``.

One socket carries a chat's requests, told apart by ``requestId`` (the
frames of ``ai/src/ui/websocket-chat-transport.ts``): ``send`` runs an
answer (the body of ``POST /api/chat``, translated by the same
``UiChunks``), ``abort`` cancels it and closes its upstream request,
``resume`` replays an answer's chunks after ``lastSequence`` (all of them
without one) and goes on live, or says ``no-active``. The server sends
``start``, ``chunk`` (``sequence``: the chunk's index in the message, from
0), ``end``, ``error`` (``errorText``) and ``no-active``.

Each answer runs in a resumable session of its own, served by a
``UiAnswerLink`` that turns its frames into the socket's chunk frames. A
dropped socket is a network drop, never a stop (the SDK stops with
``abort``): its answers' sessions detach and run on for
``orphan_timeout``; a ``resume`` on any socket (with ``resume: redis``, on
any node) resumes the chat's answer through the ``Resumer``, replaying its
frames from the first, so that the chunks and their numbers are the same.

Keys: a ``send`` or ``resume`` frame's ``headers.authorization`` (``Bearer
KEY``: the SDK sends keys there, browsers cannot set a handshake's
headers), else the handshake's. A frame without a valid key gets ``error``
and runs nothing. A chat belongs to the key that made it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import msgspec
from websockets.asyncio.server import ServerConnection

from tokenwire.protocol import (
    BadMessage,
    Cancel,
    Codec,
    Error,
    Finish,
    Resume,
    Resumed,
    ResumeFailed,
    ServerFrame,
)
from tokenwire.protocol.ai_sdk import UiChunks, ui_request
from tokenwire.protocol.codec import decode_json, too_deep_is_bad_message
from tokenwire.protocol.surface import Surface

from ..errors import CloseCode
from ..sessions.link import Link, LinkBase, written_as_is
from ..stores.contract import ChatAnswer
from .ui import chat_name

if TYPE_CHECKING:
    from ..sessions.generation import Generation
    from ..sessions.link import LinkContext
    from ..sessions.session import Session

_encode: Final = msgspec.json.encode


class UiAnswerLink(LinkBase):
    """One answer on a ``/api/chat/ws`` socket: the link of the answer's
    own session, whose frames it sends as the socket's ``chunk`` frames
    to the request that asked (a ``send``, or a ``resume``)."""

    surface = Surface.UI
    encoding = "json"

    def __init__(
        self, socket: UiSocketLink, request_id: str, gid: str, message_id: str, after: int = -1
    ) -> None:
        self.socket = socket
        self.context = socket.context
        self.session: Session | None = None
        self.request_id = request_id
        self.id = gid
        self.chunks = UiChunks(message_id)
        self.sequence = -1
        """The index of the last chunk made."""
        self.listeners = {request_id: after}
        """The requests its chunks go to, each with the index after which
        they start (a ``resume``'s ``lastSequence``)."""
        self.siblings: list[UiAnswerLink] = []
        """Links of the same answer on this socket that a resume takes over:
        their requests keep listening, from where each was."""
        self.started = False
        self.ended = False
        """Whether the answer's end went out (or it was refused, or gone)."""
        self.chat: str | None = None
        """The chat's name in the store, when it names this answer."""

    # -- what a session asks of its link: the socket's ---------------------------

    @property
    def behind(self) -> bool:
        return self.socket.behind

    def _wake_writer(self) -> None:
        self.socket._wake_writer()

    def hold(self, generation: Generation) -> None:
        self.socket.hold(generation)

    def unhold(self, generation: Generation) -> None:
        self.socket.unhold(generation)

    async def caught_up(self) -> None:
        await self.socket.caught_up()

    def release_held(self) -> None:
        self.socket.release_held()

    def check_send(self, now: float, timeout: float) -> None:
        pass  # the socket's own link is watched

    async def close(self, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """A resume elsewhere took the answer: this request hears no more."""
        if code is CloseCode.RESUMED_ELSEWHERE:
            self._finish(end=False)

    def start(self) -> None:
        if not self.started and not self.ended:
            self.started = True
            self.socket.say("start", self.request_id)

    def send(self, frames: Iterable[ServerFrame]) -> None:
        """The session's frames as this request's chunks."""
        for frame in frames:
            if self.ended or getattr(frame, "id", None) != self.id:
                continue
            if isinstance(frame, Resumed):
                self.start()
                self._adopt_siblings()
                continue
            if isinstance(frame, ResumeFailed):
                self.socket.say("no-active", self.request_id)
                self._finish(end=True)
                continue
            if not self.started:  # refused before it started
                assert isinstance(frame, Error)
                self.socket.say("error", self.request_id, errorText=frame.message)
                self._finish(end=True)
                continue
            listeners = self.listeners.items()
            for chunk in self.chunks.chunks(frame):  # type: ignore[arg-type]
                self.sequence = sequence = self.sequence + 1
                for request_id, after in listeners:
                    if sequence > after:
                        self.socket.chunk(request_id, sequence, chunk)
            if isinstance(frame, Finish | Error):
                for request_id in self.listeners:
                    self.socket.say("end", request_id)
                self._finish(end=True)

    def _adopt_siblings(self) -> None:
        """The siblings whose session this resume took: their requests
        listen here from now on, from the chunk each had."""
        for sibling in self.siblings:
            if sibling.session is None and not sibling.ended:
                sibling._finish(end=False)
                for request_id, after in sibling.listeners.items():
                    self.listeners.setdefault(request_id, max(after, sibling.sequence))
                    self.socket.adopt(request_id, self)
        self.siblings = []

    def _finish(self, *, end: bool) -> None:
        """The requests are done: with ``end``, the answer was delivered, and
        its session ends (else it was taken elsewhere)."""
        if self.ended:
            return
        self.ended = True
        self.socket.answer_done(self, end=end)


class UiSocketLink(Link):
    """A ``/api/chat/ws`` connection."""

    surface = Surface.UI

    def __init__(
        self, context: LinkContext, connection: ServerConnection, codec: Codec, ui: Any
    ) -> None:
        super().__init__(context, connection, codec)
        self._encode = written_as_is
        self._ui = ui
        self._answers: dict[str, UiAnswerLink] = {}
        """The answers this socket serves, by the request that asked."""

    async def _handle(self, data: str | bytes) -> None:
        if self.session is None:
            return
        try:
            frame = decode_json(data)
        except BadMessage as exc:
            self.say("error", "", errorText=exc.message)
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("requestId"), str):
            self.say("error", "", errorText="a frame is an object with a requestId")
            return
        request_id: str = frame["requestId"]
        kind = frame.get("type")
        if kind == "abort":
            answer = self._answers.get(request_id)
            if answer is not None and answer.session is not None:
                answer.session.handle(Cancel(id=answer.id))
            return
        if kind not in ("send", "resume"):
            self.say("error", request_id, errorText=f"unknown frame type {str(kind)[:40]!r}")
            return
        if request_id in self._answers:
            self.say("error", request_id, errorText="that requestId is running on this socket")
            return
        allowed, key = self._key_of(frame)
        if not allowed:
            self.say("error", request_id, errorText="missing or wrong API key")
            return
        if kind == "resume":
            await self._resume(request_id, key, frame)
        else:
            await self._send(request_id, key, frame)

    async def _send(self, request_id: str, key: bytes | None, frame: dict[str, Any]) -> None:
        given = frame.get("body")
        body: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
        for name in ("id", "messages", "trigger", "messageId"):
            if name in frame:
                body[name] = frame[name]
        body.pop("resume", None)  # a socket's answers always survive its drop
        gid = f"msg-{secrets.token_hex(12)}"
        try:
            with too_deep_is_bad_message():
                asked = ui_request(
                    body, gid, default_model=self._ui.default_model, new_message_id=gid
                )
        except BadMessage as exc:
            self.say("error", request_id, errorText=exc.message)
            return
        ui = self._ui
        await ui.cancel(key, asked.chat_id)  # a new message supersedes the answer running
        answer = UiAnswerLink(self, request_id, gid, asked.message_id)
        self._answers[request_id] = answer
        session = ui.server.open_session(answer, key, resumable=True)
        if session.resumable:
            name = chat_name(key, asked.chat_id)
            await ui.answers.put(name, ChatAnswer(session.token, gid, asked.message_id))
            answer.chat = name
        session.handle(asked.generate)
        if gid in session.generations:
            answer.start()

    async def _resume(self, request_id: str, key: bytes | None, frame: dict[str, Any]) -> None:
        chat_id = frame.get("id")
        last = frame.get("lastSequence")
        after = last if isinstance(last, int) and not isinstance(last, bool) else -1
        name = chat_name(key, str(chat_id))
        kept = await self._ui.answers.get(name) if isinstance(chat_id, str) else None
        if kept is None:
            self.say("no-active", request_id)
            return
        answer = UiAnswerLink(self, request_id, kept.gid, kept.message_id, after)
        answer.chat = name
        answer.siblings = [a for a in self._answers.values() if a.id == kept.gid]
        self._answers[request_id] = answer
        server = self._ui.server
        server.open_session(answer, key, resumable=True)
        await server.resume(answer, Resume(token=kept.token, generations={kept.gid: -1}))

    def _key_of(self, frame: dict[str, Any]) -> tuple[bool, bytes | None]:
        """Whether the frame may run, and the key it (else the handshake)
        presented (None when the server takes no keys)."""
        gate = self._ui.server.gate
        if not gate.requires_key:
            return True, None
        headers = frame.get("headers")
        authorization = []
        if isinstance(headers, dict):
            authorization = [
                str(v) for k, v in headers.items() if str(k).lower() == "authorization"
            ]
        key: bytes | None = gate.key_of(authorization) or self.key
        return key is not None, key

    def adopt(self, request_id: str, answer: UiAnswerLink) -> None:
        """``request_id`` hears ``answer`` from now on (an abort of it stops that)."""
        self._answers[request_id] = answer

    def answer_done(self, answer: UiAnswerLink, *, end: bool) -> None:
        """``answer`` sends no more: its session ends (``end``: its end was
        sent) or stays with the link that took it."""
        for request_id in answer.listeners:
            if self._answers.get(request_id) is answer:
                del self._answers[request_id]
        session, answer.session = answer.session, None
        if session is None:
            return
        server = self._ui.server
        if end:
            server.background(server.close_session(answer, session, end=True))
            if answer.chat is not None:
                server.background(self._ui.answers.drop(answer.chat, answer.id))
        else:
            server.closed(answer)

    async def _leave(self) -> None:
        """The socket closed: its answers' sessions detach and run on,
        waiting for a resume (a drop is never a stop)."""
        answers, self._answers = list(dict.fromkeys(self._answers.values())), {}
        for answer in answers:
            session, answer.session = answer.session, None
            answer.ended = True
            if session is not None:
                await self._ui.server.close_session(answer, session, end=False)
        await super()._leave()

    def send(self, frames: Iterable[ServerFrame]) -> None:
        """The socket's own session's frames: only an error it could not
        lay at a request's door goes out (the answers send their own)."""
        for frame in frames:
            if isinstance(frame, Error) and frame.id is None:
                self.say("error", "", errorText=frame.message)

    def chunk(self, request_id: str, sequence: int, chunk: dict[str, Any]) -> None:
        self.say("chunk", request_id, sequence=sequence, chunk=chunk)

    def say(self, kind: str, request_id: str, **fields: Any) -> None:
        self._queue([_encode({"type": kind, "requestId": request_id, **fields})])
