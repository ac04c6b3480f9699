"""One WebSocket connection: the link between a client and its session.

The link's task (the connection handler) runs a reader, which hands client
messages to the session, and the writer, which alone writes the socket:
frames are queued in the link's outbox and written in order, each write with
a deadline (``send_timeout``, kept by the server's watchdog). A session
outlives its links when resume is on: a dropped connection detaches it, and
a ``resume`` on a new connection attaches that link instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from tokenwire.protocol import BadMessage, Codec, ErrorCode, Resume, ServerFrame, error_frame
from tokenwire.protocol.surface import Surface

from ..errors import CLOSE_REASONS, CloseCode
from . import core
from .builder import BUILDER
from .core import ConnectionState

if TYPE_CHECKING:
    from tokenwire.protocol import Resume

    from .generation import Generation
    from .session import Session, SessionContext

    class LinkContext(SessionContext, Protocol):
        """What a WebSocket link needs of its server."""

        async def resume(self, link: Link, message: Resume) -> None: ...


log = structlog.get_logger("tokenwire.session")

OPEN: Final = State.OPEN
CLOSE_TIMEOUT: Final = 2.0
"""Seconds the closing handshake may take before the TCP connection is aborted."""
LARGE_MESSAGE: Final = 64 * 1024
LARGE_PAUSE: Final = 0.5
"""Most seconds a session waits after a large message before its next one."""
MERGE_BACKLOG: Final = 64
"""Frames queued for a socket past which it counts as behind, so text merges."""


def written_as_is(data: bytes) -> bytes:
    """The encoder of a link whose queue holds ready messages (Responses
    events, a piped session's frames)."""
    return data


def resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class LinkBase:
    """What every link kind shares (a WebSocket ``Link``, a chat completion's
    ``HttpLink``): how a refusal is counted, and the text generations hold
    while their client reads slower than they write (``Generation._relay``),
    which goes out merged when the writer catches up. The link provides
    ``context``, ``session``, ``surface``, ``send`` and ``_wake_writer``."""

    context: SessionContext
    session: Session | None
    surface: Surface
    _holding: set[Generation] | None = None
    _caught_up: asyncio.Future[None] | None = None

    def _wake_writer(self) -> None:
        raise NotImplementedError

    def send(self, frames: Iterable[ServerFrame]) -> None:
        raise NotImplementedError

    def refuse(self, frame: ServerFrame) -> None:
        """Send an ``error`` frame for a message not taken (or a generate refused)."""
        code = getattr(frame, "code", None)
        if code is not None:
            self.context.metrics.errors.labels(code).inc()
            if getattr(frame, "id", None) is not None:  # a generation refused
                self.context.metrics.requests.labels(self.surface, code).inc()
        self.send([frame])

    def release_held(self) -> None:
        """Held text goes to its generation's session (and so, when
        attached, to this outbox)."""
        holding, self._holding = self._holding, None
        if holding:
            for generation in holding:
                generation.session.send(generation.assembler.flush())
        resolve(self._caught_up)
        self._caught_up = None

    def hold(self, generation: Generation) -> None:
        """``generation`` holds text to merge; it goes out when the socket catches up."""
        if self._holding is None:
            self._holding = set()
        self._holding.add(generation)
        # An idle writer sends it at once (and waits for room while the text
        # after it merges): held text never waits for a frame to follow it.
        self._wake_writer()

    def unhold(self, generation: Generation) -> None:
        if self._holding:
            self._holding.discard(generation)

    async def caught_up(self) -> None:
        """Wait until the held text has gone out (see ``hold``)."""
        if self._holding:
            if self._caught_up is None:
                self._caught_up = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._caught_up)


