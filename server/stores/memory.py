"""``resume: off`` and ``resume: memory``: the stores of one process.

``NoStore`` keeps nothing: a session's frames go straight to its link.

``MemoryStore`` keeps each generation's frames in a ``FrameLog``, all of a
process's logs bounded together by ``MemoryLogs``: past
``resume_generation_bytes`` a log drops its oldest frames; past
``resume_total_bytes`` the oldest finished generations are evicted first. A
resume that needs a frame no longer kept gets ``gap``, never a hole.
Sessions are not shared (with ``--workers``, a resume reaches the worker
holding the session: ``workers.pipe``), and responses kept for
``previous_response_id`` live here too (``MemoryResponses``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Final

import msgspec

from tokenwire.protocol import (
    Error,
    Finish,
    Generate,
    GenerationFrame,
    Reasoning,
    Resumed,
    ServerFrame,
    Token,
    ToolCallChunk,
    ToolCallComplete,
)

from ..config import ServerSettings
from ..metrics import Metrics
from . import resume
from .contract import (
    MAX_CHAIN,
    ChatAnswer,
    ChatAnswers,
    Keeper,
    KeptResponse,
    Node,
    NoKeeper,
    Record,
    Replay,
    ResponsePeers,
    ResponseStore,
    StoredSession,
)
from .resume import SKIP_ALL, Cause, new_response_id, seq_of

FRAME_OVERHEAD: Final = 48
"""Bytes a kept frame is counted for, besides its text."""


def frame_size(frame: GenerationFrame) -> int:
    """About the bytes ``frame`` holds in memory (its text, plus a constant)."""
    match frame:
        case Token(text=text) | Reasoning(text=text):
            return FRAME_OVERHEAD + len(text)
        case ToolCallChunk(arguments=arguments) | ToolCallComplete(arguments=arguments):
            return 2 * FRAME_OVERHEAD + len(arguments)
        case Finish(content=content, tool_calls=calls):
            return 4 * FRAME_OVERHEAD + len(content) + sum(len(c.arguments) for c in calls)
        case Error(message=message):
            return 2 * FRAME_OVERHEAD + len(message)
    return FRAME_OVERHEAD


class FrameLog:
    """One generation's frames, oldest first, kept for a resume."""

    __slots__ = ("dropped_by", "ended", "evicted", "first_seq", "frames", "size")

    def __init__(self) -> None:
        self.frames: deque[GenerationFrame] = deque()
        self.first_seq = 0
        """The seq of ``frames[0]``: frames before it were dropped."""
        self.size = 0
        self.ended = False
        self.evicted = False
        self.dropped_by: Cause | None = None
        """The bound that dropped frames of this log (the last one that did)."""

    def after(self, last_seq: int) -> list[GenerationFrame] | None:
        """The frames after ``last_seq``, or None when some are no longer kept."""
        if self.evicted or last_seq + 1 < self.first_seq:
            return None
        start = last_seq + 1 - self.first_seq
        return list(self.frames)[start:]

    def drop_oldest(self, cause: Cause) -> int:
        frame = self.frames.popleft()
        self.first_seq = seq_of(frame) + 1
        size = frame_size(frame)
        self.size -= size
        self.dropped_by = cause
        return size


