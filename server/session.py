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
import enum
import secrets
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, assert_never

import msgspec
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
    FrameAssembler,
    Generate,
    GenerationFrame,
    Limits,
    Ready,
    RepeatedOutput,
    Reset,
    ResetDone,
    ServerFrame,
    Usage,
)
from tokenwire.protocol.validation import quote

from .failures import UpstreamFailure, classify
from .loop_lag import Silence

if TYPE_CHECKING:
    from .app import TokenwireServer

log = structlog.get_logger("tokenwire.session")
_encode_json: Final = msgspec.json.Encoder().encode

OPEN: Final = State.OPEN
CLOSE_TIMEOUT: Final = 2.0
"""Seconds the closing handshake may take before the TCP connection is aborted."""
SLOW_READER_CLOSE: Final = (4008, "slow reader")
SHUTDOWN_CLOSE: Final = (1001, "server shutting down")
HOLD_LIMIT: Final = 256 * 1024
"""Characters of merged text a generation holds before it stops reading its upstream."""
LARGE_MESSAGE: Final = 64 * 1024
OVERLOAD_RETRY_MS: Final = 1000
"""When an ``overloaded`` client may try again."""
MERGE_BACKLOG: Final = 64
"""Frames queued for a socket past which it counts as behind, so text merges."""


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Conversation:
    """One conversation's history and its size in bytes (its messages as JSON)."""

    __slots__ = ("messages", "size")

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.size = 0


def json_size(value: Any) -> int:
    return len(_encode_json(value))


class StopReason(enum.Enum):
    CANCEL = "cancelled"
    SHUTDOWN = "shutting_down"
    DISCONNECT = "disconnected"


