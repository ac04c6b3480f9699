"""How far behind the event loop runs, and a deadline that does not count it.

When more work arrives than the process's one core can carry (LiteLLM's
path costs ≈1 ms of CPU a chunk), every callback runs late. Two things must
then not happen: a generation whose provider streams steadily must not end
in ``upstream_timeout`` because tokenwire read its chunks late, and work
already streaming must not be slowed without end by new work piling on.

``LoopLag`` measures the loop with one task that sleeps ``TICK`` and notes
how late it wakes: ``lag`` is the recent lateness (a median over 0.4 s),
``stolen`` the lateness summed since start. ``Silence`` is ``asyncio.timeout`` that, when it
fires, first gives back the time the loop was late since it was armed: it
measures the provider's silence, not tokenwire's. The server sheds new
generations (``overloaded``, retryable) while ``lag`` is past
``server.max_loop_lag``.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import time
from types import TracebackType
from typing import Final

TICK: Final = 0.05
"""Seconds between two measurements."""
WINDOW: Final = 8
"""Ticks (0.4 s) whose median lateness is ``lag``: one stall (a large
message decoded, a provider's error mapped) does not shed work; a loop that
stays behind does."""


class LoopLag:
    """The event loop's lateness, measured by ``run()`` (a task of the server's)."""

    def __init__(self) -> None:
        self.lag = 0.0
        """Recent lateness in seconds: the median of the last ``WINDOW`` ticks'."""
        self._recent: collections.deque[float] = collections.deque([0.0] * WINDOW, WINDOW)
        self.stolen = 0.0
        """Seconds the loop has run late, summed since the measurement began."""

    async def run(self) -> None:
        clock = time.perf_counter
        while True:
            due = clock() + TICK
            await asyncio.sleep(TICK)
            late = max(0.0, clock() - due)
            self.stolen += late
            self._recent.append(late)
            self.lag = statistics.median(self._recent)


class Silence:
    """``async with Silence(delay, lag)``: like ``asyncio.timeout(delay)``,
    rescheduled with ``reschedule(when)`` (None: no deadline), but when it
    fires it first extends itself by the time the loop ran late since it was
    armed (measured by ``lag``, and by how late it fired itself). Raises
    ``TimeoutError`` on the way out once it really expired.

    A deadline moved later (every token moves the idle deadline) keeps its
    armed timer, which re-arms itself for the new time when it fires: a
    timer per token (a heap push and a cancelled handle) would cost more
    than the token's own work in the relay."""

    __slots__ = ("_armed", "_expired", "_handle", "_lag", "_loop", "_stolen_at", "_task", "_when")

    def __init__(self, delay: float, lag: LoopLag) -> None:
        self._lag = lag
        self._loop = asyncio.get_running_loop()
        self._when: float | None = self._loop.time() + delay
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._expired = False
        self._stolen_at = 0.0
        self._armed = 0.0
        """The time the armed timer (``_handle``) fires at."""

    def expired(self) -> bool:
        return self._expired

    def reschedule(self, when: float | None) -> None:
        """The deadline is now ``when`` (loop time), or none."""
        self._stolen_at = self._lag.stolen
        if when is not None and self._handle is not None and when >= self._armed:
            self._when = when  # later: the armed timer re-arms when it fires
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = when
        if when is not None and self._task is not None and not self._expired:
            self._arm(when)

    def _arm(self, when: float) -> None:
        self._armed = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        assert self._when is not None and self._task is not None
        if self._when > self._armed:  # moved later since it was armed
            self._arm(self._when)
            return
        now = self._loop.time()
        late_here = max(0.0, now - self._when)
        owed = max(self._lag.stolen - self._stolen_at, late_here)
        if owed > 0.005:  # the loop was behind: that time was not the provider's silence
            self._stolen_at = self._lag.stolen
            self._when = now + owed
            self._arm(self._when)
            return
        self._expired = True
        self._task.cancel()

    async def __aenter__(self) -> Silence:
        self._task = asyncio.current_task()
        self.reschedule(self._when)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired and exc_type is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:
                raise TimeoutError from exc
