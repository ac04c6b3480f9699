"""When the loop runs late: new generations are shed (``overloaded``), work
already streaming is not failed, and a deadline counts the provider's
silence, not the loop's lateness."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import say

from tokenwire.server.loop_lag import LoopLag, Silence


def _hold_the_loop(seconds: float) -> None:
    """Keep the event loop busy (this is the point: a blocking call on purpose)."""
    time.sleep(seconds)


async def _block_then_set(event: asyncio.Event, block: float) -> None:
    await asyncio.sleep(0.05)
    _hold_the_loop(block)  # the loop is busy: with another session's work, say
    await asyncio.sleep(0)  # the deadline's timer is due before the data is read
    event.set()


async def test_a_plain_timeout_fires_when_the_loop_was_late():
    event = asyncio.Event()
    blocker = asyncio.create_task(_block_then_set(event, 0.4))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await event.wait()
    await blocker


async def test_silence_gives_back_the_time_the_loop_was_late():
    lag = LoopLag()
    measuring = asyncio.create_task(lag.run())
    event = asyncio.Event()
    blocker = asyncio.create_task(_block_then_set(event, 0.4))
    async with Silence(0.2, lag):
        await event.wait()  # the provider was silent 0.05 s, not 0.45 s
    await blocker
    await asyncio.sleep(0.12)
    assert lag.stolen > 0.3  # the measurement saw it too
    # And a real silence still ends it.
    with pytest.raises(TimeoutError):
        async with Silence(0.1, lag):
            await asyncio.Event().wait()
    measuring.cancel()


async def _stay_behind(seconds: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        _hold_the_loop(0.04)
        await asyncio.sleep(0)


async def test_one_stall_sheds_nothing(start_server, connect):
    async with start_server(max_loop_lag=0.05) as handle, connect(handle) as client:
        _hold_the_loop(0.2)  # a decode of a large message, an error mapped: once
        await asyncio.sleep(0.06)
        await client.generate("new", messages=say(tokens=2))
        assert (await client.result("new")).reason == "stop"


async def test_new_generations_are_shed_while_the_loop_is_late(start_server, connect):
    async with start_server(max_loop_lag=0.02) as handle, connect(handle) as client:
        await client.generate("streaming", messages=say(tokens=100, interval=0.01))
        await client.first_frame("streaming")
        behind = asyncio.create_task(_stay_behind(1.0))  # the loop stays behind...
        await asyncio.sleep(0.5)  # ... long enough for the average to see it
        await client.generate("new", messages=say(tokens=2))
        error = (await client.result("new")).error
        await behind
        assert error is not None
        assert (error.code, error.retryable, error.seq, error.retry_after_ms) == (
            "overloaded",
            True,
            0,
            1000,
        )
        # What was streaming goes on; once the loop catches up, work is taken.
        assert (await client.result("streaming")).reason == "stop"
        await asyncio.sleep(0.6)
        await client.generate("later", messages=say(tokens=2))
        assert (await client.result("later")).reason == "stop"
