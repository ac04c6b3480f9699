"""Resume: a ``resume`` message attaches the session it names to a new
connection and replays what each listed generation missed.

``Resumer`` answers it (the contract's order: each generation's answer with
its replay, then the session's, then the live frames) from the node's
memory (``resume: memory``), from Redis (``resume: redis``: the session may
have run on another node, whose generations are then relayed), or from the
worker holding it (``--workers``: ``workers.pipe``). Every refusal names
its cause (``resume.failed``). It also remembers the sessions that expired
or were evicted, so that a late resume hears ``expired``, not ``unknown``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import structlog

from tokenwire.protocol import (
    Error,
    Finish,
    GenerationFrame,
    Resume,
    Resumed,
    ResumeFailed,
    ResumeFailure,
    ServerFrame,
)

from .. import workers
from ..stores import resume
from ..stores.redis_store import Record, Replay
from ..stores.resume import GAP, Cause, contiguous, same_key, seq_of, token_hash
from .session import SKIP_ALL, Session

if TYPE_CHECKING:
    from ..app import TokenwireServer
    from .link import Link

log = structlog.get_logger("tokenwire.server")

EXPIRED_KEPT: Final = 65_536
"""Tokens of expired sessions remembered, so that a late resume hears ``expired``."""


class Resumer:
    """A server's resumes."""

    def __init__(self, server: TokenwireServer) -> None:
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
        meanwhile (``Session.park``), so none falls between the read and the
        attach.
        """
        server = self.server
        owner = server.workers.token_owner(message.token) if server.workers is not None else None
        if owner is not None:  # another worker holds the session
            await workers.pipe(server, link, message, owner)
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
            if server.redis is not None:
                record, stored = await server.redis.fetch(wanted, positions)
        else:
            if server.redis is not None and wanted != fresh.token_hash:
                record, stored = await server.redis.fetch(wanted, positions)
            failure = self._failure(fresh.key_hash, wanted, session, record)
            if failure is not None:
                reason, cause = failure
                server.metrics.resumes.labels(reason).inc()
                link.send([ResumeFailed(id=gid, reason=reason) for gid in positions])
                link.send([resume.failed(server.metrics, None, reason, cause)])
                return
            assert record is not None  # known to Redis only: its generations ran elsewhere
            session = Session(server, record.key_hash, message.token, record.session_id)
            session.generated = True
            server.sessions[wanted] = session
            self._take_over(fresh, session, link, positions)
        if record is not None:
            for name, messages in record.conversations.items():
                server.history_bytes += session.core.restore(name, messages)
        if server.redis is None:
            for gid, last_seq in positions.items():
                link.send(self._replay(session, gid, last_seq))
            link.send([Resumed(id=None)])
            return
        server.background(server.redis.set_deadline(session, 0))
        if session.link is not link:
            return  # another resume took the session meanwhile
        replayed = [
            (gid, self._replay_stored(session, record, gid, last_seq, stored.get(gid, "gap")))
            for gid, last_seq in positions.items()
        ]
        link.send([Resumed(id=None)])
        for gid, last in replayed:  # now the live frames
            session.unpark(gid, last)

    def _take_over(
        self, fresh: Session, session: Session, link: Link, positions: Mapping[str, int]
    ) -> None:
        """``link`` serves ``session`` from now on, instead of the new session
        its ``ready`` announced (which has done nothing yet)."""
        fresh.discard()
        session.attach(link)
        self.server.metrics.resumes.labels("resumed").inc()
        log.info("session resumed", session=session.id, generations=len(positions))
        if self.server.redis is not None:
            session.park(positions)

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

    def _replay(self, session: Session, gid: str, last_seq: int) -> list[ServerFrame]:
        """``resume: memory``: the frames after ``last_seq``, from the node's memory."""
        frame_log = session.logs.get(gid)
        if frame_log is None:
            return [resume.failed(self.server.metrics, gid, "unknown", Cause.NOT_STARTED)]
        frames: list[GenerationFrame] | str = frame_log.after(last_seq)
        if frames == GAP or isinstance(frames, str):
            cause = frame_log.dropped_by or Cause.TOTAL_BYTES
            end = frame_log.first_seq - 1 if not frame_log.evicted else None
            span = (last_seq + 1, end)
            session.delivered[gid] = SKIP_ALL  # nothing more of it goes to this client
            return [resume.failed(self.server.metrics, gid, "gap", cause, frames=span)]
        return [Resumed(id=gid, after_seq=last_seq), *frames]

    def _replay_stored(
        self, session: Session, record: Record | None, gid: str, last_seq: int, stored: Replay
    ) -> int | None:
        """``resume: redis``: the frames after ``last_seq`` as read from Redis;
        the live ones follow (from this node's generation, or relayed from the
        node running it: ``Session.relay``) after the seq returned (None: the
        session never had ``gid``).

        A generation of this node that ended may still have frames on their
        way: waiting to be stored (``RedisStore.queued``), or stored since
        the read and held for the replay (``Session.parked_for``). They come
        live, as a running generation's do: only frames that went unkept
        make a ``gap``.
        """
        link = session.link
        store = self.server.redis
        assert link is not None and store is not None
        here = (
            gid in session.generations
            or gid in session.owners
            or store.queued(session, gid)
            or session.parked_for(gid)
        )
        ended_here = gid in session.known and not here
        elsewhere = None if here or ended_here or record is None else record.requests.get(gid)
        live = here or elsewhere is not None
        frames: list[GenerationFrame] | ResumeFailure = stored
        if isinstance(stored, list) and not contiguous(stored, last_seq):
            frames = "gap"  # the oldest were trimmed, or never stored
        elif stored == "unknown":  # nothing stored after last_seq
            frames = [] if live else "gap" if ended_here or gid in session.known else "unknown"
        elif isinstance(stored, list) and not live:
            # Ended without a stored terminal frame: what follows was lost
            # with Redis's data.
            ended = bool(stored) and isinstance(stored[-1], Finish | Error)
            frames = stored if ended else "gap"
        if frames == "unknown":
            link.send([resume.failed(self.server.metrics, gid, "unknown", Cause.NOT_STARTED)])
            return None
        if isinstance(frames, str):
            lost = session.lost.get(gid) or (record.lost.get(gid) if record else None)
            span: tuple[int, int | None] = (last_seq + 1, None)  # the tail is missing
            if isinstance(stored, list) and stored:
                head = seq_of(stored[0])
                span = (
                    (last_seq + 1, head - 1)
                    if head > last_seq + 1
                    else (seq_of(stored[-1]) + 1, None)
                )
            failure = resume.failed(
                self.server.metrics, gid, "gap", lost or Cause.DATA_GONE, frames=span
            )
            link.send([failure])
            return SKIP_ALL
        link.send([Resumed(id=gid, after_seq=last_seq), *frames])
        last = seq_of(frames[-1]) if frames else last_seq
        ended = bool(frames) and isinstance(frames[-1], Finish | Error)
        if not ended and elsewhere is not None and record is not None:
            session.relay(elsewhere, record.owners.get(gid, ""), last)
        return last
