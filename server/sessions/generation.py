"""One generation: the relay from its upstream stream to its session's outbox.

The generation's task opens the provider's stream (``Upstream.stream``),
feeds each batch of deltas to its ``FrameAssembler`` and hands the frames to
its session, whose task alone writes the socket. Whatever ends it — the
provider finishing or failing, a timeout, a ``cancel`` or ``reset``, the
drain, the connection going away — its last frames come from ``_outcome``,
and it reaches the core's ENDED state exactly once (``Session.generation_ended``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, Final, Protocol

import structlog

from tokenwire.protocol import (
    Error,
    ErrorCode,
    Finish,
    FrameAssembler,
    GenerationFrame,
    RepeatedOutput,
    ServerFrame,
    Usage,
    assistant_message,
)

from ..config import ServerSettings
from ..engines.failures import UpstreamFailure, classify
from ..engines.upstream import Upstream
from ..loop_lag import LoopLag, Silence
from ..metrics import Metrics
from .core import Entry, GenerationState, SessionCore, StopReason


class GenerationContext(Protocol):
    """What a generation needs of its server."""

    @property
    def settings(self) -> ServerSettings: ...

    @property
    def upstream(self) -> Upstream: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def loop_lag(self) -> LoopLag: ...


class Owner(Protocol):
    """What a generation needs of its session (``session.Session`` is one)."""

    @property
    def context(self) -> GenerationContext: ...

    @property
    def core(self) -> SessionCore: ...

    @property
    def surface(self) -> str: ...

    @property
    def behind(self) -> bool:
        """Whether the link's client reads slower than frames come."""
        ...

    def send(self, frames: Iterable[ServerFrame]) -> None: ...

    def hold(self, generation: Generation) -> None: ...

    async def caught_up(self) -> None: ...

    def generation_ended(self, generation: Generation, terminal: Finish | Error | None) -> None: ...


log = structlog.get_logger("tokenwire.session")

HOLD_LIMIT: Final = 256 * 1024
"""Characters of merged text a generation holds before it stops reading its upstream."""


class Generation:
    """One generation: the relay from its upstream stream to its session's outbox."""

    def __init__(self, session: Owner, entry: Entry) -> None:
        self.session = session
        self.context = session.context
        self.entry = entry
        self.request = request = entry.request
        self.id = request.id
        history = entry.history
        self.messages = [*(history.messages if history else ()), *request.messages]
        self._prompt_tokens: int | None = None
        self.assembler = FrameAssembler(
            request.id, repeated_chunk_limit=self.context.settings.repeated_chunk_limit
        )
        self.task: asyncio.Task[None] | None = None
        self.outcome = ""
        self.chunks = 0
        self.time_to_first_token: float | None = None
        self._started_at: float | None = None

    def interrupt(self) -> None:
        """The core moved it to STOPPING: interrupt its relay (a task not yet
        running sees the stop when it starts; cancelled before its first step,
        it would never run its coroutine, so never send its terminal frame)."""
        running = self._started_at is not None
        if running and self.task is not None and self.entry.state is GenerationState.STOPPING:
            self.task.cancel()

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(gen=self.id)
        # perf_counter, not loop.time(): uvloop's clock has 1 ms steps.
        started = self._started_at = time.perf_counter()
        self.session.core.started(self.entry)
        try:
            try:
                frames = await self._outcome(started)
            except Exception:  # a bug in tokenwire: the session must live on
                log.exception("generation failed")
                frames = self.assembler.fail(ErrorCode.INTERNAL, "internal error")
            self._end(frames)
        finally:
            if self.entry.state is not GenerationState.ENDED:  # the session's teardown
                self.session.generation_ended(self, None)
            metrics = self.context.metrics
            metrics.generations.labels(self.outcome or "disconnected").inc()
            metrics.requests.labels(self.session.surface, self.outcome or "disconnected").inc()
            log.info(
                "generation",
                surface=self.session.surface,
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
        try:
            if self.entry.stop_reason is None:
                await self._relay(started)
                return assembler.finish(usage=assembler.usage or self._estimated_usage())
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.entry.stop_reason is None or task is None:
                raise  # the session is going away: nothing to say, nobody to say it to
            task.uncancel()
        except RepeatedOutput as exc:
            return assembler.fail(ErrorCode.REPEATED_OUTPUT, str(exc))
        except Exception as exc:
            if self.entry.stop_reason is not None:
                # A stop was asked, and closing the upstream's stream raised in
                # place of the cancel (LiteLLM 1.110's stream bridge, about once
                # in several thousand cancels under the soak): the client asked
                # to stop, and stopped it is.
                log.info("upstream close failed after a stop", error=type(exc).__name__)
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    task.uncancel()
                return self._stopped()
            failure = classify(exc)
            if failure.code is ErrorCode.INTERNAL:
                log.exception("generation failed")
            else:
                upstream = self.context.upstream
                log.warning(
                    "upstream failed",
                    code=failure.code.value,
                    error=type(exc).__name__,
                    model=self.request.model,
                    **upstream.describe(self.request.model),
                    cause=upstream.cause(exc),
                )
            return assembler.fail(
                failure.code, failure.message, retry_after_ms=failure.retry_after_ms
            )
        return self._stopped()

    def _stopped(self) -> list[GenerationFrame]:
        """The last frames of a generation stopped by a cancel, a reset or the drain."""
        if self.entry.stop_reason is StopReason.SHUTDOWN:
            return self.assembler.fail(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        return self.assembler.finish("cancelled", usage=self._estimated_usage())

    async def _relay(self, started: float) -> None:
        session = self.session
        context = self.context
        settings = context.settings
        request = self.request
        loop = asyncio.get_running_loop()
        feed = self.assembler.feed
        send = session.send
        # The provider's silence, not the loop's: time the loop ran late is
        # given back before the deadline fires (loop_lag.Silence).
        deadline = Silence(settings.first_token_timeout, context.loop_lag)
        try:
            async with (
                deadline,
                context.upstream.stream(
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
                            context.metrics.time_to_first_token.observe(self.time_to_first_token)
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
        upstream = self.context.upstream
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
        assert isinstance(terminal, Finish | Error)
        self.session.send(frames)
        self.session.generation_ended(self, terminal)
        metrics = self.context.metrics
        metrics.tokens_sent.inc(self.chunks)
        if isinstance(terminal, Error):
            self.outcome = terminal.code
            metrics.errors.labels(terminal.code).inc()
        else:
            self.outcome = terminal.reason

    def assistant_message(self) -> dict[str, Any]:
        """The answer as a chat message, for the conversation's history."""
        return assistant_message(self.assembler.content, self.assembler.tool_calls)