class Link(LinkBase):
    """A WebSocket connection attached to a session: its reader, writer and outbox."""

    surface = Surface.WS

    def __init__(self, context: LinkContext, connection: ServerConnection, codec: Codec):
        self.context: LinkContext = context
        self.session: Session | None = None
        self.state = ConnectionState.OPEN
        self._ws = connection
        self._codec = codec
        self._encode: Callable[[Any], bytes] = codec.encode
        """Makes a queued item a message (the OpenAI surfaces queue ready bytes)."""
        self._outbox: deque[Any] = deque()
        self._max_queued = context.settings.max_queued_frames
        # Waiters are futures made when someone waits, not Events: an idle
        # session is most sessions, and an Event costs ≈0.8 KB.
        self._send_started = 0.0
        self._written = 0  # bytes handed to the transport
        self._delivered = 0  # of those, bytes the transport had passed on at the last check
        self._stuck_since = 0.0
        self._task: asyncio.Task[None] | None = None
        self._writer_idle: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._first = True
        self.key: bytes | None = None
        """The API key the handshake presented (None: none, or no keys)."""

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def connection(self) -> ServerConnection:
        return self._ws

    @property
    def encoding(self) -> str:
        return self._codec.encoding.value

    def _move(self, to: ConnectionState) -> None:
        """The connection's state moves (``core.advance_connection`` refuses an illegal move)."""
        self.state = core.advance_connection(self.state, to)

    # -- the link's task ------------------------------------------------------

    async def run(self, session: Session) -> None:
        """Serve the connection until it closes; the caller's task is the link's task."""
        self._task = asyncio.current_task()
        session.attach(self, announce=True)
        try:
            async with asyncio.TaskGroup() as task_group:
                reader = task_group.create_task(self._read_loop())
                try:
                    await self._write_loop()
                finally:
                    reader.cancel()
            await self._leave()
            await self._close()
        finally:
            await self._leave()
            self._move(ConnectionState.CLOSED)
            resolve(self._closed)
            log.info("connection closed", code=self._ws.close_code)

    async def _leave(self) -> None:
        """Detach from the session (once), before the closing handshake."""
        self.release_held()
        if (session := self.session) is not None:
            self.session = None
            # A reader closed for taking nothing (4008) is not a dropped
            # connection: its session ends, resume or not.
            await session.detach(self, end=self.state is ConnectionState.ABORTING)

    async def _read_loop(self) -> None:
        clock = time.perf_counter
        try:
            async for data in self._ws:
                if len(data) > LARGE_MESSAGE:
                    # Decoding it holds the loop a while: not beside a long
                    # prompt's request being built (builder.py), which
                    # would leave it half the GIL and take twice as long.
                    await BUILDER.idle(LARGE_PAUSE)
                started = clock()
                try:
                    await self._handle(data)
                except Exception:  # a bug must not take the session down
                    log.exception("message handling failed")
                    self.refuse(error_frame(None, ErrorCode.INTERNAL, "internal error"))
                if len(data) > LARGE_MESSAGE:
                    # Decoding and checking it held the loop a while (≈50 ms
                    # for a MB of 55,000 messages): the others get as long
                    # before this session's next message, which websockets
                    # may already hold. A session that sends large messages
                    # has half the loop at most. (One turn was not enough:
                    # another session's token needs several, from its
                    # upstream's socket to its client's.)
                    await asyncio.sleep(min(clock() - started, LARGE_PAUSE))
        except ConnectionClosed:
            pass
        # The peer closed (or the connection failed): the writer stops too.
        if self.state in (ConnectionState.OPEN, ConnectionState.CLOSING, ConnectionState.ABORTING):
            self._move(ConnectionState.GONE)
        self._wake_writer()

    async def _handle(self, data: str | bytes) -> None:
        session = self.session
        if session is None:
            # A resume on another connection took the session (this one is
            # being closed with 4009): what the client still sent here is
            # not taken; a generate it lists as unknown it sends again.
            return
        first, self._first = self._first, False
        try:
            message = self._codec.decode_client(data)
        except BadMessage as exc:
            generation_id = exc.generation_id
            if generation_id in session.core.active:  # not that generation's frame to send
                generation_id = None
            self.refuse(error_frame(generation_id, ErrorCode.BAD_MESSAGE, exc.message))
            return
        if isinstance(message, Resume):
            if not first:
                self.refuse(
                    error_frame(
                        None,
                        ErrorCode.BAD_MESSAGE,
                        "resume is only valid as the first message of a connection",
                    )
                )
                return
            await self.context.resume(self, message)
            return
        session.handle(message)

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
        encode = self._encode
        text = self._codec.encoding.is_text
        frames_sent = self.context.metrics.frames_sent
        clock = asyncio.get_running_loop().time
        protocol = ws.protocol
        transport = ws.transport
        frame = protocol.send_text if text else protocol.send_binary
        data_to_send = protocol.data_to_send
        sent = 0
        try:
            while True:
                if self.state in (ConnectionState.GONE, ConnectionState.ABORTING):
                    return
                if not outbox:
                    resolve(self._drained)
                    self._drained = None
                    if self._holding:  # caught up: the held text goes out, merged
                        self.release_held()
                        continue
                    if self.state is ConnectionState.CLOSING:  # all written: now the close
                        return
                    frames_sent.inc(sent)
                    sent = 0
                    self._writer_idle = waiter = asyncio.get_running_loop().create_future()
                    await waiter
                    self._writer_idle = None
                    encode = self._encode  # pass_through() may have changed it
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
                    self.release_held()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.state is not ConnectionState.ABORTING or task is None:
                raise
            task.uncancel()
            log.warning("slow reader", queued=len(outbox))
        except ConnectionClosed:
            pass
        finally:
            self._send_started = 0.0
            frames_sent.inc(sent)
            resolve(self._drained)

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
        if self.state not in (ConnectionState.OPEN, ConnectionState.CLOSING):
            return
        self._move(ConnectionState.ABORTING)
        self._wake_writer()
        if self._send_started and self._task is not None:
            self._task.cancel()  # the writer turns it into the close (see _write_loop)

    async def _close(self) -> None:
        """The closing handshake asked for (4008 or 1001), aborted after ``CLOSE_TIMEOUT``."""
        if self.state is ConnectionState.ABORTING:
            code = CloseCode.SLOW_READER
        elif self.state is ConnectionState.CLOSING:
            code = self._close_code
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
        resolve(self._writer_idle)

    @property
    def behind(self) -> bool:
        """Whether the socket is behind: the peer is not reading as fast as we
        write (the transport is over its high-water mark), or frames are piling
        up faster than the link's task writes them."""
        return self._ws.paused or len(self._outbox) >= MERGE_BACKLOG

    def send(self, frames: Iterable[ServerFrame]) -> None:
        """Queue frames for the link's task to write, in order."""
        self._queue(frames)

    async def pass_through(self) -> None:
        """From now on ``forward`` queues messages made elsewhere (a piped
        session's, ``workers.pipe``), written as they are. (The writer takes
        the change when it next waits: once what is queued is written.)"""
        await self.drained()
        self._encode = written_as_is

    def forward(self, data: bytes) -> None:
        """Queue a message another worker made (see ``pass_through``)."""
        self._queue((data,))

    async def drained(self) -> None:
        """Wait until everything queued has been written (or the link is done)."""
        if not self._outbox or self.state not in (ConnectionState.OPEN, ConnectionState.CLOSING):
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drained)

    def _queue(self, items: Iterable[Any]) -> None:
        """Queue what ``_encode`` makes messages of (frames, or ready bytes)."""
        outbox = self._outbox
        outbox.extend(items)
        self._wake_writer()
        if len(outbox) > self._max_queued:
            # Text merges while the socket is behind, so only a reader that
            # has stopped (or nearly) lets this many frames pile up.
            log.warning("too many queued frames", max_queued_frames=self._max_queued)
            self._stall()

    _close_code = CloseCode.GOING_AWAY

    def request_close(self, code: CloseCode) -> None:
        """Write what is queued, then close with ``code`` (``close`` without the wait)."""
        if self.state is ConnectionState.OPEN:
            self._close_code = code
            self._move(ConnectionState.CLOSING)
        self._wake_writer()

    async def close(self, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """Write what is queued, close with ``code``, and wait until the link is closed."""
        self.request_close(code)
        if self.state is not ConnectionState.CLOSED:
            if self._closed is None:
                self._closed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._closed)
