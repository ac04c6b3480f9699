"""A fast upstream does not starve the event loop (docs/traps.md, the first trap).

The upstream is the fake in a process of its own (in-process, its own bursts
would stall the loop and hide the server's), streaming unpaced; the server,
a client and a 10 ms timer share this process's loop. The timer must keep
firing on time while 20,000 tokens are relayed on the native path.

(LiteLLM's path gives the loop a turn per chunk too, but LiteLLM itself
stalls it now and then: 16–240 ms here while a warm 3,000-chunk stream ran,
460 ms during the process's first call. No bound worth a test holds there.)
"""

from __future__ import annotations

import asyncio

import msgspec
from conftest import TIMEOUT, ServerHandle, model_list, say

from tokenwire.server.config import ServerSettings, parse
from tokenwire.server.engines.upstream import Upstream

TICK = 0.01
MAX_LATE = 0.1
"""How late a 10 ms timer may fire. Without a turn per read the loop stalls
for the whole stream (≈0.7 s measured through LiteLLM)."""


async def _late_ticks(stop: asyncio.Event) -> float:
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        due = loop.time() + TICK
        await asyncio.sleep(TICK)
        worst = max(worst, loop.time() - due)
    return worst


async def test_a_fast_stream_leaves_the_loop_its_turns(outside_fake, connect):
    from tokenwire.server.app import TokenwireServer

    upstream = Upstream(parse({"model_list": model_list(outside_fake)}), repeated_chunk_limit=100)
    assert "fake" in upstream.native_models
    tokens = 20_000
    server = TokenwireServer(msgspec.convert({}, ServerSettings), upstream)
    async with (
        server.listen("127.0.0.1", 0) as (host, port),
        connect(ServerHandle(server, host, port)) as client,
    ):
        stop = asyncio.Event()
        ticks = asyncio.create_task(_late_ticks(stop))
        await client.generate("fast", messages=say(tokens=tokens))
        result = await client.result("fast", timeout=6 * TIMEOUT)
        stop.set()
        worst = await ticks
    assert result.reason == "stop" and result.usage is not None
    assert result.usage.completion_tokens == tokens
    assert worst < MAX_LATE, f"a 10 ms timer fired {worst * 1000:.0f} ms late"
