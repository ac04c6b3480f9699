"""A session: the generations and conversations a client started.

A link (``SessionLink``) serves the session; the session owns one task per
active generation, whose frames it hands to its store's ``Keeper`` (kept for
a resume, or not) and so to the link, whose task alone writes the socket.
Whatever stops a generation (its upstream, ``cancel``, ``reset``, the drain,
the connection going away), it ends in exactly one terminal frame. Without
resume a dropped connection ends the session; with it the session is
DETACHED: its generations run on for ``orphan_timeout``, and a ``resume``
within ``resume_ttl`` gets the frames the client missed, then the live ones.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, Protocol, assert_never

import structlog

from tokenwire.protocol import (
    Cancel,
    Error,
    Finish,
    Generate,
    Limits,
    Ready,
    Reset,
    ResetDone,
    ServerFrame,
)
from tokenwire.protocol.surface import Surface

from ..errors import CloseCode
from ..stores.contract import Keeper, NoKeeper, ResumeStore
from ..stores.resume import new_token, token_hash
from . import core
from .core import Entry, GenerationState, ServerView, SessionCore, SessionLife, StopReason
from .delivery import Delivery
from .generation import Generation, GenerationContext

log = structlog.get_logger("tokenwire.session")

KNOWN_GENERATIONS: Final = 4096
"""Generations a session remembers for a resume (the oldest are forgotten first)."""


class SessionLink(Protocol):
    """What a session needs of the link serving it: a WebSocket ``Link``
    (tokenwire's protocol or OpenAI's Responses events) or an ``HttpLink``
    (a chat completion)."""

    session: Session | None

    @property
    def encoding(self) -> str: ...

    @property
    def behind(self) -> bool: ...

    def send(self, frames: Iterable[ServerFrame]) -> None: ...

    def refuse(self, frame: ServerFrame) -> None: ...

    def hold(self, generation: Generation) -> None: ...

    def unhold(self, generation: Generation) -> None: ...

    async def caught_up(self) -> None: ...

    def release_held(self) -> None: ...

    async def close(self, code: CloseCode = CloseCode.GOING_AWAY) -> None: ...


class SessionContext(GenerationContext, Protocol):
    """What a session needs of its server (``TokenwireServer`` is one),
    besides what its generations need."""

    models: list[str]
    model_set: frozenset[str]
    draining: bool
    history_bytes: int
    store: ResumeStore

    def generation_started(self) -> None: ...

    def generation_ended(self) -> None: ...

    def session_ended(self, session: Session) -> None: ...

    def background(self, coroutine: Coroutine[Any, Any, None]) -> None: ...


class Session:
    """A client's generations and conversations; served by one link at a time."""

    def __init__(
        self,
        context: SessionContext,
        key_hash: str,
        token: str | None = None,
        session_id: str | None = None,
        *,
        resumable: bool = True,
        surface: Surface = Surface.WS,
    ) -> None:
        self.id = session_id or secrets.token_urlsafe(12)
        self.context = context
        self.surface = surface
        """The protocol its client speaks: ``ws`` (tokenwire's own),
        ``responses`` or ``chat_completions`` (OpenAI's)."""
        self.settings = settings = context.settings
        self.key_hash = key_hash
        """The API key this session was opened with (hashed): a resume must present it."""
        self.token = token or new_token()
        self.token_hash = token_hash(self.token)
        self.resumable = resumable and context.store.keeps
        """Whether a dropped link detaches the session (else it ends). The
        OpenAI surfaces' sessions are not: their clients know no resume."""
        self.life = SessionLife.ATTACHED
        self.link: SessionLink | None = None
        self.core = SessionCore(
            core.SessionLimits(
                max_generations=settings.max_generations,
                max_conversations=settings.max_conversations,
                max_history_bytes=settings.max_history_bytes,
                max_total_history_bytes=settings.max_total_history_bytes,
                max_loop_lag=settings.max_loop_lag,
            ),
            context.model_set,
        )
        self.generations: dict[str, Generation] = {}
        """The running side of the core's active local entries, by id."""
        self.kept: Keeper = context.store.keeper(self) if self.resumable else NoKeeper(self)
        """The store's part of the session: every frame goes through it
        (``stores.contract``), kept for a resume or not."""
        self.owners: dict[str, str] = {}
        """The node running each generation relayed from another node."""
        self._relays: dict[str, asyncio.Task[None]] = {}
        self.known: dict[str, None] = {}
        """The ids of the last ``KNOWN_GENERATIONS`` generations, oldest first:
        a resume can name them (their frames may be lost: ``gap``)."""
        self.generated = False
        """Whether a generation was ever admitted (else there is nothing to resume)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.detached_at = 0.0
        """Loop time the last link dropped (DETACHED)."""
        self.orphan_timeout = settings.orphan_timeout
        """Seconds its generations run on DETACHED (a background response's:
        ``resume_ttl``)."""
        self.ended_hook: Callable[[Finish | Error], None] | None = None
        """Told each generation's terminal frame (a background response
        keeps its final object so)."""
        self.delivery = Delivery(context.metrics, self.kept.lost)
        """The replay window: what a resume sent, what waits for it."""

    def _live(self, to: SessionLife) -> None:
        before, self.life = self.life, core.advance_life(self.life, to)
        if before is not to:  # tokenwire_sessions{state="detached"}
            if to is SessionLife.DETACHED:
                self.context.metrics.detached.inc()
            elif before is SessionLife.DETACHED:
                self.context.metrics.detached.dec()

    # -- links ------------------------------------------------------------------

    def attach(self, link: SessionLink, *, announce: bool = False) -> None:
        """``link`` serves the session from now on (a fresh one is greeted with ``ready``)."""
        previous = self.link
        if previous is not None and previous is not link:
            previous.release_held()  # its held text is kept before the move
        self._live(SessionLife.ATTACHED)
        self.link = link
        link.session = self
        if announce:
            structlog.contextvars.bind_contextvars(session=self.id)
            log.info("session open", surface=self.surface, encoding=link.encoding)
            link.send([self.ready()])
        if previous is not None and previous is not link:
            # The old connection has not noticed it is dead (or the client
            # resumed from a second one): it is closed, the session moves.
            previous.session = None
            asyncio.get_running_loop().create_task(previous.close(CloseCode.RESUMED_ELSEWHERE))

    def ready(self) -> Ready:
        settings = self.settings
        resumable = self.resumable and self.context.store.up
        return Ready(
            session=self.id,
            models=self.context.models,
            limits=Limits(
                max_generations=settings.max_generations,
                max_message_bytes=settings.max_message_bytes,
            ),
            resume_token=self.token if resumable else None,
            resume_ttl=settings.resume_ttl if resumable else None,
        )

    async def detach(self, link: SessionLink, *, end: bool = False) -> None:
        """``link`` closed. Without resume (or with ``end``) the session ends:
        its generations are cancelled and their upstream requests closed
        before this returns."""
        if self.link is not link:
            return
        self.link = None
        self.delivery.clear()
        if self.life is SessionLife.ATTACHED:
            self._live(SessionLife.DETACHED)
        self.detached_at = asyncio.get_running_loop().time()
        nothing_to_resume = not (self.generated or self.core.active or self.core.conversations)
        if end or not self.resumable or self.context.draining or nothing_to_resume:
            await self.end(StopReason.DISCONNECT)
        else:
            await self.kept.detached(time.time() + self.settings.resume_ttl)

    def discard(self) -> None:
        """Forget a session that never started anything: the new session of a
        connection whose first message resumed another one."""
        assert not self._tasks and not self.core.active
        self.link = None
        if self.life is SessionLife.ATTACHED:
            self._live(SessionLife.DETACHED)
        self._live(SessionLife.ENDED)
        self.context.session_ended(self)

    def orphaned_for(self, now: float) -> float:
        """Seconds the session has been DETACHED (0 while attached)."""
        return now - self.detached_at if self.life is SessionLife.DETACHED else 0.0

    async def end(self, reason: StopReason) -> None:
        """Stop every generation (their terminal frames are kept), then forget the session."""
        self.interrupt(self.core.stop_all(reason))
        await self.settled()
        await self.kept.flushed()
        if self.life is SessionLife.ATTACHED and self.link is not None:
            return  # a resume attached a link meanwhile
        if self.life is not SessionLife.ENDED:
            if self.life is SessionLife.ATTACHED:
                self._live(SessionLife.DETACHED)
            self._live(SessionLife.ENDED)
            self.context.history_bytes -= self.core.forget()
            self.kept.release()
            self.context.session_ended(self)

    async def settled(self) -> None:
        """Wait until every generation task has ended."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def shutdown(self) -> None:
        """End the remaining generations with ``shutting_down``, then close with 1001."""
        self.interrupt(self.core.stop_all(StopReason.SHUTDOWN))
        await self.settled()
        if self.link is not None:
            await self.link.close(CloseCode.GOING_AWAY)

    # -- frames -------------------------------------------------------------------

    def send(self, frames: Iterable[ServerFrame]) -> None:
        """Keep a generation's frames for a resume (``kept``), which passes
        them to the link (``deliver``): at once, or once stored."""
        frames = list(frames)
        if frames:
            self.kept.keep(frames)

    def conversation(self, name: str) -> list[dict[str, Any]] | None:
        """A conversation's messages as kept now (None: not kept)."""
        conversation = self.core.conversations.get(name)
        return None if conversation is None else conversation.messages

    def running(self, gid: str) -> bool:
        """Whether ``gid`` runs for the session (here, or relayed from
        another node), or frames of it wait for a replay."""
        return gid in self.generations or gid in self.owners or self.delivery.parked_for(gid)

    def knows(self, gid: str) -> bool:
        return gid in self.known

    def deliver(self, frames: list[ServerFrame]) -> None:
        """Pass kept frames on to the link (through the replay window, if open)."""
        link = self.link
        if link is None:
            return
        if self.delivery.open:
            frames = self.delivery.filter(frames)
        if frames:
            link.send(frames)

    @property
    def behind(self) -> bool:
        return self.link is not None and self.link.behind

    def hold(self, generation: Generation) -> None:
        if self.link is not None:
            self.link.hold(generation)
        else:  # nobody to merge for: the text is kept as it is
            self.send(generation.assembler.flush())

    async def caught_up(self) -> None:
        if self.link is not None:
            await self.link.caught_up()

    # -- generations ----------------------------------------------------------------

    def generation_ended(self, generation: Generation, terminal: Finish | Error | None) -> None:
        """``generation`` ended with ``terminal`` (None: by the server's teardown).
        The one way to the core's ENDED state; a second call does nothing."""
        if self.link is not None:
            self.link.unhold(generation)
        if generation.entry.state is GenerationState.ENDED:
            return
        if terminal is not None and self.ended_hook is not None:
            self.ended_hook(terminal)
        keeps_history = generation.entry.history is not None and isinstance(terminal, Finish)
        answer = generation.assistant_message() if keeps_history else None
        self.context.history_bytes += self.core.ended(generation.entry, terminal, answer)
        if self.generations.get(generation.id) is generation:
            del self.generations[generation.id]
        self.context.generation_ended()

    def interrupt(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if (generation := self.generations.get(entry.id)) is not None:
                generation.interrupt()
            elif entry.remote:
                if entry.stop_reason is StopReason.SHUTDOWN:
                    # This node goes; the generation runs on for a resume elsewhere.
                    if (relay := self._relays.get(entry.id)) is not None:
                        relay.cancel()
                    continue
                # Its node is told; the relay passes on the terminal frame it stores.
                owner = self.owners.get(entry.id, "")
                cancel = self.context.store.cancel(self.token_hash, entry.id, owner)
                self._spawn(cancel, "cancel")

    def relay(self, request: Generate, owner: str, after_seq: int) -> None:
        """Relay generation ``request``, running on node ``owner``, from Redis."""
        entry = self.core.adopt(request)
        self.owners[request.id] = owner
        self.generated = True
        self.context.generation_started()
        relay = self._spawn(self._relay(entry, after_seq), f"relay {request.id}")
        self._relays[request.id] = relay
        relay.add_done_callback(lambda _: self._relays.pop(request.id, None))

    async def _relay(self, entry: Entry, after_seq: int) -> None:
        """Pass on the frames another node stores for ``entry``, up to its
        terminal frame (``RedisStore.follow`` says how that ends when its node
        dies, or when frames are missing), then take its conversation back."""
        store = self.context.store
        terminal: Finish | Error | None = None
        try:
            async for frames in store.follow(self.token_hash, entry.id, after_seq):
                self.deliver(list(frames))
                if isinstance(frames[-1], Finish | Error):
                    terminal = frames[-1]
        finally:
            self.core.ended(entry, terminal)  # its history is the owner's: restored below
            self.context.generation_ended()
            name = entry.request.conversation
            if isinstance(terminal, Finish) and name is not None:
                record = await store.load(self.token_hash)
                if record is not None and name in record.conversations:
                    self.context.history_bytes += self.core.restore(
                        name, record.conversations[name]
                    )

    def _spawn(self, coroutine: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- client messages ------------------------------------------------------------

    def handle(self, message: Generate | Cancel | Reset) -> None:
        match message:
            case Generate():
                self._start(message)
            case Cancel(id=generation_id):
                if (entry := self.core.stop(generation_id, StopReason.CANCEL)) is not None:
                    self.interrupt([entry])
            case Reset():
                self._reset()
            case _:
                assert_never(message)

    def _start(self, request: Generate) -> None:
        context = self.context
        view = ServerView(
            draining=context.draining,
            loop_lag=context.loop_lag.lag,
            history_bytes=context.history_bytes,
        )
        admitted = self.core.admit(request, view)
        if isinstance(admitted, Error):
            self.refuse(admitted)
            return
        self.generated = True
        self.delivery.started(request.id)
        self.known.pop(request.id, None)
        self.known[request.id] = None
        if len(self.known) > KNOWN_GENERATIONS:
            forgotten = next(iter(self.known))
            del self.known[forgotten]
            self.kept.forget(forgotten)
        self.kept.started(request)
        generation = Generation(self, admitted)
        self.generations[request.id] = generation
        context.generation_started()
        generation.task = self._spawn(generation.run(), f"generation {request.id}")

    def _reset(self) -> None:
        entries, stopped, freed = self.core.reset()
        self.context.history_bytes -= freed
        self.interrupt(stopped)
        self._spawn(self.kept.forget_conversations(), "forget")
        ids = [e.id for e in entries]
        tasks = [
            task
            for e in entries
            if (g := self.generations.get(e.id)) is not None and (task := g.task) is not None
        ]
        tasks += [relay for i in ids if (relay := self._relays.get(i)) is not None]
        if not tasks:
            self.send([ResetDone(cancelled=ids)])
            return

        async def reset_done() -> None:
            await asyncio.wait(tasks)
            self.send([ResetDone(cancelled=ids)])

        self._spawn(reset_done(), "reset")

    def refuse(self, frame: Error) -> None:
        """Send an ``error`` frame for a message not taken (or a generate refused)."""
        if self.link is not None:
            self.link.refuse(frame)
