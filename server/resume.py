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

import hashlib
import hmac
import secrets
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Final, Literal

from tokenwire.protocol import (
    Error,
    Finish,
    GenerationFrame,
    Reasoning,
    Token,
    ToolCallChunk,
    ToolCallComplete,
)

FRAME_OVERHEAD: Final = 48
"""Bytes a kept frame is counted for, besides its text."""
GAP: Final = "gap"


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

    __slots__ = ("ended", "evicted", "first_seq", "frames", "size")

    def __init__(self) -> None:
        self.frames: deque[GenerationFrame] = deque()
        self.first_seq = 0
        """The seq of ``frames[0]``: frames before it were dropped."""
        self.size = 0
        self.ended = False
        self.evicted = False

    def after(self, last_seq: int) -> list[GenerationFrame] | Literal["gap"]:
        """The frames after ``last_seq``, or ``gap`` when some are no longer kept."""
        if self.evicted or last_seq + 1 < self.first_seq:
            return GAP
        start = last_seq + 1 - self.first_seq
        return list(self.frames)[start:]

    def drop_oldest(self) -> int:
        frame = self.frames.popleft()
        self.first_seq = seq_of(frame) + 1
        size = frame_size(frame)
        self.size -= size
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
            self.size -= log.drop_oldest()
        while self.size > self.limit and self._finished:
            oldest, _ = self._finished.popitem(last=False)
            self._evict(oldest)
        while self.size > self.limit and len(log.frames) > 1:
            self.size -= log.drop_oldest()

    def _evict(self, log: FrameLog) -> None:
        self.size -= log.size
        log.frames.clear()
        log.size = 0
        log.evicted = True

    def release(self, log: FrameLog) -> None:
        """The log's session is forgotten: its bytes go back."""
        self._finished.pop(log, None)
        self._evict(log)
