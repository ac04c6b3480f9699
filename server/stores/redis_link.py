"""``resume: redis``: one node's connection to Redis, and what it reads there.

``RedisLink`` holds the two connection pools (one for commands, one for
relays' blocking reads), says an outage once and probes until Redis is
back, and reads: a resume's record and replays (coalesced), a relay's
stream (``follow``), leases and cancels. ``redis_store.RedisStore`` adds
the writes. The keys are in ``redis_keys.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

import msgspec
import structlog
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from tokenwire.protocol import Error, Finish, GenerationFrame, ServerFrame

from ..config import ServerSettings
from ..metrics import Metrics
from . import resume
from .contract import Record, Replay
from .redis_client import (
    CONNECTIONS,
    FAILURES,
    RELAY_CONNECTIONS,
    connect,
    disconnect,
    is_cluster,
    publish,
)
from .redis_keys import (
    APPEND,
    APPEND_SHA,
    COALESCE,
    PROBE,
    TIMEOUT,
    cancel_key,
    channel,
    conversations_key,
    decode_record,
    entry_id,
    frames_after,
    lease_key,
    orphan_error,
    pack_frames,
    probe_key,
    safe_url,
    session_key,
    stream_key,
    watch_key,
)
from .resume import Cause, contiguous, seq_of

log = structlog.get_logger("tokenwire.resume")

T = TypeVar("T")


REFUSALS: Final = ("OOM", "READONLY", "MISCONF", "NOREPLICAS")
"""Error prefixes of a Redis that is reachable but refuses writes."""
REFUSALS_END: Final = 3.0
"""Seconds of writes taken, without a refusal, that end an episode of refusals."""


def refusal_of(exc: BaseException | str) -> str | None:
    """Redis's refusal of a write (``OOM command not allowed ...``), or None.
    redis-py raises its own class for some, without the prefix; a script's
    error keeps it."""
    if isinstance(exc, OutOfMemoryError | ReadOnlyError):
        return f"{REFUSALS[0] if isinstance(exc, OutOfMemoryError) else REFUSALS[1]} {exc}"
    if isinstance(exc, BaseException) and not isinstance(exc, ResponseError):
        return None
    text = str(exc)
    return text if text.startswith(REFUSALS) else None


class RedisLink:
    """One node's connection to the shared Redis, and its reads."""

    def __init__(self, url: str, settings: ServerSettings, metrics: Metrics) -> None:
        self.url = url
        self.settings = settings
        self.metrics = metrics
        self.node = secrets.token_hex(8)
        self.cluster = is_cluster(url)
        """A Redis Cluster (``redis+cluster://``): ``redis_client.py``."""
        # A burst (a hundred resumes at once) waits for a pooled connection
        # instead of failing; relays' blocking reads have a pool of their own,
        # so they never hold up the stores.
        self.client = connect(url, timeout=TIMEOUT, blocking_timeout=TIMEOUT, pool=CONNECTIONS)
        self.relays = connect(
            url,
            timeout=TIMEOUT + settings.resume_lease,
            blocking_timeout=None,
            pool=RELAY_CONNECTIONS,
        )
        self.reachable = True
        self.refusing: str | None = None
        """Redis's refusal while it refuses writes (``OOM``, ``READONLY``)."""
        self._taking_since: float | None = None
        self._write_probe: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self.ttl = int(settings.resume_ttl + settings.orphan_timeout + 60)
        self.lease_ms = int(settings.resume_lease * 1000)
        self._append_sha = APPEND_SHA
        self._fetches: list[
            tuple[str, Mapping[str, int], asyncio.Future[tuple[Record | None, dict[str, Replay]]]]
        ] = []
        self._fetching: asyncio.Task[None] | None = None

    # -- health ---------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Redis is reachable and takes writes: ``ready`` offers a resume."""
        return self.reachable and self.refusing is None

    def trouble(self, exc: BaseException) -> None:
        """A command failed: Redis refusing writes (full, a read-only
        replica) is not Redis gone."""
        if (refusal := refusal_of(exc)) is not None:
            self.refused(refusal)
        else:
            self.failed(exc)

    def refused(self, error: str) -> None:
        """Redis refused a write: said and counted once per episode, which
        ends once it has taken every write for ``REFUSALS_END`` seconds (a
        Redis at its ``maxmemory`` takes a write now and then, as keys
        expire: that is still the same episode)."""
        self._taking_since = None
        if self.refusing is None:
            self.refusing = error
            self.metrics.store_refusals.inc()
            log.warning("resume store refuses writes", url=safe_url(self.url), error=error[:200])
        if self._write_probe is None or self._write_probe.done():
            self._write_probe = asyncio.get_running_loop().create_task(self._probe_writes())

    async def _probe_writes(self) -> None:
        """While Redis refuses writes: one small write a ``PROBE`` (a key
        that expires by itself), until the episode ends."""
        while self.refusing is not None:
            await asyncio.sleep(PROBE)
            try:
                await self.client.set(probe_key(self.node), b"1", px=int(PROBE * 2000))
            except FAILURES as exc:
                self.trouble(exc)  # still refused: the episode goes on; gone: the outage's probe
                if not self.reachable:
                    return
            else:
                self.accepted()

    def accepted(self) -> None:
        """Frames were stored (see ``refused``)."""
        if self.refusing is None:
            return
        now = asyncio.get_running_loop().time()
        if self._taking_since is None:
            self._taking_since = now
        elif now - self._taking_since >= REFUSALS_END:
            self.refusing = None
            log.warning("resume store takes writes again", url=safe_url(self.url))

    def failed(self, exc: BaseException) -> None:
        """Redis could not be reached: said once per outage, never per frame."""
        if self.reachable:
            self.reachable = False
            self.metrics.store_outages.inc()
            log.error("resume store unreachable", url=safe_url(self.url), error=repr(exc))
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(PROBE)
            with contextlib.suppress(*FAILURES):
                await self.client.ping()
                self.reachable = True
                log.warning("resume store back", url=safe_url(self.url))
                return

    async def start(self) -> None:
        try:
            await self.client.ping()
            self._append_sha = await self.client.script_load(APPEND)
        except FAILURES as exc:
            self.trouble(exc)

    async def close(self) -> None:
        for probe in (self._probe, self._write_probe):
            if probe is not None:
                probe.cancel()
        await disconnect(self.client)
        await disconnect(self.relays)

    async def put_value(self, key: str, value: Any, ttl: int) -> None:
        """``value`` (MessagePack) under ``key`` for ``ttl`` seconds, quietly."""
        data = msgspec.msgpack.encode(value)
        await self.quietly(lambda: self.client.set(key, data, ex=ttl))

    async def get_value(self, key: str, kind: type[T]) -> T | None:
        """The ``kind`` ``put_value`` kept under ``key`` (None: none, or Redis down)."""
        found = await self.quietly(lambda: self.client.get(key))
        return None if found is None else msgspec.msgpack.decode(found, type=kind)

    async def quietly(self, command: Any) -> Any:
        """``command()`` awaited; None if Redis is (or just went) down, or
        refused it."""
        if not self.reachable:
            return None
        try:
            return await command()
        except FAILURES as exc:
            self.trouble(exc)
            return None

    # -- reading ------------------------------------------------------------------

    async def fetch(
        self, h: str, positions: Mapping[str, int]
    ) -> tuple[Record | None, dict[str, Replay]]:
        """The session's record (None: unknown, or Redis down) and, per listed
        generation, its stored frames after the seq. Resumes that arrive
        together (a node restarting, a network coming back) share one round
        trip: their reads wait ``COALESCE`` and go in one pipeline."""
        if not self.up:
            return None, {}
        reply: asyncio.Future[tuple[Record | None, dict[str, Replay]]]
        reply = asyncio.get_running_loop().create_future()
        self._fetches.append((h, positions, reply))
        if self._fetching is None:
            self._fetching = asyncio.get_running_loop().create_task(self._fetch())
        return await reply

    async def _fetch(self) -> None:
        try:
            await asyncio.sleep(COALESCE)
            while self._fetches:
                batch, self._fetches = self._fetches, []
                pipe = self.client.pipeline(transaction=False)
                for h, positions, _ in batch:
                    pipe.hgetall(session_key(h))
                    pipe.hgetall(conversations_key(h))
                    for gid, after_seq in positions.items():
                        pipe.xrange(stream_key(h, gid), min=f"({entry_id(after_seq)}")
                try:
                    results = iter(await pipe.execute())
                except FAILURES as exc:
                    self.trouble(exc)
                    for *_, reply in batch:
                        if not reply.done():
                            reply.set_result((None, {}))
                    continue
                for _, positions, reply in batch:
                    raw, conversations = next(results), next(results)
                    replays = {
                        gid: frames_after(gid, next(results), after_seq)
                        for gid, after_seq in positions.items()
                    }
                    if not reply.done():
                        reply.set_result((decode_record(raw, conversations), replays))
        finally:
            self._fetching = None

    async def load(self, h: str) -> Record | None:
        """The session's record, or None (unknown, or Redis down)."""
        record, _ = await self.fetch(h, {})
        return record

    async def read(
        self, h: str, gid: str, after_seq: int, block_ms: int
    ) -> list[GenerationFrame] | None:
        """Frames stored after ``after_seq``, waiting up to ``block_ms`` (None:
        none came); the caller checks that they follow on."""
        response: Any = await self.relays.xread(
            {stream_key(h, gid): entry_id(after_seq)}, block=block_ms
        )
        if not response:
            return None
        entries = response[0][1]
        frames = frames_after(gid, entries, after_seq)
        return frames if isinstance(frames, list) else None

    async def follow(
        self, h: str, gid: str, after_seq: int
    ) -> AsyncIterator[Sequence[ServerFrame]]:
        """The frames another node stores for its generation ``gid`` after
        ``after_seq``, batch by batch, as they come, up to its terminal frame.

        If that node stops renewing its lease (it died), or Redis cannot be
        reached, the last batch is a retryable ``upstream_error`` (stored
        first when it can be, so every node tells the same end). If frames
        are missing, the last batch is ``resume_failed`` ``gap`` with its
        cause (logged and counted)."""
        block_ms = max(50, int(self.settings.resume_lease * 1000 / 3))
        last = after_seq
        while True:
            try:
                await self.watching(h, gid)
                frames = await self.read(h, gid, last, block_ms)
                if frames is None and not await self.alive(h, gid):
                    frame = orphan_error(gid, last + 1)
                    if not await self.end_orphan(h, frame):
                        continue  # its node stored a frame meanwhile: read it
                    frames = [frame]
            except FAILURES as exc:
                self.trouble(exc)
                frames = [orphan_error(gid, last + 1)]
            if not frames:
                continue
            if not contiguous(frames, last):
                record = await self.load(h)
                cause = record.lost.get(gid, Cause.DATA_GONE) if record else Cause.DATA_GONE
                span = (last + 1, seq_of(frames[0]) - 1)
                yield [resume.failed(self.metrics, gid, "gap", cause, frames=span)]
                return
            yield frames
            if isinstance(frames[-1], Finish | Error):
                return
            last = seq_of(frames[-1])

    async def alive(self, h: str, gid: str) -> bool:
        """Whether a node holds the lease on the generation (it is running)."""
        return bool(await self.client.exists(lease_key(h, gid)))

    async def watching(self, h: str, gid: str) -> None:
        """This node relays ``gid`` to its client: its owner must not orphan it."""
        await self.client.set(watch_key(h, gid), self.node, px=self.lease_ms)

    async def end_orphan(self, h: str, frame: Error) -> bool:
        """Store the terminal frame of a generation whose owner died; False if
        the owner stored another frame first (read again)."""
        gid = frame.id or ""
        try:
            await self.client.xadd(
                stream_key(h, gid),
                {"f": pack_frames([frame])},
                id=entry_id(frame.seq or 0),
            )
        except ResponseError:
            return False
        return True

    async def watched(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of (session hash, id) another node relays now."""
        pairs = list(pairs)
        if not pairs or not self.reachable:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for h, gid in pairs:
            pipe.exists(watch_key(h, gid))
        results = await self.quietly(pipe.execute)
        return {pair for pair, seen in zip(pairs, results or (), strict=False) if seen}

    async def renew(self, running: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Renew this node's leases on ``running`` (session hash, id) and
        return those another node asked to cancel."""
        running = list(running)
        if not running or not self.reachable:
            return []
        pipe = self.client.pipeline(transaction=False)
        for h, gid in running:
            pipe.set(lease_key(h, gid), self.node, px=self.lease_ms)
            pipe.exists(cancel_key(h, gid))
            pipe.expire(session_key(h), self.ttl)
            pipe.expire(stream_key(h, gid), self.ttl)
        results = await self.quietly(pipe.execute)
        if results is None:
            return []
        return [pair for pair, asked in zip(running, results[1::4], strict=True) if asked]

    async def cancel(self, h: str, gid: str, owner: str) -> None:
        """Ask ``owner`` to cancel its generation: a key (seen at its next lease
        renewal) and a publish (seen at once)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(cancel_key(h, gid), "1", ex=self.ttl)
        publish(pipe, self.cluster, channel(owner), f"{h} {gid}")
        await self.quietly(pipe.execute)