class MemoryLogs:
    """Every ``FrameLog`` of a server, bounded per generation and in total."""

    def __init__(self, per_generation: int, total: int) -> None:
        self.per_generation = per_generation
        self.limit = total
        self.size = 0
        self._finished: OrderedDict[FrameLog, None] = OrderedDict()
        """Logs of ended generations, oldest first: evicted first."""

    def append(self, log: FrameLog, frames: Sequence[GenerationFrame]) -> None:
        added = 0
        for frame in frames:
            kind = type(frame)
            # Text frames are nearly all of them: sized without a match.
            if kind is Token or kind is Reasoning:
                added += FRAME_OVERHEAD + len(frame.text)  # type: ignore[union-attr]
            else:
                added += frame_size(frame)
                if kind is Finish or kind is Error:
                    log.ended = True
                    self._finished[log] = None
        log.frames.extend(frames)
        log.size += added
        self.size += added
        while log.size > self.per_generation and len(log.frames) > 1:
            self.size -= log.drop_oldest(Cause.GENERATION_BYTES)
        while self.size > self.limit and self._finished:
            oldest, _ = self._finished.popitem(last=False)
            self._evict(oldest)
        while self.size > self.limit and len(log.frames) > 1:
            self.size -= log.drop_oldest(Cause.TOTAL_BYTES)

    def _evict(self, log: FrameLog) -> None:
        self.size -= log.size
        log.frames.clear()
        log.size = 0
        log.evicted = True
        log.dropped_by = Cause.TOTAL_BYTES

    def release(self, log: FrameLog) -> None:
        """The log's session is forgotten: its bytes go back."""
        self._finished.pop(log, None)
        self._evict(log)


class MemoryKeeper(NoKeeper):
    """A session's frames in this process's memory, one ``FrameLog`` each."""

    __slots__ = ("logs", "metrics", "store")

    def __init__(self, session: StoredSession, store: MemoryStore) -> None:
        super().__init__(session)
        self.store = store
        self.metrics = store.metrics
        self.logs: dict[str, FrameLog] = {}

    def started(self, request: Generate) -> None:
        self.forget(request.id)
        self.logs[request.id] = FrameLog()

    def keep(self, frames: list[ServerFrame]) -> None:
        gid = getattr(frames[0], "id", None)
        if gid is not None and (frame_log := self.logs.get(gid)) is not None:
            self.store.logs.append(frame_log, frames)  # type: ignore[arg-type]
        self.session.deliver(frames)

    def lost(self, gid: str) -> Cause | None:
        frame_log = self.logs.get(gid)
        return None if frame_log is None else frame_log.dropped_by

    def replay(
        self, gid: str, last_seq: int, record: Record | None, stored: Replay
    ) -> tuple[list[ServerFrame], int | None]:
        frame_log = self.logs.get(gid)
        if frame_log is None:
            return [resume.failed(self.metrics, gid, "unknown", Cause.NOT_STARTED)], None
        frames = frame_log.after(last_seq)
        if frames is None:
            cause = frame_log.dropped_by or Cause.TOTAL_BYTES
            end = frame_log.first_seq - 1 if not frame_log.evicted else None
            failure = resume.failed(self.metrics, gid, "gap", cause, frames=(last_seq + 1, end))
            return [failure], SKIP_ALL  # nothing more of it goes to this client
        last = seq_of(frames[-1]) if frames else last_seq
        return [Resumed(id=gid, after_seq=last_seq), *frames], last

    def forget(self, gid: str) -> None:
        if (old := self.logs.pop(gid, None)) is not None:
            self.store.logs.release(old)

    def release(self) -> None:
        for frame_log in self.logs.values():
            self.store.logs.release(frame_log)
        self.logs.clear()


