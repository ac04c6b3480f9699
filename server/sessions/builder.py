"""The one thread that builds long prompts' request bodies, and a way to stay
out of its way.

LiteLLM's request transformation copies every message (≈1.7 µs each: a
55,000-message prompt is ≈90 ms of Python). On the event loop it would stall
every session; on a thread it shares the GIL with the loop, which then runs
at about half speed while it works. So there is one such thread (several at
once, in the default executor, left the loop a fifth of the GIL), and work
that is itself long for the loop (decoding another huge message, ≈50 ms)
waits until the thread is idle rather than run beside it at half speed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


class Builder:
    """A single worker thread, and whether it is busy."""

    def __init__(self) -> None:
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._busy = 0
        self._idle: asyncio.Future[None] | None = None

    async def run(self, work: Callable[[], _T]) -> _T:
        """``work()`` on the builder thread, after what was asked before it."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="tokenwire-build"
            )
        self._busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            self._busy -= 1
            if not self._busy and self._idle is not None:
                if not self._idle.done():
                    self._idle.set_result(None)
                self._idle = None

    async def idle(self, timeout: float) -> None:
        """Wait until the thread has nothing to do, ``timeout`` seconds at most."""
        if not self._busy:
            return
        if self._idle is None:
            self._idle = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._idle)
        except TimeoutError:
            pass


BUILDER = Builder()
"""The process's builder (each ``--workers`` process has its own)."""
