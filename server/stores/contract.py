"""The resume-store contract: what sessions and the server ask of a store.

A store keeps what a resume needs: each generation's frames (so that a
new connection gets those its client missed), the session's record (the
API key it was opened with, its deadline, its conversations) and the
responses kept for ``previous_response_id``. Three stores keep it:

- ``NoStore`` (``resume: off``): keeps nothing; frames go straight to the link.
- ``MemoryStore`` (``resume: memory``): this process's memory, bounded by
  ``resume_generation_bytes`` and ``resume_total_bytes``.
- ``RedisStore`` (``resume: redis``): Redis, shared by every node, so a
  session resumes on any of them; a generation running on another node is
  relayed from its stream, cancelled through its owner, and owned by a
  lease the owner renews.

``open_store`` (``stores/__init__.py``) builds one from the config. A session
talks to its store through a ``Keeper`` (the store's part of one session);
the server and the resumer through ``ResumeStore``. The suite in
``tests/stores/test_contract.py`` holds every store to this contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import msgspec

from tokenwire.protocol import Generate, GenerationFrame, ServerFrame

from .resume import Cause

MAX_CHAIN: Final = 10_000
"""Responses a ``previous_response_id`` chain may have."""

Replay = list[GenerationFrame] | Literal["gap", "unknown"]
"""Frames read back after a seq (not yet checked to follow on), ``unknown``
(nothing stored), or ``gap`` (the store could not be read)."""


@dataclass(slots=True)
class Record:
    """A session as a shared store holds it (for a resume on another node)."""

    key_hash: str
    session_id: str
    deadline: float
    """When a resume stops being possible (0: attached)."""
    conversations: dict[str, list[dict[str, Any]]]
    owners: dict[str, str] = field(default_factory=dict)
    """The node running each generation."""
    requests: dict[str, Generate] = field(default_factory=dict)
    lost: dict[str, Cause] = field(default_factory=dict)
    """Why a generation's node could not keep all of its frames."""

    def expired(self, now: float) -> bool:
        return 0 < self.deadline < now


class StoredSession(Protocol):
    """What a store needs of a session (``sessions.session.Session`` is one)."""

    id: str
    token_hash: str
    """The SHA-256 of its resume token: its name in a store."""
    key_hash: str

    def deliver(self, frames: list[ServerFrame]) -> None:
        """Pass kept frames on to the link serving the session (if any)."""
        ...

    def conversation(self, name: str) -> list[dict[str, Any]] | None:
        """A conversation's messages as the session keeps them now."""
        ...

    def running(self, gid: str) -> bool:
        """Whether ``gid`` runs for the session (here, or relayed from elsewhere)."""
        ...

    def knows(self, gid: str) -> bool:
        """Whether the session started ``gid`` (it may have ended)."""
        ...

    def relay(self, request: Generate, owner: str, after_seq: int) -> None:
        """Pass on ``request``'s frames as node ``owner`` stores them (shared stores)."""
        ...


class Keeper(Protocol):
    """A store's part of one session: the only way its frames reach the link."""

    def started(self, request: Generate) -> None:
        """Generation ``request`` starts: keep its frames from now on."""
        ...

    def keep(self, frames: list[ServerFrame]) -> None:
        """Keep a generation's frames (in order), then deliver them
        (``StoredSession.deliver``), at once or once stored."""
        ...

    def waiting(self, gid: str) -> bool:
        """Whether frames of ``gid`` wait to be kept (they are delivered after)."""
        ...

    def lost(self, gid: str) -> Cause | None:
        """Why frames of ``gid`` are not kept (a bound, an outage), if some are not."""
        ...

    def replay(
        self, gid: str, last_seq: int, record: Record | None, stored: Replay
    ) -> tuple[list[ServerFrame], int | None]:
        """A resume's answer for ``gid`` (``resumed`` and the frames after
        ``last_seq``, or ``resume_failed``), and the last seq it sends (None:
        the session never had ``gid``; ``resume.SKIP_ALL``: no more
        of it goes out). ``record`` and ``stored`` are what ``fetch`` read."""
        ...

    def forget(self, gid: str) -> None:
        """A generation the session no longer remembers: its frames may go."""
        ...

    async def flushed(self) -> None:
        """Wait until every frame kept so far is stored and delivered."""
        ...

    def release(self) -> None:
        """The session ended: what it kept may go (now, or when it expires)."""
        ...

    async def detached(self, deadline: float) -> None:
        """The session detached: resumable until ``deadline`` (Unix time; 0:
        attached again)."""
        ...

    async def forget_conversations(self) -> None:
        """The session was reset: its kept conversations go."""
        ...