class NoStore:
    """``resume: off``: nothing is kept; no session is resumed."""

    name = "off"
    keeps = False
    shared = False

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics

    @property
    def up(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    def serve(self, node: Node) -> list[asyncio.Task[None]]:
        return []

    async def close(self) -> None:
        pass

    def keeper(self, session: StoredSession) -> Keeper:
        return NoKeeper(session)

    async def fetch(
        self, h: str, positions: Mapping[str, int]
    ) -> tuple[Record | None, dict[str, Replay]]:
        return None, {}

    async def load(self, h: str) -> Record | None:
        return None

    async def watched(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        return set()

    async def cancel(self, h: str, gid: str, owner: str) -> None:
        raise AssertionError("only a shared store runs generations on other nodes")

    async def follow(
        self, h: str, gid: str, after_seq: int
    ) -> AsyncIterator[Sequence[ServerFrame]]:
        raise AssertionError("only a shared store runs generations on other nodes")
        yield []  # pragma: no cover

    def responses(self, peers: ResponsePeers | None) -> ResponseStore:
        settings = self.settings
        return MemoryResponses(settings.response_ttl, settings.response_store_bytes, peers)

    def chats(self) -> ChatAnswers:
        return MemoryChats(self.settings.resume_ttl, self.settings.max_ui_chats)


class MemoryStore(NoStore):
    """``resume: memory``: frames kept in this process, bounded in bytes."""

    name = "memory"
    keeps = True

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self.logs = MemoryLogs(settings.resume_generation_bytes, settings.resume_total_bytes)

    def keeper(self, session: StoredSession) -> Keeper:
        return MemoryKeeper(session, self)


class MemoryResponses:
    """Responses kept in this process's memory: ``response_ttl`` seconds each,
    at most ``response_store_bytes`` in all (the oldest go first). With
    ``peers`` (``--workers``), the rest of a chain is read from the worker
    whose number ends its ids."""

    def __init__(self, ttl: float, max_bytes: int, peers: ResponsePeers | None = None) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.peers = peers
        self.bytes = 0
        self._kept: OrderedDict[str, tuple[KeptResponse, int, float]] = OrderedDict()

    def new_id(self) -> str:
        return self.peers.new_response_id() if self.peers is not None else new_response_id()

    async def put(self, response_id: str, kept: KeptResponse) -> None:
        size = len(msgspec.json.encode(kept.messages)) + len(kept.body or b"") + 200
        if (old := self._kept.pop(response_id, None)) is not None:  # replaced
            self.bytes -= old[1]
        now = time.monotonic()
        self._kept[response_id] = (kept, size, now + self.ttl)
        self.bytes += size
        while self._kept and (
            self.bytes > self.max_bytes or next(iter(self._kept.values()))[2] < now
        ):
            _, (_, gone, _) = self._kept.popitem(last=False)
            self.bytes -= gone

    async def chain(self, response_id: str) -> list[KeptResponse] | None:
        out: list[KeptResponse] = []
        rid: str | None = response_id
        while rid is not None and len(out) < MAX_CHAIN:
            kept = self._get(rid)
            if kept is None:
                return await self._elsewhere(rid, out)
            out.append(kept)
            rid = kept.previous
        return out

    async def get(self, response_id: str) -> KeptResponse | None:
        kept = self._get(response_id)
        if kept is not None:
            return kept
        chain = await self._elsewhere(response_id, [])
        return chain[0] if chain else None

    def _get(self, response_id: str) -> KeptResponse | None:
        entry = self._kept.get(response_id)
        return None if entry is None or entry[2] < time.monotonic() else entry[0]

    async def _elsewhere(
        self, response_id: str, newer: list[KeptResponse]
    ) -> list[KeptResponse] | None:
        """The chain of ``response_id``, not kept here, after ``newer`` (None: nowhere)."""
        owner = self.peers.response_owner(response_id) if self.peers is not None else None
        if self.peers is None or owner is None:
            return None
        older = await self.peers.chain(owner, response_id)
        return None if older is None else [*newer, *older][:MAX_CHAIN]


class MemoryChats:
    """The UI chats' resumable answers in this process's memory:
    ``resume_ttl`` seconds each, at most ``max_ui_chats`` (the oldest go first)."""

    def __init__(self, ttl: float, max_chats: int) -> None:
        self.ttl = ttl
        self.max_chats = max_chats
        self._kept: OrderedDict[str, tuple[ChatAnswer, float]] = OrderedDict()

    async def put(self, name: str, answer: ChatAnswer) -> None:
        now = time.monotonic()
        self._kept.pop(name, None)
        self._kept[name] = (answer, now + self.ttl)
        while self._kept and (
            len(self._kept) > self.max_chats or next(iter(self._kept.values()))[1] < now
        ):
            self._kept.popitem(last=False)

    async def get(self, name: str) -> ChatAnswer | None:
        entry = self._kept.get(name)
        return None if entry is None or entry[1] < time.monotonic() else entry[0]

    async def drop(self, name: str, gid: str) -> None:
        entry = self._kept.get(name)
        if entry is not None and entry[0].gid == gid:
            del self._kept[name]
