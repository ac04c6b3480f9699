"""Keep-alive pings for every WebSocket of a server, from one task.

websockets runs a keep-alive task per connection: a task, a sleep timer
and a cancel at close for every connection, a task's memory for each idle
session (≈1.9 KB: 20.6 → 18.7 KB a session without it), and each ping a
wake-up of its own task (81 µs of server CPU a ping and its pong, against
43 µs from one task: ``bench/handshake.py``). tokenwire passes
``ping_interval=None`` to websockets and runs this
instead: every connection is pinged once per ``ping_interval``, in the
order it opened, a few at a time each ``TICK``; a ping whose pong has not
come ``ping_timeout`` later closes its connection with 1011 (``keepalive
ping timeout``), as websockets' own keep-alive does.

Both queues stay in time order by construction (one interval, one timeout
for all), so a tick looks only at their heads. They hold weak references:
a connection that closed is dropped when its turn comes, and is not kept
alive until then.
"""

from __future__ import annotations

import asyncio
import random
import struct
import weakref
from collections import deque
from typing import Final

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import OPEN

log = structlog.get_logger("tokenwire.server")

TICK: Final = 0.25
"""Seconds between two looks at the queues (at most; a quarter of
``ping_interval`` when that is shorter)."""
TURN: Final = 256
"""Pings sent before the task gives the loop a turn (100,000 sessions at a
60 s interval are ≈1,700 pings a second)."""


class KeepAlive:
    """One server's keep-alive pings (``add`` each connection; ``run`` the task)."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._due: deque[tuple[float, weakref.ref[ServerConnection]]] = deque()
        """When each connection's next ping is due, soonest first."""
        self._waiting: deque[tuple[float, weakref.ref[ServerConnection], asyncio.Future[float]]] = (
            deque()
        )
        """Pings sent, by when their pong is due, soonest first."""
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> list[asyncio.Task[None]]:
        """The task that pings (none when ``interval`` is 0: no pings)."""
        if not self.interval:
            return []
        return [asyncio.get_running_loop().create_task(self.run(), name="keep-alive")]

    def add(self, connection: ServerConnection) -> None:
        """Ping ``connection`` every ``interval`` from now on (while it is open)."""
        if not self.interval:
            return
        when = asyncio.get_running_loop().time() + self.interval
        self._due.append((when, weakref.ref(connection)))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = min(TICK, self.interval / 4)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            self._expire(now)
            sent = 0
            due = self._due
            while due and due[0][0] <= now:
                _, ref = due.popleft()
                connection = ref()
                if connection is None or connection.protocol.state is not OPEN:
                    continue
                due.append((now + self.interval, ref))
                if not connection.paused:  # a reader that stopped: send_timeout's
                    self._ping(connection, ref, now)
                sent += 1
                if sent % TURN == 0:
                    await asyncio.sleep(0)
                    now = loop.time()

    def _ping(
        self, connection: ServerConnection, ref: weakref.ref[ServerConnection], now: float
    ) -> None:
        """A ping, made by websockets' protocol and written at once (as the
        links write their frames), its pong awaited through websockets' own
        bookkeeping (``pending_pings``: the pong resolves it)."""
        pending = connection.pending_pings
        data = struct.pack("!I", random.getrandbits(32))
        while data in pending:
            data = struct.pack("!I", random.getrandbits(32))
        pong = connection.loop.create_future()
        pending[data] = (pong, now)
        protocol = connection.protocol
        protocol.send_ping(data)
        for chunk in protocol.data_to_send():
            connection.transport.write(chunk)
        self._waiting.append((now + self.timeout, ref, pong))

    def _expire(self, now: float) -> None:
        """Close the connections whose pong is overdue."""
        waiting = self._waiting
        while waiting and waiting[0][0] <= now:
            _, ref, pong = waiting.popleft()
            connection = ref()
            if pong.done() or connection is None or connection.protocol.state is not OPEN:
                continue
            log.info("keepalive ping timeout", timeout=self.timeout)
            task = asyncio.get_running_loop().create_task(
                connection.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
