"""Graceful drain (what SIGTERM/SIGINT start) and the slow-reader deadline."""

from __future__ import annotations

import asyncio

import websockets
from conftest import PROMPT_CLOSE_S, TIMEOUT, read_until_closed, say
from test_handshake import _http, _status


async def test_drain_lets_short_generations_finish_and_ends_the_rest(start_server, connect, fake):
    async with start_server(drain_timeout=0.5) as handle, connect(handle) as client:
        await client.generate("short", messages=say(tokens=4, interval=0.05))
        await client.generate("long", messages=say(tokens=500, interval=0.05))
        await client.first_frame("long")
        long_request = next(r for r in reversed(fake.requests) if r.scenario.tokens == 500)
        drain = asyncio.create_task(handle.server.drain())
        await asyncio.sleep(0)  # the drain has begun: nothing new is taken
        assert (await _http(handle.http + "/readyz"))[0] == 503
        assert await _status(handle.url) == 503
        await client.generate("late", messages=say(tokens=1))
        late = (await client.result("late")).error
        assert late is not None and (late.code, late.retryable) == ("shutting_down", True)

        assert (await client.result("short")).reason == "stop"
        long = await client.result("long")
        assert long.error is not None and long.error.code == "shutting_down"
        code, _ = await client.wait_closed()
        assert code == 1001
        await asyncio.wait_for(drain, TIMEOUT)
        await long_request.wait_ended(PROMPT_CLOSE_S)
        assert long_request.disconnected


async def test_drain_with_nothing_active_closes_at_once(start_server, connect):
    async with start_server(drain_timeout=30) as handle, connect(handle) as client:
        async with asyncio.timeout(2):
            await handle.server.drain()
        assert (await client.wait_closed())[0] == 1001


async def test_a_reader_that_stops_is_closed_with_4008_and_costs_nobody_else(
    start_server, connect, fake
):
    flood = {"tokens": 400, "word": "y" * 65536}  # 26 MB of answer, far past every buffer
    async with start_server(send_timeout=0.5) as handle:
        # max_queue=1: the client library stops reading the socket at once.
        stalled = await websockets.connect(handle.url, max_queue=1, open_timeout=TIMEOUT)
        await stalled.recv()  # ready
        mark = fake.mark()
        await stalled.send(
            '{"type":"generate","id":"flood","model":"fake","messages":'
            + _dumps(say(**flood))
            + "}"
        )
        record = await fake.request_after(mark, TIMEOUT)
        async with connect(handle) as other:
            await other.generate("fine", messages=say(tokens=5, interval=0.01))
            assert (await other.result("fine")).reason == "stop"
            # The server gave up on the stalled reader and closed its upstream.
            await record.wait_ended(TIMEOUT)
            assert record.disconnected
            assert record.chunks_sent < flood["tokens"]
        # Reading again now drains the buffers up to the server's close frame.
        assert await read_until_closed(stalled) == (4008, "slow reader")


def _dumps(value: object) -> str:
    import json

    return json.dumps(value)
