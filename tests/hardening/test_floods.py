"""Floods of connections against the server in its own process: idle sessions,
half-open handshakes, churn. Memory per session, descriptors and a normal
client's handshake time are measured under each."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

import pytest
import websockets
from conftest import TIMEOUT
from parts import hostile_upstream, report, room_for_descriptors, server_config, serving

HANDSHAKE_P99 = 0.25
"""Seconds a normal client's handshake may take at the 99th percentile under a flood."""
CHURN_P99 = 0.5
"""The same while 20 clients connect and close in a loop, in this process (their own
handshakes are the ones measured, each competing with nineteen others)."""


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    room_for_descriptors()
    tmp = tmp_path_factory.mktemp("floods")
    async with (
        hostile_upstream(tmp) as (base_url, _),
        serving(tmp, server_config(base_url)) as server,
    ):
        yield server


async def _handshakes(url: str, count: int = 50) -> list[float]:
    """``count`` handshakes of a normal client, one after another (seconds each, to ``ready``)."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        times.append(time.perf_counter() - started)
    return times


def _p99(times: list[float]) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[98]


async def _settle(server, fds: int) -> int:
    """The server's descriptors once they are back near ``fds`` (or after TIMEOUT)."""
    for _ in range(int(TIMEOUT * 10)):  # polled: the count is another process's
        if server.fds() <= fds + 5:
            break
        await asyncio.sleep(0.1)
    return server.fds()


async def test_idle_sessions_cost_little_and_do_not_slow_a_handshake(server, full):
    count = 5000 if full else 2000
    quiet = _p99(await _handshakes(server.url))
    fds_before = server.fds()
    rss_before = server.rss_mb()
    connections = []
    try:
        for start in range(0, count, 200):
            batch = [websockets.connect(server.url, open_timeout=TIMEOUT) for _ in range(200)]
            opened = await asyncio.gather(*batch[: count - start])
            await asyncio.gather(*(ws.recv() for ws in opened))
            connections += opened
        await asyncio.sleep(0.5)
        per_session = (server.rss_mb() - rss_before) * 1024 / count
        flooded = _p99(await _handshakes(server.url))
    finally:
        await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
    fds_after = await _settle(server, fds_before)
    report(f"{count} idle sessions: memory", "≤ 40 KB a session", f"{per_session:.1f} KB a session")
    report(
        f"{count} idle sessions: handshake p99",
        f"≤ {HANDSHAKE_P99 * 1000:.0f} ms",
        f"{flooded * 1000:.1f} ms (alone {quiet * 1000:.1f} ms)",
    )
    report(
        f"{count} idle sessions: descriptors after",
        "back to before ± 5",
        f"{fds_before} → {fds_after}",
    )
    assert per_session < 40
    assert flooded < HANDSHAKE_P99
    assert fds_after <= fds_before + 5


async def test_half_open_handshakes_do_not_slow_a_normal_client(server, full):
    count = 1000 if full else 300
    host, port = server.http.removeprefix("http://").split(":")
    writers = []
    try:
        for _ in range(count):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # never ends
            writers.append(writer)
        flooded = _p99(await _handshakes(server.url))
    finally:
        for writer in writers:
            writer.close()
    report(
        f"{count} half-open handshakes: handshake p99",
        f"≤ {HANDSHAKE_P99 * 1000:.0f} ms",
        f"{flooded * 1000:.1f} ms",
    )
    assert flooded < HANDSHAKE_P99


async def test_connection_churn_leaks_nothing(server, full):
    cycles = 5000 if full else 1000
    fds_before = server.fds()
    times: list[float] = []

    async def churn(n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            ws = await websockets.connect(server.url, open_timeout=TIMEOUT)
            await ws.recv()
            times.append(time.perf_counter() - started)
            if len(times) % 3:
                await ws.close()
            else:  # a client that vanishes without a closing handshake
                ws.transport.abort()
                with contextlib.suppress(Exception):
                    await ws.wait_closed()

    await asyncio.gather(*(churn(cycles // 20) for _ in range(20)))
    fds_after = await _settle(server, fds_before)
    report(
        f"{cycles} connect/close cycles: handshake p99",
        f"≤ {CHURN_P99 * 1000:.0f} ms",
        f"{_p99(times) * 1000:.1f} ms",
    )
    report(
        f"{cycles} connect/close cycles: descriptors",
        "back to before ± 5",
        f"{fds_before} → {fds_after}",
    )
    assert _p99(times) < CHURN_P99
    assert fds_after <= fds_before + 5