class Generation:
    """One generation: the relay from its upstream stream to its session's outbox."""

    def __init__(self, session: Session, request: Generate, history: Conversation | None):
        self.session = session
        self.request = request
        self.id = request.id
        self.conversation = request.conversation
        self.history = history
        self.messages = [*(history.messages if history else ()), *request.messages]
        self._prompt_tokens: int | None = None
        self.assembler = FrameAssembler(
            request.id, repeated_chunk_limit=session.settings.repeated_chunk_limit
        )
        self.task: asyncio.Task[None] | None = None
        self.ended = False
        self.outcome = ""
        self.chunks = 0
        self.time_to_first_token: float | None = None
        self._stop: StopReason | None = None
        self._running = False

    def stop(self, reason: StopReason) -> None:
        """Stop the generation; its terminal frame follows promptly. Idempotent."""
        if self._stop is not None or self.ended or self.task is None:
            return
        self._stop = reason
        # A task cancelled before its first step never runs its coroutine (no
        # terminal frame): one not yet running sees `_stop` when it starts.
        if self._running:
            self.task.cancel()

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(gen=self.id)
        # perf_counter, not loop.time(): uvloop's clock has 1 ms steps.
        started = time.perf_counter()
        try:
            try:
                frames = await self._outcome(started)
            except Exception:  # a bug in tokenwire: the session must live on
                log.exception("generation failed")
                frames = self.assembler.fail(ErrorCode.INTERNAL, "internal error")
            self._end(frames)
        finally:
            if not self.ended:  # cancelled by the session's teardown
                self.session.generation_ended(self)
            metrics = self.session.server.metrics
            metrics.generations.labels(self.outcome or "disconnected").inc()
            log.info(
                "generation",
                model=self.request.model,
                outcome=self.outcome or "disconnected",
                chunks=self.chunks,
                frames=self.assembler.seq,
                ttft_ms=None
                if self.time_to_first_token is None
                else round(self.time_to_first_token * 1000, 1),
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )

    async def _outcome(self, started: float) -> list[GenerationFrame]:
        """The generation's last frames, whatever ended it."""
        assembler = self.assembler
        self._running = True
        try:
            if self._stop is None:
                await self._relay(started)
                return assembler.finish(usage=assembler.usage or self._estimated_usage())
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stop is None or task is None:
                raise  # the session is going away: nothing to say, nobody to say it to
            task.uncancel()
        except RepeatedOutput as exc:
            return assembler.fail(ErrorCode.REPEATED_OUTPUT, str(exc))
        except Exception as exc:
            failure = classify(exc)
            if failure.code is ErrorCode.INTERNAL:
                log.exception("generation failed")
            else:
                log.warning("upstream failed", code=failure.code.value, error=type(exc).__name__)
            return assembler.fail(
                failure.code, failure.message, retry_after_ms=failure.retry_after_ms
            )
        return self._stopped()

    def _stopped(self) -> list[GenerationFrame]:
        """The last frames of a generation stopped by a cancel, a reset or the drain."""
        if self._stop is StopReason.SHUTDOWN:
            return self.assembler.fail(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        return self.assembler.finish("cancelled", usage=self._estimated_usage())

    async def _relay(self, started: float) -> None:
        session = self.session
        settings = session.settings
        request = self.request
        loop = asyncio.get_running_loop()
        feed = self.assembler.feed
        send = session.send
        # The provider's silence, not the loop's: time the loop ran late is
        # given back before the deadline fires (loop_lag.Silence).
        deadline = Silence(settings.first_token_timeout, session.server.loop_lag)
        try:
            async with (
                deadline,
                session.server.upstream.stream(
                    request.model,
                    self.messages,
                    tools=request.tools,
                    tool_choice=request.tool_choice,
                    params=request.params,
                ) as batches,
            ):
                async for batch in batches:
                    output = 0
                    for delta in batch:
                        # While the socket is behind, text merges (invariant 8).
                        if frames := feed(delta, hold=session.behind):
                            send(frames)
                        if delta.has_output:
                            output += 1
                    if output:
                        if self.assembler.holding:
                            session.hold(self)
                            if self.assembler.held_size > HOLD_LIMIT:
                                # Merged text is bounded too: stop reading the
                                # upstream (TCP pushes back on the provider)
                                # until the socket catches up, or send_timeout
                                # ends the session. The wait is tokenwire's,
                                # not the provider's silence: no idle deadline.
                                deadline.reschedule(None)
                                await session.caught_up()
                        now = loop.time()
                        if self.time_to_first_token is None:
                            self.time_to_first_token = time.perf_counter() - started
                            session.server.metrics.time_to_first_token.observe(
                                self.time_to_first_token
                            )
                        deadline.reschedule(now + settings.idle_timeout)
                        self.chunks += output
                # No turn given here: each engine yields to the loop at least
                # once per network read (see Upstream.stream), so a fast
                # upstream cannot starve other sessions (docs/traps.md).
        except TimeoutError:
            if not deadline.expired():
                raise
            if self.time_to_first_token is None:
                message = f"no first token within {settings.first_token_timeout:g} s"
            else:
                message = f"no token for {settings.idle_timeout:g} s"
            raise UpstreamFailure(ErrorCode.UPSTREAM_TIMEOUT, message) from None

    def _estimated_usage(self) -> Usage:
        """Usage counted by tokenwire when the provider sent none (or on a
        cancel): the same on both engines, bounded in cost (``Upstream.estimate``)."""
        upstream = self.session.server.upstream
        model = self.request.model
        assembler = self.assembler
        if self._prompt_tokens is None:
            self._prompt_tokens = upstream.estimate_prompt(model, self.messages)
        prompt = self._prompt_tokens
        output = assembler.content + assembler.reasoning
        output += "".join(call.arguments for call in assembler.tool_calls)
        completion = upstream.estimate_text(model, output)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            estimated=True,
        )

    def _end(self, frames: list[GenerationFrame]) -> None:
        terminal = frames[-1]
        self.ended = True
        self.session.send(frames)
        self.session.generation_ended(self)
        metrics = self.session.server.metrics
        metrics.tokens_sent.inc(self.chunks)
        if isinstance(terminal, Error):
            self.outcome = terminal.code
            metrics.errors.labels(terminal.code).inc()
        elif isinstance(terminal, Finish):
            self.outcome = terminal.reason
            if self.history is not None and terminal.reason != "cancelled":
                added = [*self.request.messages, self._assistant_message()]
                self.history.messages.extend(added)
                self.session.history_grew(self.history, json_size(added))

    def _assistant_message(self) -> dict[str, Any]:
        """The answer as a chat message, for the conversation's history."""
        message: dict[str, Any] = {"role": "assistant", "content": self.assembler.content}
        if calls := self.assembler.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in calls
            ]
        return message


