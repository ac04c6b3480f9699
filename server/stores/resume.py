"""What a resume needs: tokens, and the frames kept for it.

A session's ``resume_token`` is 32 random bytes (URL-safe base64). The
server keeps only its SHA-256 (``token_hash``): that names the session in
memory and in Redis, so neither a log line nor a Redis key holds a token.
The token is bound to the API key that opened the session (``key_hash``):
presented with another key, it is ``unknown``.

``resume: memory`` keeps each generation's frames in a ``FrameLog``, all of
a server's logs bounded together by ``MemoryLogs``: past
``resume_generation_bytes`` a log drops its oldest frames; past
``resume_total_bytes`` the oldest finished generations are evicted first. A
resume that needs a frame no longer kept gets ``gap``, never a hole.
``resume: redis`` is ``redis_store.RedisStore``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Final, Literal

import structlog

from tokenwire.protocol import (
    Error,
    Finish,
    GenerationFrame,
    Reasoning,
    ResumeFailed,
    ResumeFailure,
    Token,
    ToolCallChunk,
    ToolCallComplete,
)

from ..metrics import Metrics

log = structlog.get_logger("tokenwire.resume")

FRAME_OVERHEAD: Final = 48
"""Bytes a kept frame is counted for, besides its text."""
GAP: Final = "gap"


class Cause(enum.StrEnum):
    """Why a resume failed, as the server's log and
    ``tokenwire_resume_failures_total{reason, cause}`` name it (the client
    hears only the reason: ``unknown``, ``expired``, ``gap``)."""

    GENERATION_BYTES = "resume_generation_bytes"
    """gap: the generation's oldest frames were dropped past that bound."""
    TOTAL_BYTES = "resume_total_bytes"
    """gap: the node's frames for resumes reached that bound (``memory``)."""
    STORE_UNREACHABLE = "store_unreachable"
    """gap: Redis could not be reached while the generation streamed."""
    STORE_REFUSED = "store_refused"
    """gap: Redis refused writes (out of memory) while the generation streamed."""
    DATA_GONE = "data_gone"
    """gap: the stored frames are gone (Redis flushed or restarted, keys expired)."""
    NO_SESSION = "no_session"
    """unknown: no session has this token (or another API key's does)."""
    NOT_STARTED = "not_started"
    """unknown: the session never had this generation (its ``generate``
    never reached the server: resend it)."""
    WORKER_GONE = "worker_gone"
    """unknown: the worker process that held the session is gone."""
    RESUME_TTL = "resume_ttl"
    """expired: the session waited for a resume longer than ``resume_ttl``."""
    MAX_SESSIONS = "max_sessions"
    """expired: the session, detached, made room for a new one at ``max_sessions``."""
    RECORD_EXPIRED = "record_expired"
    """expired: Redis holds the session past its deadline."""


CAUSE_TEXT: Final[dict[Cause, str]] = {
    Cause.GENERATION_BYTES: "trimmed by resume_generation_bytes",
    Cause.TOTAL_BYTES: "evicted by resume_total_bytes",
    Cause.STORE_UNREACHABLE: "not stored: Redis was unreachable",
    Cause.STORE_REFUSED: "not stored: Redis refused writes",
    Cause.DATA_GONE: "gone from the store (flushed or expired)",
    Cause.NO_SESSION: "no such session for this key",
    Cause.NOT_STARTED: "the session never had it",
    Cause.WORKER_GONE: "the worker that held the session is gone",
    Cause.RESUME_TTL: "past resume_ttl",
    Cause.MAX_SESSIONS: "evicted to make room at max_sessions",
    Cause.RECORD_EXPIRED: "past its deadline in the store",
}
"""What each cause means, for the log line."""


def failed(
    metrics: Metrics,
    gid: str | None,
    reason: ResumeFailure,
    cause: Cause,
    *,
    frames: tuple[int, int | None] | None = None,
) -> ResumeFailed:
    """The ``resume_failed`` frame for ``gid`` (None: the session), said once
    at info with its cause and counted (``tokenwire_resume_failures_total``).
    ``frames``: the seqs a ``gap`` is missing, first and last (None: not known)."""
    what = CAUSE_TEXT[cause]
    if frames is not None:
        first, last = frames
        if last is None:
            span = f"frames from {first}"
        else:
            span = f"frame {first}" if last == first else f"frames {first}-{last}"
        what = f"{span} {what}"
    metrics.resume_failures.labels(reason, cause.value).inc()
    log.info(f"resume failed: {reason} ({what})", reason=reason, cause=cause.value, generation=gid)
    return ResumeFailed(id=gid, reason=reason)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The name a session is kept under: the token's SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:40]


def key_hash(key: bytes | None) -> str:
    """The API key a session is bound to, hashed ("" with authentication off)."""
    return "" if key is None else hashlib.sha256(b"tokenwire key\0" + key).hexdigest()


def same_key(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)


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


def seq_of(frame: GenerationFrame) -> int:
    """A generation frame's seq (an ``error`` frame's is optional in the type only)."""
    return frame.seq or 0


def contiguous(frames: Sequence[GenerationFrame], after_seq: int) -> bool:
    """Whether ``frames`` are exactly the seqs after ``after_seq``, in order."""
    return all(seq_of(frame) == after_seq + 1 + i for i, frame in enumerate(frames))


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

    def after(self, last_seq: int) -> list[GenerationFrame] | Literal["gap"]:
        """The frames after ``last_seq``, or ``gap`` when some are no longer kept."""
        if self.evicted or last_seq + 1 < self.first_seq:
            return GAP
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
