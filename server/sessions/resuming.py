"""Resume: a ``resume`` message attaches the session it names to a new
connection and replays what each listed generation missed.

``Resumer`` answers it (the contract's order: each generation's answer with
its replay, then the session's, then the live frames) from the node's
store (``stores.contract``: from the node's memory, or from Redis, where
the session may have run on another node, whose generations are then
relayed), or from the worker holding it (``--workers``: ``workers.pipe``). Every refusal names
its cause (``resume.failed``). It also remembers the sessions that expired
or were evicted, so that a late resume hears ``expired``, not ``unknown``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from tokenwire.protocol import Resume, Resumed, ResumeFailed, ResumeFailure

from .. import workers
from ..stores import resume
from ..stores.contract import Record, Replay
from ..stores.resume import Cause, same_key, token_hash
from .session import Session, SessionContext

if TYPE_CHECKING:
    from .link import Link


class ResumeContext(SessionContext, Protocol):
    """What a resume needs of its server (``app.TokenwireServer`` is one)."""

    sessions: dict[str, Session]
    """Every session this process holds, by its token's hash."""
    workers: workers.Workers | None


log = structlog.get_logger("tokenwire.server")

EXPIRED_KEPT: Final = 65_536
"""Tokens of expired sessions remembered, so that a late resume hears ``expired``."""


class Resumer:
    """A server's resumes."""

    def __init__(self, server: ResumeContext) -> None:
        self.server = server
        self.expired: dict[str, tuple[str, Cause]] = {}
        """Token hash → key hash of sessions ended by ``resume_ttl`` or
        evicted at ``max_sessions`` (the newest few), and which."""

    def expire(self, session: Session, cause: Cause) -> None:
        """A later resume of ``session`` hears ``expired``."""
        self.expired[session.token_hash] = session.key_hash, cause
        while len(self.expired) > EXPIRED_KEPT:
            del self.expired[next(iter(self.expired))]

    async def resume(self, link: Link, message: Resume) -> None:
        """A ``resume``, the first message on ``link``: attach the session it
        names, and replay what each listed generation missed.

        The answers come in the order listed, each ``resumed`` followed by
        the frames it replays; then the session's own answer (``id`` null);
        then the live frames. With Redis, one round trip reads the session's
        record and every listed generation's stored frames. A session this
        node holds is attached before that read, its live frames held
        meanwhile (``Delivery.park``), so none falls between the read and the
        attach.
        """
        server = self.server
        owner = server.workers.token_owner(message.token) if server.workers is not None else None
        if owner is not None:  # another worker holds the session
            assert server.workers is not None
            await workers.pipe(server.workers, server.metrics, link, message, owner)
            return
        fresh = link.session
        assert fresh is not None
        wanted = token_hash(message.token)
        positions = message.generations
        session = server.sessions.get(wanted) if wanted != fresh.token_hash else None
        record: Record | None = None
        stored: dict[str, Replay] = {}
        held_here = (
            session is not None and self._failure(fresh.key_hash, wanted, session, None) is None
        )
        if session is not None and held_here:
            self._take_over(fresh, session, link, positions)
            record, stored = await server.store.fetch(wanted, positions)
        else:
            if wanted != fresh.token_hash:
                record, stored = await server.store.fetch(wanted, positions)
            failure = self._failure(fresh.key_hash, wanted, session, record)
            if failure is not None:
                reason, cause = failure
                server.metrics.resumes.labels(reason).inc()
                link.send([ResumeFailed(id=gid, reason=reason) for gid in positions])
                link.send([resume.failed(server.metrics, None, reason, cause)])
                return
            assert record is not None  # known to the store only: it ran on another node
            session = Session(server, record.key_hash, message.token, record.session_id)
            session.generated = True
            server.sessions[wanted] = session
            self._take_over(fresh, session, link, positions)
        if record is not None:
            for name, messages in record.conversations.items():
                server.history_bytes += session.core.restore(name, messages)
        server.background(session.kept.detached(0))
        if session.link is not link:
            return  # another resume took the session meanwhile
        replayed: list[tuple[str, int | None]] = []
        for gid, last_seq in positions.items():
            frames, last = session.kept.replay(gid, last_seq, record, stored.get(gid, "gap"))
            link.send(frames)
            replayed.append((gid, last))
        link.send([Resumed(id=None)])
        for gid, last in replayed:  # now the live frames
            session.deliver(session.delivery.unpark(gid, last))

    def _take_over(
        self, fresh: Session, session: Session, link: Link, positions: Mapping[str, int]
    ) -> None:
        """``link`` serves ``session`` from now on, instead of the new session
        its ``ready`` announced (which has done nothing yet)."""
        fresh.discard()
        session.attach(link)
        self.server.metrics.resumes.labels("resumed").inc()
        log.info("session resumed", session=session.id, generations=len(positions))
        session.delivery.park(positions)  # the live frames wait for the replay

    def _failure(
        self, key: str, wanted: str, session: Session | None, record: Record | None
    ) -> tuple[ResumeFailure, Cause] | None:
        """Why a resume of ``wanted`` presented with ``key`` fails, or None."""
        if session is not None:
            if same_key(session.key_hash, key) and session.resumable:
                return None
            return "unknown", Cause.NO_SESSION
        if record is not None:
            if not same_key(record.key_hash, key):
                return "unknown", Cause.NO_SESSION
            if not record.expired(time.time()):
                return None
            known = self.expired.get(wanted)  # this node knows why (evicted, say)
            return "expired", known[1] if known is not None else Cause.RECORD_EXPIRED
        expired = self.expired.get(wanted)
        if expired is not None and same_key(expired[0], key):
            return "expired", expired[1]
        return "unknown", Cause.NO_SESSION
