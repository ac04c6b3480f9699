"""One WebSocket connection is one session.

The session task (the connection handler) owns everything the connection
started: a reader task that takes client messages, and one task per active
generation, all in one ``TaskGroup``, so nothing outlives the connection. It
is also the only writer to the socket: generations put frames in the
session's outbox and the session task writes them, in order, each write with
a deadline (``send_timeout``).

A generation ends in exactly one terminal frame, whatever stops it: the
upstream finishing or failing, a ``cancel`` or ``reset``, the server
draining, or the connection going away (then the frame is not sent, but the
upstream request is closed all the same).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Iterable
from typing import Final, Protocol, assert_never

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from tokenwire.protocol import (
    BadMessage,
    Cancel,
    Codec,
    Error,
    ErrorCode,
    Finish,
    Generate,
    Limits,
    Ready,
    Reset,
    ResetDone,
    ServerFrame,
    error_frame,
)

from . import core
from .config import ServerSettings
from .core import Entry, GenerationState, ServerView, SessionCore, SessionState, StopReason
from .errors import CLOSE_REASONS, CloseCode
from .generation import Generation
from .loop_lag import LoopLag
from .metrics import Metrics
from .upstream import Upstream

log = structlog.get_logger("tokenwire.session")

OPEN: Final = State.OPEN
CLOSE_TIMEOUT: Final = 2.0
"""Seconds the closing handshake may take before the TCP connection is aborted."""
LARGE_MESSAGE: Final = 64 * 1024
MERGE_BACKLOG: Final = 64
"""Frames queued for a socket past which it counts as behind, so text merges."""


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class SessionContext(Protocol):
    """What a session needs of its server (``TokenwireServer`` is one)."""

    settings: ServerSettings
    upstream: Upstream
    metrics: Metrics
    models: list[str]
    model_set: frozenset[str]
    loop_lag: LoopLag
    draining: bool
    history_bytes: int

    def generation_started(self) -> None: ...

    def generation_ended(self) -> None: ...


class Session:
    """A WebSocket connection's state: generations, conversations, the outbox."""

    def __init__(self, context: SessionContext, connection: ServerConnection, codec: Codec):
        self.id = secrets.token_urlsafe(12)
        self.context = context
        self.settings = settings = context.settings
        self.state = SessionState.OPEN
        self.core = SessionCore(
            core.Limits(
                max_generations=settings.max_generations,
                max_conversations=settings.max_conversations,
                max_history_bytes=settings.max_history_bytes,
                max_total_history_bytes=settings.max_total_history_bytes,
                max_loop_lag=settings.max_loop_lag,
            ),
            context.model_set,
        )
        self.generations: dict[str, Generation] = {}
        """The running side of the core's active entries, by id."""
        self._ws = connection
        self._codec = codec
        self._outbox: deque[ServerFrame] = deque()
        self._max_queued = settings.max_queued_frames
        # Waiters are futures made when someone waits, not Events: an idle
        # session is most sessions, and an Event costs ≈0.8 KB.
        self._holding: set[Generation] | None = None
        self._caught_up: asyncio.Future[None] | None = None
        self._send_started = 0.0
        self._written = 0  # bytes handed to the transport
        self._delivered = 0  # of those, bytes the transport had passed on at the last check
        self._stuck_since = 0.0
        self._task: asyncio.Task[None] | None = None
        self._writer_idle: asyncio.Future[None] | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._on_closed: asyncio.Future[None] | None = None

    def _move(self, to: SessionState) -> None:
        """The session's state moves (``core.advance_session`` refuses an illegal move)."""
        self.state = core.advance_session(self.state, to)

    # -- the session task ---------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; the caller's task is the session task."""
        structlog.contextvars.bind_contextvars(session=self.id)
        self._task = asyncio.current_task()
        log.info("session open", encoding=self._codec.encoding.value)
        self.send(
            [
                Ready(
                    session=self.id,
                    models=self.context.models,
                    limits=Limits(
                        max_generations=self.settings.max_generations,
                        max_message_bytes=self.settings.max_message_bytes,
                    ),
                )
            ]
        )
        try:
            async with asyncio.TaskGroup() as task_group:
                self._task_group = task_group
                reader = task_group.create_task(self._read_loop())
                try:
                    await self._write_loop()
                finally:
                    reader.cancel()
                    self._interrupt(self.core.stop_all(StopReason.DISCONNECT))
            await self._close()
        finally:
            # A generation whose task never ran (the task group was torn down
            # before its first step) still ends, and leaves the server's count.
            for generation in list(self.generations.values()):
                self.generation_ended(generation, None)
            self.context.history_bytes -= self.core.forget()
            self._move(SessionState.CLOSED)
            _resolve(self._on_closed)
            log.info("session closed", code=self._ws.close_code)

    async def _read_loop(self) -> None:
        try:
            async for data in self._ws:
                try:
                    self._handle(data)
                except Exception:  # a bug must not take the session down
                    log.exception("message handling failed")
                    self._refuse(error_frame(None, ErrorCode.INTERNAL, "internal error"))
                if len(data) > LARGE_MESSAGE:
                    # Decoding and checking it took a while (≈40 ms a MB): let
                    # other sessions have the loop before the next one, which
                    # websockets may already hold.
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        # The peer closed (or the connection failed): the writer stops too.
        if self.state in (SessionState.OPEN, SessionState.CLOSING, SessionState.ABORTING):
            self._move(SessionState.GONE)
        self._wake_writer()

    async def _write_loop(self) -> None:
        """Write the outbox until the connection closes or a close is requested.

        While the transport has room, websockets' sans-I/O protocol makes the
        frame (``send_text``/``send_binary``, then ``data_to_send()``) and it
        is written to the transport at once: ``send()``'s locking and
        draining would add ≈20 µs a frame. Once the peer falls
        behind (the transport is over its high-water mark), frames go through
        ``send()``, which waits for room; it waits with no deadline (docs/traps.md),
        so the deadline is ours: ``_send_started`` marks a send in progress,
        and the server's watchdog (``check_send``) stops one that has lasted
        ``send_timeout``. That costs a clock read per frame, where an
        ``asyncio.timeout`` per send would cost a timer (≈6 µs). Meanwhile
        generations merge their text (``behind``, ``hold``).
        """
        ws = self._ws
        outbox = self._outbox
        encode = self._codec.encode
        text = self._codec.encoding.is_text
        frames_sent = self.context.metrics.frames_sent
        clock = asyncio.get_running_loop().time
        # While the transport has room and the connection is open, a frame is
        # made by websockets' sans-I/O protocol (framing, and compression
        # where negotiated) and written to the transport at once; otherwise
        # it goes through send(), which waits for room (the watchdog's part).
        protocol = ws.protocol
        transport = ws.transport
        frame = protocol.send_text if text else protocol.send_binary
        data_to_send = protocol.data_to_send
        sent = 0
        try:
            while True:
                if self.state in (SessionState.GONE, SessionState.ABORTING):
                    return
                if not outbox:
                    if self._holding:  # caught up: the held text goes out, merged
                        self._release_held()
                        continue
                    if self.state is SessionState.CLOSING:  # all written: now the close
                        return
                    frames_sent.inc(sent)
                    sent = 0
                    self._writer_idle = waiter = asyncio.get_running_loop().create_future()
                    await waiter
                    self._writer_idle = None
                    continue
                data = encode(outbox.popleft())
                if not ws.paused and protocol.state is OPEN:
                    frame(data)
                    for chunk in data_to_send():
                        transport.write(chunk)
                        self._written += len(chunk)
                    sent += 1
                    continue
                self._send_started = clock()
                await ws.send(data, text=text)
                self._send_started = 0.0
                self._written += len(data) + 2
                sent += 1
                if self._holding and not ws.paused and len(outbox) < MERGE_BACKLOG:
                    self._release_held()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.state is not SessionState.ABORTING or task is None:
                raise
            task.uncancel()
            log.warning("slow reader", queued=len(outbox))
        except ConnectionClosed:
            pass
        finally:
            self._send_started = 0.0
            frames_sent.inc(sent)

    def check_send(self, now: float, timeout: float) -> None:
        """The watchdog's call: close a reader that took nothing for ``timeout``.

        Either a ``send()`` has been blocked that long, or bytes already
        written have sat in the transport's buffer that long without any of
        them reaching the socket: a reader that stops after the last frame
        of an answer blocks no write, but never takes those bytes either.
        """
        if 0.0 < self._send_started < now - timeout:
            self._stall()
            return
        transport = self._ws.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        delivered = self._written - buffered
        if buffered == 0 or delivered != self._delivered:
            self._delivered = delivered
            self._stuck_since = now if buffered else 0.0
        elif self._stuck_since and now - self._stuck_since >= timeout:
            log.warning("slow reader", buffered=buffered)
            self._stall()

    def _stall(self) -> None:
        """Give up on the reader: close with 4008, interrupting a blocked send."""
        if self.state not in (SessionState.OPEN, SessionState.CLOSING):
            return
        self._move(SessionState.ABORTING)
        self._wake_writer()
        if self._send_started and self._task is not None:
            self._task.cancel()  # the writer turns it into the close (see _write_loop)

    def _release_held(self) -> None:
        for generation in self._holding or ():
            self._outbox.extend(generation.assembler.flush())
        self._holding = None
        _resolve(self._caught_up)
        self._caught_up = None

    async def _close(self) -> None:
        """The closing handshake asked for (4008 or 1001), aborted after ``CLOSE_TIMEOUT``."""
        if self.state is SessionState.ABORTING:
            code = CloseCode.SLOW_READER
        elif self.state is SessionState.CLOSING:
            code = CloseCode.GOING_AWAY
        else:  # the peer went away, or the connection closed under the writer
            return
        reason = CLOSE_REASONS[code]
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._ws.close(code, reason)
        except TimeoutError:
            self._ws.transport.abort()

    # -- called from other tasks ----------------------------------------------

    def _wake_writer(self) -> None:
        _resolve(self._writer_idle)

    @property
    def behind(self) -> bool:
        """Whether the socket is behind: the peer is not reading as fast as we
        write (the transport is over its high-water mark), or frames are piling
        up faster than the session task writes them."""
        return self._ws.paused or len(self._outbox) >= MERGE_BACKLOG

    def send(self, frames: Iterable[ServerFrame]) -> None:
        """Queue frames for the session task to write, in order."""
        outbox = self._outbox
        outbox.extend(frames)
        self._wake_writer()
        if len(outbox) > self._max_queued:
            # Text merges while the socket is behind, so only a reader that
            # has stopped (or nearly) lets this many frames pile up.
            log.warning("too many queued frames", max_queued_frames=self._max_queued)
            self._stall()

    def hold(self, generation: Generation) -> None:
        """``generation`` holds text to merge; it goes out when the socket catches up."""
        if self._holding is None:
            self._holding = set()
        self._holding.add(generation)
        # An idle writer sends it at once (and waits for room while the text
        # after it merges): held text never waits for a frame to follow it.
        self._wake_writer()

    async def caught_up(self) -> None:
        """Wait until the held text has gone out (see ``hold``)."""
        if self._holding:
            if self._caught_up is None:
                self._caught_up = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._caught_up)

    def generation_ended(self, generation: Generation, terminal: Finish | Error | None) -> None:
        """``generation`` ended with ``terminal`` (None: by the session's
        teardown). The one way to the core's ENDED state; a second call does nothing."""
        if self._holding:
            self._holding.discard(generation)
        if generation.entry.state is GenerationState.ENDED:
            return
        keeps_history = generation.entry.history is not None and isinstance(terminal, Finish)
        answer = generation.assistant_message() if keeps_history else None
        self.context.history_bytes += self.core.ended(generation.entry, terminal, answer)
        if self.generations.get(generation.id) is generation:
            del self.generations[generation.id]
        self.context.generation_ended()

    def _interrupt(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if (generation := self.generations.get(entry.id)) is not None:
                generation.interrupt()

    async def shutdown(self) -> None:
        """End the remaining generations with ``shutting_down``, then close with 1001."""
        self._interrupt(self.core.stop_all(StopReason.SHUTDOWN))
        tasks = [g.task for g in self.generations.values() if g.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        if self.state is SessionState.OPEN:
            self._move(SessionState.CLOSING)
        self._wake_writer()
        if self.state is not SessionState.CLOSED:
            if self._on_closed is None:
                self._on_closed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._on_closed)

    # -- client messages --------------------------------------------------------

    def _handle(self, data: str | bytes) -> None:
        try:
            message = self._codec.decode_client(data)
        except BadMessage as exc:
            generation_id = exc.generation_id
            if generation_id in self.core.active:  # not that generation's frame to send
                generation_id = None
            self._refuse(error_frame(generation_id, ErrorCode.BAD_MESSAGE, exc.message))
            return
        match message:
            case Generate():
                self._start(message)
            case Cancel(id=generation_id):
                if (entry := self.core.stop(generation_id, StopReason.CANCEL)) is not None:
                    self._interrupt([entry])
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
            self._refuse(admitted)
            return
        generation = Generation(self, admitted)
        self.generations[request.id] = generation
        context.generation_started()
        assert self._task_group is not None
        generation.task = self._task_group.create_task(
            generation.run(), name=f"generation {request.id}"
        )

    def _reset(self) -> None:
        entries, stopped, freed = self.core.reset()
        self.context.history_bytes -= freed
        self._interrupt(stopped)
        ids = [e.id for e in entries]
        tasks = [
            task
            for e in entries
            if (g := self.generations.get(e.id)) is not None and (task := g.task) is not None
        ]
        if not tasks:
            self.send([ResetDone(cancelled=ids)])
            return

        async def reset_done() -> None:
            await asyncio.wait(tasks)
            self.send([ResetDone(cancelled=ids)])

        assert self._task_group is not None
        self._task_group.create_task(reset_done(), name="reset")

    def _refuse(self, frame: Error) -> None:
        """Send an ``error`` frame for a message not taken (or a generate refused)."""
        self.context.metrics.errors.labels(frame.code).inc()
        self.send([frame])
