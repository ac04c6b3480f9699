"""``resume: redis``: sessions that any node can resume, kept in Redis.

A frame reaches the client only once stored. The frames of all of a
node's sessions are coalesced for ``COALESCE`` seconds and stored in one
pipelined round trip (``APPEND``: one stream entry per generation with frames
in the batch). When Redis cannot be reached, frames go to the client
unstored, the outage is logged and counted once, ``ready`` says resume is
off, and a probe brings it back; a resume that would need the missing frames
gets ``gap`` (replays check that seqs are contiguous). The node renews a
lease on each of its running generations and takes the cancels other nodes
ask of them (``serve``). The keys are in ``redis_keys.py``; the connection
and the reads in ``redis_link.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT, FieldT

from tokenwire.protocol import (
    Error,
    Finish,
    Generate,
    GenerationFrame,
    Resumed,
    ResumeFailure,
    ServerFrame,
)

from ..config import ServerSettings
from ..metrics import Metrics
from . import resume
from .contract import (
    ChatAnswers,
    Keeper,
    Node,
    Record,
    Replay,
    ResponsePeers,
    ResponseStore,
    StoredSession,
)
from .redis_client import FAILURES, by_slot, messages
from .redis_kept import RedisChats, RedisResponses
from .redis_keys import (
    APPEND,
    COALESCE,
    GENERATION_FRAMES,
    LISTEN_RETRY,
    MAX_ENTRIES,
    PROBE,
    TIMEOUT,
    Started,
    StreamEntries,
    channel,
    conversations_key,
    encode_frames,
    encode_json,
    entry_id,
    generation_ids,
    lease_key,
    pack_frames,
    session_key,
    stream_key,
)
from .redis_link import RedisLink, refusal_of
from .resume import SKIP_ALL, Cause, contiguous, gap_span, seq_of

log = structlog.get_logger("tokenwire.resume")


class RedisStore(RedisLink):
    """``resume: redis``: one node's share of the sessions kept in Redis."""

    name = "redis"
    keeps = True
    shared = True

    def __init__(self, url: str, settings: ServerSettings, metrics: Metrics) -> None:
        super().__init__(url, settings, metrics)
        self._node: Node | None = None
        """This node's generations (``serve``)."""
        self._pending: dict[RedisKeeper, list[ServerFrame | Started]] = {}
        """Frames (and start markers) waiting to be stored, by session, in order."""
        self._flushing: asyncio.Task[None] | None = None
        self._inflight: dict[RedisKeeper, list[ServerFrame | Started]] | None = None
        """The batch being stored now (its frames are delivered once it is)."""

    def keeper(self, session: StoredSession) -> Keeper:
        return RedisKeeper(session, self)

    def responses(self, peers: ResponsePeers | None) -> ResponseStore:
        return RedisResponses(self, int(self.settings.response_ttl))

    def chats(self) -> ChatAnswers:
        return RedisChats(self, self.settings.resume_ttl)

    # -- writing ------------------------------------------------------------------

    def submit(self, keeper: RedisKeeper, items: Sequence[ServerFrame | Started]) -> None:
        """Store ``items`` (a session's frames, in order), then deliver them."""
        self._pending.setdefault(keeper, []).extend(items)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def stored(self, keeper: RedisKeeper) -> None:
        """Wait until what ``keeper`` submitted is stored and delivered."""
        while keeper in self._pending and self._flushing is not None:
            await asyncio.shield(self._flushing)

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(COALESCE)
            while self._pending:
                batch, self._pending = self._pending, {}
                self._inflight = batch
                cause = await self._store(batch) if self.reachable else Cause.STORE_UNREACHABLE
                for keeper, items in batch.items():
                    if cause is not None:  # delivered all the same, but not kept
                        keeper.not_stored(generation_ids(items), cause)
                    keeper.session.deliver(
                        [item for item in items if not isinstance(item, Started)]
                    )
                self._inflight = None
        finally:
            self._flushing = None
            self._inflight = None

    def queued(self, keeper: RedisKeeper, gid: str) -> bool:
        """Whether frames of ``gid`` wait to be stored (they reach the
        session's link once they are)."""
        for batch in (self._pending, self._inflight or {}):
            for item in batch.get(keeper, ()):
                if getattr(item, "id", None) == gid and not isinstance(item, Started):
                    return True
        return False

    async def _store(
        self, batch: Mapping[RedisKeeper, Sequence[ServerFrame | Started]]
    ) -> Cause | None:
        """One round trip: every stream's entry through one script call
        (``APPEND``: a command per token would cost more CPU than the relay;
        on a cluster one call per hash slot), then the rarer writes (records,
        leases, conversations). None: all stored; else why not (the
        generations whose entries Redis refused are told so here)."""
        appends: list[list[EncodableT]] = []
        keys: list[str] = []
        owners: list[tuple[RedisKeeper, str]] = []
        rest: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        for keeper, items in batch.items():
            self._write(rest, keys, owners, appends, keeper, items)
        groups = by_slot(keys, self.cluster)
        calls = [
            (
                len(group),
                *(keys[i] for i in group),
                MAX_ENTRIES,
                self.ttl,
                *(arg for i in group for arg in appends[i]),
            )
            for group in groups
        ]
        pipe = self.client.pipeline(transaction=False)
        for call in calls:  # first: a lease goes only once the frames are in
            pipe.evalsha(self._append_sha, *call)
        for name, args, kwargs in rest:
            getattr(pipe, name)(*args, **kwargs)
        try:
            # Every stream of the node waits on this round trip: it is bounded
            # whole (a cluster's client retries a dead primary until the
            # replica takes over, seconds later), then its frames go unkept.
            async with asyncio.timeout(TIMEOUT):
                results = await pipe.execute(raise_on_error=False)
                if any(isinstance(result, NoScriptError) for result in results[: len(calls)]):
                    self._append_sha = await self.client.script_load(APPEND)  # Redis restarted
                    for i, call in enumerate(calls):  # or a replica took over
                        if isinstance(results[i], NoScriptError):
                            results[i] = await self.client.evalsha(self._append_sha, *call)
        except FAILURES as exc:
            self.trouble(exc)
            return Cause.STORE_REFUSED if self.reachable else Cause.STORE_UNREACHABLE
        refusal: BaseException | str = ""
        for group, appended in zip(groups, results, strict=False):
            if isinstance(appended, BaseException):  # the whole call refused
                refusal = appended
                refused = [owners[i] for i in group]
            else:
                refusal = appended[0].decode() if appended and appended[0] else refusal
                refused = [owners[group[int(i) - 1]] for i in appended[1:]]
            for keeper, gid in refused:
                keeper.not_stored([gid], Cause.STORE_REFUSED)
        for result in results[len(calls) :]:
            if isinstance(result, ResponseError) and not isinstance(result, NoScriptError):
                refusal = refusal or result
        if (full := refusal_of(refusal)) is not None:
            self.refused(full)
        elif refusal:
            log.warning("resume store refused a write", error=str(refusal)[:200])
        elif keys:  # frames were stored: Redis takes writes (DEL, EXPIRE pass even when full)
            self.accepted()
        return None

    def _write(
        self,
        rest: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
        keys: list[str],
        owners: list[tuple[RedisKeeper, str]],
        appends: list[list[EncodableT]],
        keeper: RedisKeeper,
        batch: Sequence[ServerFrame | Started],
    ) -> None:
        """A session's frames (and start markers): the streams' entries as
        ``APPEND``'s keys and arguments (``owners``: whose each key is), the
        rest as commands in ``rest`` (name, arguments)."""
        session = keeper.session
        h = session.token_hash
        ttl = self.ttl
        by_generation: dict[str, list[GenerationFrame]] = {}
        record: dict[FieldT, EncodableT] = {}
        for item in batch:
            if isinstance(item, Started):
                gid = item.request.id
                record[f"g:{gid}"] = self.node
                record[f"r:{gid}"] = encode_frames.encode(item.request)
                by_generation.setdefault(gid, [])
            elif isinstance(item, GENERATION_FRAMES):
                by_generation.setdefault(item.id or "", []).append(item)
        ended: list[GenerationFrame] = []
        for gid, frames in by_generation.items():
            if not frames:
                continue
            key = stream_key(h, gid)
            data = pack_frames(frames)
            last_seq = seq_of(frames[-1])
            kept = keeper.stored.get(gid)
            if kept is None:
                kept = keeper.stored[gid] = StreamEntries()
            first = not kept.entries
            # Past resume_generation_bytes the oldest entries go (MINID).
            minid = kept.add(last_seq, len(data), self.settings.resume_generation_bytes)
            if minid is not None:
                keeper.not_stored([gid], Cause.GENERATION_BYTES)
            last = isinstance(frames[-1], Finish | Error)
            keys.append(key)
            owners.append((keeper, gid))
            appends.append([entry_id(last_seq), data, minid or "", "1" if first or last else ""])
            if last:
                ended.append(frames[-1])
                del keeper.stored[gid]
            if (cause := keeper.lost(gid)) is not None and gid not in keeper.lost_told:
                # Any node's resume names why frames are missing (``Record.lost``).
                keeper.lost_told.add(gid)
                record[f"lost:{gid}"] = cause.value
        if record:
            record["key"] = session.key_hash
            record["id"] = session.id
            rest.append(("hset", (session_key(h),), {"mapping": record}))
            rest.append(("expire", (session_key(h), ttl), {}))
            for name in record:
                if isinstance(name, str) and name.startswith("g:"):
                    rest.append(("set", (lease_key(h, name[2:]), self.node), {"px": self.lease_ms}))
        for terminal in ended:
            gid = terminal.id or ""
            conversation = keeper.conversation_of(gid)
            if conversation is not None:
                name, messages = conversation
                conversation_key = conversations_key(h)
                rest.append(("hset", (conversation_key, name, encode_json.encode(messages)), {}))
                rest.append(("expire", (conversation_key, ttl), {}))
            rest.append(("delete", (lease_key(h, gid),), {}))

    async def forget_conversations(self, h: str) -> None:
        await self.quietly(lambda: self.client.delete(conversations_key(h)))

    async def set_deadline(self, session: StoredSession, deadline: float) -> None:
        """The session detached (a deadline) or attached again (0)."""
        h = session.token_hash
        fields = {"key": session.key_hash, "id": session.id, "deadline": repr(deadline)}
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(session_key(h), mapping=fields)
        pipe.expire(session_key(h), self.ttl)
        pipe.expire(conversations_key(h), self.ttl)
        await self.quietly(pipe.execute)

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
        connection is lost (a restart, ``CLIENT KILL``, a failover); after
        each (re)subscription, cancels asked meanwhile come from the keys."""
        delay = LISTEN_RETRY
        while True:
            try:
                async for data in messages(self.url, channel(self.node)):
                    if not data:  # subscribed
                        delay = LISTEN_RETRY
                        self._cancelled(None, None)  # check the keys
                        continue
                    h, _, gid = data.decode().partition(" ")
                    self._cancelled(h, gid)
            except FAILURES as exc:
                if delay == LISTEN_RETRY:  # once per loss, not per attempt
                    log.warning("cancel listener reconnecting", error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, PROBE)


class RedisKeeper:
    """A session's frames in Redis: stored before they are delivered."""

    __slots__ = ("_conversation_of", "_lost", "lost_told", "session", "store", "stored")

    def __init__(self, session: StoredSession, store: RedisStore) -> None:
        self.session = session
        self.store = store
        self.stored: dict[str, StreamEntries] = {}
        """The bytes each running generation has in Redis (``resume_generation_bytes``)."""
        self._lost: dict[str, Cause] = {}
        self.lost_told: set[str] = set()
        """The generations whose ``lost`` cause the record holds."""
        self._conversation_of: dict[str, str] = {}

    def started(self, request: Generate) -> None:
        if request.conversation is not None:
            self._conversation_of[request.id] = request.conversation
        self.store.submit(self, [Started(request)])

    def keep(self, frames: list[ServerFrame]) -> None:
        self.store.submit(self, frames)

    def waiting(self, gid: str) -> bool:
        return self.store.queued(self, gid)

    def lost(self, gid: str) -> Cause | None:
        return self._lost.get(gid)

    def not_stored(self, gids: Iterable[str], cause: Cause) -> None:
        """Frames of ``gids`` went unkept (delivered all the same): a resume
        that needs them will name ``cause`` (the first one)."""
        for gid in gids:
            self._lost.setdefault(gid, cause)

    def conversation_of(self, gid: str) -> tuple[str, list[dict[str, Any]]] | None:
        """The conversation generation ``gid`` (now ended) belonged to, as kept now."""
        name = self._conversation_of.pop(gid, None)
        if name is None or (messages := self.session.conversation(name)) is None:
            return None
        return name, messages

    def replay(
        self, gid: str, last_seq: int, record: Record | None, stored: Replay
    ) -> tuple[list[ServerFrame], int | None]:
        """The frames after ``last_seq`` as read from Redis; the live ones
        follow (from this node's generation, or relayed from the node running
        it: ``StoredSession.relay``).

        A generation of this node that ended may still have frames on their
        way: waiting to be stored (``waiting``), or stored since the read and
        held for the replay (``StoredSession.running``). They come live, as a
        running generation's do: only frames that went unkept make a ``gap``.
        """
        session, metrics = self.session, self.store.metrics
        here = session.running(gid) or self.waiting(gid)
        ended_here = session.knows(gid) and not here
        elsewhere = None if here or ended_here or record is None else record.requests.get(gid)
        live = here or elsewhere is not None
        frames: list[GenerationFrame] | ResumeFailure = stored
        if isinstance(stored, list) and not contiguous(stored, last_seq):
            frames = "gap"  # the oldest were trimmed, or never stored
        elif stored == "unknown":  # nothing stored after last_seq
            frames = [] if live else "gap" if ended_here else "unknown"
        elif isinstance(stored, list) and not live:
            # Ended without a stored terminal frame: what follows was lost
            # with Redis's data.
            ended = bool(stored) and isinstance(stored[-1], Finish | Error)
            frames = stored if ended else "gap"
        if frames == "unknown":
            return [resume.failed(metrics, gid, "unknown", Cause.NOT_STARTED)], None
        if isinstance(frames, str):
            lost = self.lost(gid) or (record.lost.get(gid) if record else None)
            span = gap_span(last_seq, stored if isinstance(stored, list) else [])
            return [
                resume.failed(metrics, gid, "gap", lost or Cause.DATA_GONE, frames=span)
            ], SKIP_ALL
        last = seq_of(frames[-1]) if frames else last_seq
        ended = bool(frames) and isinstance(frames[-1], Finish | Error)
        if not ended and elsewhere is not None and record is not None:
            session.relay(elsewhere, record.owners.get(gid, ""), last)
        return [Resumed(id=gid, after_seq=last_seq), *frames], last

    def forget(self, gid: str) -> None:
        pass  # its keys expire

    async def flushed(self) -> None:
        await self.store.stored(self)

    def release(self) -> None:
        pass  # its keys expire

    async def detached(self, deadline: float) -> None:
        await self.store.set_deadline(self.session, deadline)

    async def forget_conversations(self) -> None:
        await self.store.forget_conversations(self.session.token_hash)
