"""What a resume needs: tokens, and the frames kept for it.

A session's ``resume_token`` is 32 random bytes (URL-safe base64). The
server keeps only its SHA-256 (``token_hash``): that names the session in
memory and in Redis, so neither a log line nor a Redis key holds a token.
The token is bound to the API key that opened the session (``key_hash``):
presented with another key, it is ``unknown``.

The stores (``contract.py``) keep the frames; every refusal of a resume
is a ``resume_failed`` frame made by ``failed``, with its ``Cause``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import Final

import structlog

from tokenwire.protocol import (
    GenerationFrame,
    ResumeFailed,
    ResumeFailure,
)

from ..metrics import Metrics

log = structlog.get_logger("tokenwire.resume")

SKIP_ALL: Final = 1 << 62
"""A seq past every frame: no more of that generation's frames are sent."""


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


def new_response_id() -> str:
    """An id for a response of OpenAI's surfaces (one process's)."""
    return f"resp_{secrets.token_hex(16)}"


def token_hash(token: str) -> str:
    """The name a session is kept under: the token's SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:40]


def key_hash(key: bytes | None) -> str:
    """The API key a session is bound to, hashed ("" with authentication off)."""
    return "" if key is None else hashlib.sha256(b"tokenwire key\0" + key).hexdigest()


def same_key(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)


def seq_of(frame: GenerationFrame) -> int:
    """A generation frame's seq (an ``error`` frame's is optional in the type only)."""
    return frame.seq or 0


def contiguous(frames: Sequence[GenerationFrame], after_seq: int) -> bool:
    """Whether ``frames`` are exactly the seqs after ``after_seq``, in order."""
    return all(seq_of(frame) == after_seq + 1 + i for i, frame in enumerate(frames))


def gap_span(last_seq: int, stored: Sequence[GenerationFrame]) -> tuple[int, int | None]:
    """The seqs a ``gap`` after ``last_seq`` is missing, given the frames still
    kept after it: up to the first kept one, else from past the last (None:
    to the end)."""
    if not stored:
        return last_seq + 1, None
    head = seq_of(stored[0])
    if head > last_seq + 1:
        return last_seq + 1, head - 1
    return seq_of(stored[-1]) + 1, None