class Session:
    """A WebSocket connection's state: generations, conversations, the outbox."""

    def __init__(self, server: TokenwireServer, connection: ServerConnection, codec: Codec):
        self.id = secrets.token_urlsafe(12)
        self.server = server
        self.settings = server.settings
        self.generations: dict[str, Generation] = {}
        self._ws = connection
        self._codec = codec
        self._conversations: dict[str, Conversation] = {}
        self._outbox: deque[ServerFrame] = deque()
        self._max_queued = server.settings.max_queued_frames
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
        self._peer_gone = False
        self._close_request: tuple[int, str] | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._closed = False
        self._on_closed: asyncio.Future[None] | None = None

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
                    models=self.server.models,
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
                    for generation in list(self.generations.values()):
                        generation.stop(StopReason.DISCONNECT)
            await self._close()
        finally:
            # A generation whose task never ran (the task group was torn down
            # before its first step) still leaves the server's count.
            for generation in list(self.generations.values()):
                self.generation_ended(generation)
            self._forget_conversations()
            self._closed = True
            _resolve(self._on_closed)
            log.info("session closed", code=self._ws.close_code)

    async def _read_loop(self) -> None:
        try:
            async for data in self._ws:
                try:
                    self._handle(data)
                except Exception:  # a bug must not take the session down
                    log.exception("message handling failed")
                    self._reject(None, ErrorCode.INTERNAL, "internal error")
                if len(data) > LARGE_MESSAGE:
                    # Decoding and checking it took a while (≈40 ms a MB): let
                    # other sessions have the loop before the next one, which
                    # websockets may already hold.
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        # The peer closed (or the connection failed): the writer stops too.
        self._peer_gone = True
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
        frames_sent = self.server.metrics.frames_sent
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
                if self._peer_gone or self._close_request is SLOW_READER_CLOSE:
                    return
                if not outbox:
                    if self._holding:  # caught up: the held text goes out, merged
                        self._release_held()
                        continue
                    if self._close_request is not None:
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
            if self._close_request is not SLOW_READER_CLOSE or task is None:
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
        if self._close_request is SLOW_READER_CLOSE:
            return
        self._close_request = SLOW_READER_CLOSE
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
        if self._close_request is None or self._peer_gone:
            return
        code, reason = self._close_request
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

    def generation_ended(self, generation: Generation) -> None:
        if self._holding:
            self._holding.discard(generation)
        if self.generations.get(generation.id) is generation:
            del self.generations[generation.id]
            self.server.generation_ended()

    async def shutdown(self) -> None:
        """End the remaining generations with ``shutting_down``, then close with 1001."""
        active = [g for g in self.generations.values() if g.task is not None]
        for generation in active:
            generation.stop(StopReason.SHUTDOWN)
        if active:
            await asyncio.wait([g.task for g in active if g.task is not None])
        if self._close_request is None:
            self._close_request = SHUTDOWN_CLOSE
        self._wake_writer()
        if not self._closed:
            if self._on_closed is None:
                self._on_closed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._on_closed)

    # -- client messages --------------------------------------------------------

    def _handle(self, data: str | bytes) -> None:
        try:
            message = self._codec.decode_client(data)
        except BadMessage as exc:
            generation_id = exc.generation_id
            if generation_id in self.generations:
                generation_id = None
            self._reject(generation_id, ErrorCode.BAD_MESSAGE, exc.message)
            return
        match message:
            case Generate():
                self._start(message)
            case Cancel(id=generation_id):
                if (generation := self.generations.get(generation_id)) is not None:
                    generation.stop(StopReason.CANCEL)
            case Reset():
                self._reset()
            case _:
                assert_never(message)

    def _start(self, request: Generate) -> None:
        gid = request.id
        if gid in self.generations:
            self._reject(None, ErrorCode.DUPLICATE_ID, f"generation {gid!r} is already active")
            return
        if self.server.draining:
            self._reject(gid, ErrorCode.SHUTTING_DOWN, "the server is shutting down")
            return
        if request.model not in self.server.model_set:
            self._reject(
                gid,
                ErrorCode.UNKNOWN_MODEL,
                f"unknown model {quote(request.model)}; the ready frame lists the models offered",
            )
            return
        if self.server.overloaded:
            self._reject(
                gid,
                ErrorCode.OVERLOADED,
                f"the server is overloaded (its event loop runs "
                f"{self.server.loop_lag.lag * 1000:.0f} ms late); retry shortly",
                retry_after_ms=OVERLOAD_RETRY_MS,
            )
            return
        if len(self.generations) >= self.settings.max_generations:
            self._reject(
                gid,
                ErrorCode.TOO_MANY_GENERATIONS,
                f"the session already has {self.settings.max_generations} active generations",
            )
            return
        conversation = request.conversation
        if conversation is not None and any(
            g.conversation == conversation for g in self.generations.values()
        ):
            self._reject(
                gid,
                ErrorCode.CONVERSATION_BUSY,
                f"conversation {quote(conversation)} has an active generation",
            )
            return
        history = None
        if conversation is not None:
            history = self._conversation(gid, conversation, request)
            if history is None:
                return
        generation = Generation(self, request, history)
        self.generations[gid] = generation
        self.server.generation_started()
        assert self._task_group is not None
        generation.task = self._task_group.create_task(generation.run(), name=f"generation {gid}")

    def _conversation(self, gid: str, name: str, request: Generate) -> Conversation | None:
        """Conversation ``name`` for a new generation, or None after rejecting it
        with ``conversation_limit`` (the limits are checked before it starts:
        history is never cut short silently)."""
        settings = self.settings
        conversation = self._conversations.get(name)
        if conversation is None and len(self._conversations) >= settings.max_conversations:
            self._reject(
                gid,
                ErrorCode.CONVERSATION_LIMIT,
                f"the session already keeps {settings.max_conversations} conversations "
                "(server.max_conversations); reset to forget them",
            )
            return None
        size = (conversation.size if conversation else 0) + json_size(request.messages)
        if size > settings.max_history_bytes:
            self._reject(
                gid,
                ErrorCode.CONVERSATION_LIMIT,
                f"conversation {quote(name)} would hold more than "
                f"{settings.max_history_bytes} bytes (server.max_history_bytes)",
            )
            return None
        if self.server.history_bytes + size > settings.max_total_history_bytes:
            self._reject(
                gid,
                ErrorCode.CONVERSATION_LIMIT,
                "the server keeps as much conversation history as it may "
                "(server.max_total_history_bytes)",
            )
            return None
        if conversation is None:
            conversation = self._conversations[name] = Conversation()
        return conversation

    def history_grew(self, conversation: Conversation, size: int) -> None:
        """``size`` bytes were added to ``conversation`` (counted only while the
        session still keeps it: a reset forgets what a finishing generation adds)."""
        conversation.size += size
        if conversation in self._conversations.values():
            self.server.history_bytes += size

    def _forget_conversations(self) -> None:
        self.server.history_bytes -= sum(c.size for c in self._conversations.values())
        self._conversations = {}

    def _reset(self) -> None:
        active = list(self.generations.values())
        for generation in active:
            generation.stop(StopReason.CANCEL)
        # A generation still finishing keeps its own history list, which is
        # no longer reachable: nothing it appends survives the reset.
        self._forget_conversations()
        ids = [g.id for g in active]
        tasks = [g.task for g in active if g.task is not None]
        if not tasks:
            self.send([ResetDone(cancelled=ids)])
            return

        async def reset_done() -> None:
            await asyncio.wait(tasks)
            self.send([ResetDone(cancelled=ids)])

        assert self._task_group is not None
        self._task_group.create_task(reset_done(), name="reset")

    def _reject(
        self,
        generation_id: str | None,
        code: ErrorCode,
        message: str,
        *,
        retry_after_ms: int | None = None,
    ) -> None:
        self.server.metrics.errors.labels(code.value).inc()
        self.send(
            [
                Error(
                    id=generation_id,
                    seq=0 if generation_id is not None else None,
                    code=code.value,
                    message=message,
                    retryable=code.retryable,
                    retry_after_ms=retry_after_ms,
                )
            ]
        )
