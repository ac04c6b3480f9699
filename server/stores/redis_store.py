"""``resume: redis``: sessions that any node can resume, kept in Redis.

Keys, for a session named by its token's hash ``h`` (the token itself is
never stored), all expiring ``resume_ttl`` + ``orphan_timeout`` + 60 s after
their last write (refreshed while the session lives)::

    tw:{h}:s          hash   key (the API key's hash), id, deadline (when a
                             resume stops being possible; 0 while attached),
                             g:{gid} (owner node), r:{gid} (the generate),
                             lost:{gid} (why some of its frames are not
                             kept: a ``resume.Cause``)
    tw:{h}:c          hash   conversation name → its messages (JSON)
    tw:{h}:g:{gid}    stream one entry per stored batch of a generation's
                             frames (MessagePack), id 0-{last seq + 1}: ids
                             grow with seq, so a duplicate write is refused
    tw:{h}:l:{gid}    string the owner node's lease on a running generation
    tw:{h}:x:{gid}    string a cancel asked from another node
    tw:{h}:w:{gid}    string another node relays the generation to its client
    tw:node:{node}    channel cancels for that node's generations

A frame reaches the client only once stored. The frames of all of a
node's sessions are coalesced for ``COALESCE`` seconds and stored in one
pipelined round trip: one XADD (with MAXLEN) per generation with frames in
the batch; a stream's EXPIRE goes with its first and last entries and with
each lease renewal, not with every entry. When Redis cannot be reached, frames go to the client
unstored, the outage is logged and counted once, ``ready`` says resume is
off, and a probe brings it back; a resume that would need the missing frames
gets ``gap`` (replays check that seqs are contiguous).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, get_args

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from tokenwire.protocol import (
    Error,
    ErrorCode,
    Finish,
    Generate,
    GenerationFrame,
    ServerFrame,
    error_frame,
)

from ..config import ServerSettings
from ..metrics import Metrics
from . import resume
from .resume import Cause, contiguous, seq_of

if TYPE_CHECKING:
    from ..sessions.session import Session

log = structlog.get_logger("tokenwire.resume")

APPEND: Final = """
local maxlen, ttl = ARGV[1], ARGV[2]
local refused = {''}
for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 4
  local id, data, minid, expire = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local reply
  if minid == '' then
    reply = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, id, 'f', data)
  else
    reply = redis.pcall('XADD', key, 'MINID', minid, id, 'f', data)
  end
  local err = type(reply) == 'table' and reply.err
  if err and not string.find(err, 'equal or smaller', 1, true) then
    refused[1] = err
    refused[#refused + 1] = i
  end
  if expire == '1' then
    redis.call('EXPIRE', key, ttl)
  end
end
return refused
"""
"""One entry for each of several streams, in one call: the arguments are, per
key, the entry id (an id not above the stream's last is refused, quietly: a
duplicate write), the frames, a MINID to trim to (or none: MAXLEN) and
whether to set the stream's expiry. Returns the last refusal's message ('':
none) and the 1-based positions of the keys whose entry Redis refused (out
of memory, say)."""
APPEND_SHA: Final = hashlib.sha1(APPEND.encode()).hexdigest()
CONNECTIONS: Final = 64
"""Pooled connections for storing and reading (each command holds one for
its round trip); past it a command waits up to ``TIMEOUT`` for one."""
RELAY_CONNECTIONS: Final = 512
"""Pooled connections for relays (each blocks on its stream's next entry);
past it a relay waits its turn."""
COALESCE: Final = 0.005
"""Seconds frames wait to be stored together (one XADD per generation per batch)."""
MAX_ENTRIES: Final = 100_000
"""MAXLEN of a generation's stream (entries are batches, so frames are more)."""
TIMEOUT: Final = 1.0
"""Seconds any Redis command may take before the store counts as down."""
PROBE: Final = 1.0
"""Seconds between attempts to reach Redis while it is down."""
LISTEN_RETRY: Final = 0.05
"""Seconds before the cancel listener's first reconnection attempt (then
doubling up to ``PROBE``): a killed connection is replaced at once."""

_frames = msgspec.msgpack.Encoder()
_decode_frames = msgspec.msgpack.Decoder(list[GenerationFrame])
_decode_request = msgspec.msgpack.Decoder(Generate)
_json = msgspec.json.Encoder()
_decode_json = msgspec.json.Decoder(list[dict[str, Any]])

Replay = list[GenerationFrame] | Literal["gap", "unknown"]
"""Frames read back after a seq (not yet checked to follow on), ``unknown``
(nothing stored), or ``gap`` (Redis could not be read)."""
GENERATION_FRAMES: Final = get_args(GenerationFrame)


@dataclass(slots=True)
class Started:
    """A marker in a session's queue: generation ``request`` started here."""

    request: Generate


class StreamEntries:
    """The entries of one generation's stream, as its node wrote them: their
    bytes are bounded by ``resume_generation_bytes``, the oldest trimmed first."""

    __slots__ = ("entries", "size")

    def __init__(self) -> None:
        self.entries: deque[tuple[int, int]] = deque()  # (last seq, bytes)
        self.size = 0

    def add(self, last_seq: int, size: int, limit: int) -> str | None:
        """Count an entry; the MINID to trim the stream to, when past ``limit``."""
        self.entries.append((last_seq, size))
        self.size += size
        trimmed = False
        while self.size > limit and len(self.entries) > 1:
            _, dropped = self.entries.popleft()
            self.size -= dropped
            trimmed = True
        return _entry_id(self.entries[0][0]) if trimmed else None


@dataclass(slots=True)
class Record:
    """A session as Redis holds it."""

    key_hash: str
    session_id: str
    deadline: float
    conversations: dict[str, list[dict[str, Any]]]
    owners: dict[str, str] = field(default_factory=dict)
    requests: dict[str, Generate] = field(default_factory=dict)
    lost: dict[str, Cause] = field(default_factory=dict)
    """Why a generation's node could not keep all of its frames."""

    def expired(self, now: float) -> bool:
        return 0 < self.deadline < now


def _session(h: str) -> str:
    return f"tw:{h}:s"


def _conversations(h: str) -> str:
    return f"tw:{h}:c"


def _stream(h: str, gid: str) -> str:
    return f"tw:{h}:g:{gid}"


def _lease(h: str, gid: str) -> str:
    return f"tw:{h}:l:{gid}"


def _cancel(h: str, gid: str) -> str:
    return f"tw:{h}:x:{gid}"


def _watch(h: str, gid: str) -> str:
    return f"tw:{h}:w:{gid}"


def _channel(node: str) -> str:
    return f"tw:node:{node}"


def _entry_id(last_seq: int) -> str:
    return f"0-{last_seq + 1}"


class Node(Protocol):
    """What the store's background duties need of the node (``TokenwireServer``)."""

    def running(self) -> list[tuple[str, str]]:
        """The node's running generations, as (session hash, generation id)."""
        ...

    def cancel(self, h: str, gid: str) -> None:
        """Another node asked to cancel this one."""
        ...


class RedisStore:
    """One node's connection to the shared Redis."""

    def __init__(self, url: str, settings: ServerSettings, metrics: Metrics) -> None:
        self.url = url
        self.settings = settings
        self.metrics = metrics
        self.node = secrets.token_hex(8)
        # A burst (a hundred resumes at once) waits for a pooled connection
        # instead of failing; relays' blocking reads have a pool of their own,
        # so they never hold up the stores.
        self.client = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=CONNECTIONS,
                timeout=TIMEOUT,
                socket_timeout=TIMEOUT,
                socket_connect_timeout=TIMEOUT,
            )
        )
        self.relays = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=RELAY_CONNECTIONS,
                timeout=None,
                socket_timeout=TIMEOUT + self.settings.resume_lease,
                socket_connect_timeout=TIMEOUT,
            )
        )
        self.up = True
        self._probe: asyncio.Task[None] | None = None
        self.ttl = int(settings.resume_ttl + settings.orphan_timeout + 60)
        self.lease_ms = int(settings.resume_lease * 1000)
        self._node: Node | None = None
        """This node's generations (``serve``)."""
        self._pending: dict[Session, list[object]] = {}
        """Frames (and start markers) waiting to be stored, by session, in order."""
        self._flushing: asyncio.Task[None] | None = None
        self._inflight: dict[Session, list[object]] | None = None
        """The batch being stored now (its frames are delivered once it is)."""
        self._append_sha = APPEND_SHA
        self._fetches: list[
            tuple[str, Mapping[str, int], asyncio.Future[tuple[Record | None, dict[str, Replay]]]]
        ] = []
        self._fetching: asyncio.Task[None] | None = None

    # -- health ---------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """Redis could not be reached: said once per outage, never per frame."""
        if self.up:
            self.up = False
            self.metrics.store_outages.inc()
            log.error("resume store unreachable", url=_safe(self.url), error=repr(exc))
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(PROBE)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self.client.ping()
                self.up = True
                log.warning("resume store back", url=_safe(self.url))
                return

    async def start(self) -> None:
        try:
            await self.client.ping()
            self._append_sha = await self.client.script_load(APPEND)
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.client.aclose()
        await self.relays.aclose()
        await self.client.connection_pool.disconnect()
        await self.relays.connection_pool.disconnect()

    # -- writing ------------------------------------------------------------------

    def submit(self, session: Session, items: Sequence[object]) -> None:
        """Store ``items`` (a session's frames, in order), then deliver them."""
        self._pending.setdefault(session, []).extend(items)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def stored(self, session: Session) -> None:
        """Wait until what ``session`` submitted is stored and delivered."""
        while session in self._pending and self._flushing is not None:
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(COALESCE)
            while self._pending:
                batch, self._pending = self._pending, {}
                self._inflight = batch
                cause = await self._store(batch) if self.up else Cause.STORE_UNREACHABLE
                for session, items in batch.items():
                    if cause is not None:  # delivered all the same, but not kept
                        session.not_stored(_generation_ids(items), cause)
                    session.deliver([item for item in items if not isinstance(item, Started)])  # type: ignore[misc]
                self._inflight = None
        finally:
            self._flushing = None
            self._inflight = None

    def queued(self, session: Session, gid: str) -> bool:
        """Whether frames of ``gid`` wait to be stored (they reach the
        session's link through ``Session.deliver`` once they are)."""
        for batch in (self._pending, self._inflight or {}):
            for item in batch.get(session, ()):
                if getattr(item, "id", None) == gid and not isinstance(item, Started):
                    return True
        return False

    async def _store(self, batch: Mapping[Session, Sequence[object]]) -> Cause | None:
        """One round trip: every stream's entry through one script call
        (``APPEND``: a command per token would cost more CPU than the relay),
        then the rarer writes (records, leases, conversations). None: all
        stored; else why not (the generations whose entries Redis refused
        are told so here)."""
        appends: list[EncodableT] = []
        keys: list[str] = []
        owners: list[tuple[Session, str]] = []
        rest = self.client.pipeline(transaction=False)
        for session, items in batch.items():
            self._write(rest, keys, owners, appends, session, items)
        pipe = self.client.pipeline(transaction=False)
        if keys:
            pipe.evalsha(self._append_sha, len(keys), *keys, MAX_ENTRIES, self.ttl, *appends)
        pipe.command_stack.extend(rest.command_stack)
        try:
            results = await pipe.execute(raise_on_error=False)
            if keys and isinstance(results[0], NoScriptError):  # Redis restarted
                self._append_sha = await self.client.script_load(APPEND)
                results[0] = await self.client.evalsha(
                    self._append_sha, len(keys), *keys, MAX_ENTRIES, self.ttl, *appends
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)
            return Cause.STORE_UNREACHABLE
        refusal = ""
        if keys:
            appended = results[0]
            if isinstance(appended, ResponseError):  # the whole script refused
                refusal = str(appended)
                refused = owners
            else:
                refusal = appended[0].decode() if appended and appended[0] else ""
                refused = [owners[int(i) - 1] for i in appended[1:]]
            for session, gid in refused:
                session.not_stored([gid], Cause.STORE_REFUSED)
        for result in results[1:] if keys else results:
            if isinstance(result, ResponseError) and not isinstance(result, NoScriptError):
                refusal = refusal or str(result)
        if refusal:
            log.warning("resume store refused a write", error=refusal)
        return None

    def _write(
        self,
        pipe: Any,
        keys: list[str],
        owners: list[tuple[Session, str]],
        appends: list[EncodableT],
        session: Session,
        batch: Sequence[object],
    ) -> None:
        """A session's frames (and start markers): the streams' entries as
        ``APPEND``'s keys and arguments (``owners``: whose each key is), the
        rest added to ``pipe``."""
        h = session.token_hash
        ttl = self.ttl
        by_generation: dict[str, list[GenerationFrame]] = {}
        record: dict[FieldT, EncodableT] = {}
        for item in batch:
            if isinstance(item, Started):
                gid = item.request.id
                record[f"g:{gid}"] = self.node
                record[f"r:{gid}"] = _frames.encode(item.request)
                by_generation.setdefault(gid, [])
            elif isinstance(item, GENERATION_FRAMES):
                by_generation.setdefault(item.id or "", []).append(item)
        ended: list[GenerationFrame] = []
        for gid, frames in by_generation.items():
            if not frames:
                continue
            key = _stream(h, gid)
            data = _frames.encode(frames)
            last_seq = seq_of(frames[-1])
            kept = session.stored.get(gid)
            if kept is None:
                kept = session.stored[gid] = StreamEntries()
            first = not kept.entries
            # Past resume_generation_bytes the oldest entries go (MINID).
            minid = kept.add(last_seq, len(data), self.settings.resume_generation_bytes)
            if minid is not None:
                session.not_stored([gid], Cause.GENERATION_BYTES)
            last = isinstance(frames[-1], Finish | Error)
            keys.append(key)
            owners.append((session, gid))
            appends += (_entry_id(last_seq), data, minid or "", "1" if first or last else "")
            if last:
                ended.append(frames[-1])
                del session.stored[gid]
            if (cause := session.lost.get(gid)) is not None and gid not in session.lost_told:
                # Any node's resume names why frames are missing (``Record.lost``).
                session.lost_told.add(gid)
                record[f"lost:{gid}"] = cause.value
        if record:
            record["key"] = session.key_hash
            record["id"] = session.id
            pipe.hset(_session(h), mapping=record)
            pipe.expire(_session(h), ttl)
            for name in record:
                if isinstance(name, str) and name.startswith("g:"):
                    pipe.set(_lease(h, name[2:]), self.node, px=self.lease_ms)
        for terminal in ended:
            gid = terminal.id or ""
            conversation = session.conversation_of(gid)
            if conversation is not None:
                name, messages = conversation
                pipe.hset(_conversations(h), name, _json.encode(messages))
                pipe.expire(_conversations(h), ttl)
            pipe.delete(_lease(h, gid))

    async def forget_conversations(self, h: str) -> None:
        await self.quietly(lambda: self.client.delete(_conversations(h)))

    async def set_deadline(self, session: Session, deadline: float) -> None:
        """The session detached (a deadline) or attached again (0)."""
        h = session.token_hash
        fields = {"key": session.key_hash, "id": session.id, "deadline": repr(deadline)}
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(_session(h), mapping=fields)  # type: ignore[arg-type]
        pipe.expire(_session(h), self.ttl)
        pipe.expire(_conversations(h), self.ttl)
        await self.quietly(pipe.execute)

    async def quietly(self, command: Any) -> Any:
        """``command()`` awaited; None if Redis is (or just went) down."""
        if not self.up:
            return None
        try:
            return await command()
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)
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
                    pipe.hgetall(_session(h))
                    pipe.hgetall(_conversations(h))
                    for gid, after_seq in positions.items():
                        pipe.xrange(_stream(h, gid), min=f"({_entry_id(after_seq)}")
                try:
                    results = iter(await pipe.execute())
                except (RedisError, OSError, TimeoutError) as exc:
                    self.failed(exc)
                    for *_, reply in batch:
                        if not reply.done():
                            reply.set_result((None, {}))
                    continue
                for _, positions, reply in batch:
                    raw, conversations = next(results), next(results)
                    replays = {
                        gid: _frames_after(next(results), after_seq)
                        for gid, after_seq in positions.items()
                    }
                    if not reply.done():
                        reply.set_result((_record(raw, conversations), replays))
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
            {_stream(h, gid): _entry_id(after_seq)}, block=block_ms
        )
        if not response:
            return None
        entries = response[0][1]
        frames = _frames_after(entries, after_seq)
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
            except (RedisError, OSError, TimeoutError) as exc:
                self.failed(exc)
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
        return bool(await self.client.exists(_lease(h, gid)))

    async def watching(self, h: str, gid: str) -> None:
        """This node relays ``gid`` to its client: its owner must not orphan it."""
        await self.client.set(_watch(h, gid), self.node, px=self.lease_ms)

    async def end_orphan(self, h: str, frame: Error) -> bool:
        """Store the terminal frame of a generation whose owner died; False if
        the owner stored another frame first (read again)."""
        gid = frame.id or ""
        try:
            await self.client.xadd(
                _stream(h, gid), {"f": _frames.encode([frame])}, id=_entry_id(frame.seq or 0)
            )
        except ResponseError:
            return False
        return True

    # -- cancels across nodes -------------------------------------------------------

    async def cancel(self, h: str, gid: str, owner: str) -> None:
        """Ask ``owner`` to cancel its generation: a key (seen at its next lease
        renewal) and a publish (seen at once)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(_cancel(h, gid), "1", ex=self.ttl)
        pipe.publish(_channel(owner), f"{h} {gid}")
        await self.quietly(pipe.execute)

    async def renew(self, running: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Renew this node's leases on ``running`` (session hash, id) and
        return those another node asked to cancel."""
        running = list(running)
        if not running or not self.up:
            return []
        pipe = self.client.pipeline(transaction=False)
        for h, gid in running:
            pipe.set(_lease(h, gid), self.node, px=self.lease_ms)
            pipe.exists(_cancel(h, gid))
            pipe.expire(_session(h), self.ttl)
            pipe.expire(_stream(h, gid), self.ttl)
        results = await self.quietly(pipe.execute)
        if results is None:
            return []
        return [pair for pair, asked in zip(running, results[1::4], strict=True) if asked]

    async def watched(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of (session hash, id) another node relays now."""
        pairs = list(pairs)
        if not pairs or not self.up:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for h, gid in pairs:
            pipe.exists(_watch(h, gid))
        results = await self.quietly(pipe.execute)
        return {pair for pair, seen in zip(pairs, results or (), strict=False) if seen}

    def serve(self, node: Node) -> list[asyncio.Task[None]]:
        """Start the store's background duties for ``node``: renewing the
        leases on its running generations (three times a lease), and taking
        the cancels other nodes ask of them (published, and by key)."""
        self._node = node
        loop = asyncio.get_running_loop()
        return [
            loop.create_task(self._keep_leases(), name="lease renewal"),
            loop.create_task(self.listen(), name="cancel listener"),
        ]

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resume_lease / 3)
            await self._renew_once()

    async def _renew_once(self) -> None:
        if self._node is None:
            return
        for h, gid in await self.renew(self._node.running()):
            self._node.cancel(h, gid)

    def _cancelled(self, h: str | None, gid: str | None) -> None:
        """A cancel came for (h, gid); None: check every lease's, the
        listener having been away."""
        if self._node is None:
            return
        if h is None or gid is None:
            asyncio.get_running_loop().create_task(self._renew_once())
        else:
            self._node.cancel(h, gid)

    async def listen(self) -> None:
        """Take cancels published to this node, reconnecting when the
        connection is lost (a restart, ``CLIENT KILL``); after each
        (re)subscription, cancels asked meanwhile come from the keys."""
        listener = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=TIMEOUT, socket_keepalive=True
        )
        delay = LISTEN_RETRY
        try:
            while True:
                try:
                    async with listener.pubsub() as pubsub:
                        await pubsub.subscribe(_channel(self.node))
                        delay = LISTEN_RETRY
                        self._cancelled(None, None)  # check the keys
                        async for message in pubsub.listen():
                            if message.get("type") != "message":
                                continue
                            h, _, gid = message["data"].decode().partition(" ")
                            self._cancelled(h, gid)
                except (RedisError, OSError, TimeoutError) as exc:
                    if delay == LISTEN_RETRY:  # once per loss, not per attempt
                        log.warning("cancel listener reconnecting", error=repr(exc))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, PROBE)
        finally:
            await listener.aclose()


def _record(raw: Mapping[bytes, bytes], conversations: Mapping[bytes, bytes]) -> Record | None:
    if not raw:
        return None
    fields = {k.decode(): v for k, v in raw.items()}
    record = Record(
        key_hash=fields.get("key", b"").decode(),
        session_id=fields.get("id", b"").decode(),
        deadline=float(fields.get("deadline", b"0") or 0),
        conversations={
            name.decode(): _decode_json.decode(value) for name, value in conversations.items()
        },
    )
    for name, value in fields.items():
        if name.startswith("g:"):
            record.owners[name[2:]] = value.decode()
        elif name.startswith("r:"):
            record.requests[name[2:]] = _decode_request.decode(value)
        elif name.startswith("lost:"):
            with contextlib.suppress(ValueError):
                record.lost[name[5:]] = Cause(value.decode())
    return record


def _generation_ids(items: Iterable[object]) -> list[str]:
    return list({gid: None for item in items if (gid := getattr(item, "id", None))})


def _frames_after(entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]], after_seq: int) -> Replay:
    """The stored frames after ``after_seq`` (``unknown``: no entry at all).
    The caller checks that they follow on (``resume.contiguous``): the
    oldest may have been trimmed."""
    frames: list[GenerationFrame] = []
    for _, fields in entries:
        frames.extend(f for f in _decode_frames.decode(fields[b"f"]) if seq_of(f) > after_seq)
    return frames if entries else "unknown"


def orphan_error(gid: str, seq: int) -> Error:
    """The terminal frame of a generation whose node stopped mid-answer."""
    return error_frame(
        gid,
        ErrorCode.UPSTREAM_ERROR,
        "the node streaming this generation stopped; retry it",
        seq=seq,
    )


def _safe(url: str) -> str:
    """The URL without a password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