class NoKeeper:
    """The keeper of a session nothing is kept for (a surface with no resume,
    or ``resume: off``): frames go straight to the link. The base of the
    stores' own keepers."""

    __slots__ = ("session",)

    def __init__(self, session: StoredSession) -> None:
        self.session = session

    def started(self, request: Generate) -> None:
        pass

    def keep(self, frames: list[ServerFrame]) -> None:
        self.session.deliver(frames)

    def waiting(self, gid: str) -> bool:
        return False

    def lost(self, gid: str) -> Cause | None:
        return None

    def replay(
        self, gid: str, last_seq: int, record: Record | None, stored: Replay
    ) -> tuple[list[ServerFrame], int | None]:
        raise AssertionError("a session whose frames are not kept is never resumed")

    def forget(self, gid: str) -> None:
        pass

    async def flushed(self) -> None:
        pass

    def release(self) -> None:
        pass

    async def detached(self, deadline: float) -> None:
        pass

    async def forget_conversations(self) -> None:
        pass


class Node(Protocol):
    """What a shared store needs of the node it serves (leases and cancels)."""

    def running(self) -> list[tuple[str, str]]:
        """This node's running generations, as (session hash, id)."""
        ...

    def cancel(self, h: str, gid: str) -> None:
        """Another node asked to cancel a generation of this node's."""
        ...


class KeptResponse(msgspec.Struct, array_like=True):
    """A kept response: the messages it added, and the response it continued."""

    key: str
    """The hash of the API key that made it: only that key continues it."""
    previous: str | None
    messages: list[dict[str, Any]]
    body: bytes | None = None
    """The response object as ``GET /v1/responses/{id}`` answers it (JSON):
    the finished one, or a background one's as it started."""


class ResponseStore(Protocol):
    """Responses kept for ``previous_response_id`` (``response_ttl``)."""

    def new_id(self) -> str:
        """An id for a new response."""
        ...

    async def put(self, response_id: str, kept: KeptResponse) -> None: ...

    async def chain(self, response_id: str) -> list[KeptResponse] | None:
        """The kept responses from ``response_id`` back to its chain's first
        (newest first); None if one of them is not kept."""
        ...

    async def get(self, response_id: str) -> KeptResponse | None:
        """The kept response ``response_id`` alone."""
        ...


class ResponsePeers(Protocol):
    """Other processes that keep responses (``--workers`` without Redis)."""

    def new_response_id(self) -> str: ...

    def response_owner(self, response_id: str) -> int | None: ...

    async def chain(self, owner: int, response_id: str) -> list[KeptResponse] | None: ...


class ChatAnswer(msgspec.Struct, array_like=True):
    """A UI chat's latest answer that a client may still resume
    (``surfaces/ui.py``): the session running it and its generation."""

    token: str
    """The answer's session's resume token (a resume presents it)."""
    gid: str
    message_id: str
    """The assistant message's id (a resumed stream's ``start`` repeats it)."""


class ChatAnswers(Protocol):
    """Each UI chat's resumable answer, by a name made of the API key and
    the chat's id (``resume_ttl`` seconds each)."""

    async def put(self, name: str, answer: ChatAnswer) -> None: ...

    async def get(self, name: str) -> ChatAnswer | None: ...

    async def drop(self, name: str, gid: str) -> None:
        """Forget the chat's answer if it is still ``gid`` (its client has
        received its end, or a newer answer replaced it)."""
        ...


class ResumeStore(Protocol):
    """A resume store, as the server and the resumer use it."""

    name: str
    """``off``, ``memory`` or ``redis``: the config's ``resume``."""
    keeps: bool
    """Whether it keeps anything for a resume (``ready`` offers one only then)."""
    shared: bool
    """Whether other nodes (or workers) read it: a session may live elsewhere."""

    @property
    def up(self) -> bool:
        """Whether it keeps frames now (``ready`` offers a resume only then)."""
        ...

    async def start(self) -> None: ...

    def serve(self, node: Node) -> list[asyncio.Task[None]]:
        """Start the store's background duties for ``node`` (leases, cancels)."""
        ...

    async def close(self) -> None: ...

    def keeper(self, session: StoredSession) -> Keeper:
        """The store's part of ``session``."""
        ...

    async def fetch(
        self, h: str, positions: Mapping[str, int]
    ) -> tuple[Record | None, dict[str, Replay]]:
        """Session ``h``'s record (None: not shared, unknown, or unreachable)
        and, per listed generation, its stored frames after the seq."""
        ...

    async def load(self, h: str) -> Record | None:
        """Session ``h``'s record."""
        ...

    async def watched(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (session hash, id) another node relays to its client now."""
        ...

    async def cancel(self, h: str, gid: str, owner: str) -> None:
        """Ask node ``owner`` to cancel its generation ``gid``."""
        ...

    def follow(self, h: str, gid: str, after_seq: int) -> AsyncIterator[Sequence[ServerFrame]]:
        """The frames another node stores for ``gid`` after ``after_seq``,
        batch by batch, up to a terminal frame (a retryable error when that
        node dies, ``resume_failed`` when frames are missing)."""
        ...

    def responses(self, peers: ResponsePeers | None) -> ResponseStore:
        """Where responses are kept for ``previous_response_id``."""
        ...

    def chats(self) -> ChatAnswers:
        """Where the UI chats' resumable answers are named."""
        ...
