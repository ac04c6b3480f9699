"""A soak: mixed load on both engines for 2 minutes (30 with ``--full``).

Sessions stream paced answers, cancel some mid-stream, reset, vanish without
a goodbye and come back, and meet failing upstream scenarios, all at once.
Every frame goes through the contract's checks (``ResultBuilder``); a
steadily streaming generation must never end in ``upstream_timeout``; a
cancel's terminal frame must come promptly on either engine. The server's
RSS and open descriptors are sampled; the RSS slope over the second half of
the run tells a leak from warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
from collections import Counter, defaultdict

import pytest
import websockets
from conftest import TIMEOUT, WireClient, say
from parts import ENGINES, hostile_upstream, report, room_for_descriptors, server_config, serving

from tokenwire.protocol import Encoding, ResetDone
from tokenwire.server.loop_lag import LoopLag

QUICK_SECONDS = int(os.environ.get("SOAK_SECONDS", 120))
FULL_SECONDS = 1800
CANCEL_P99 = 0.1
"""Seconds from a cancel to its terminal frame, 99th percentile (the issue's bound)."""
RSS_SLOPE = {"full": 2.0, "quick": 4.0}
"""MB/min the server's RSS may still grow over the second half of the run.

Quick mode's second half is one minute, and the allocator is still settling:
one CI run measured +2.27 MB/min with nothing leaking (the 30-minute run
flattens out). At about 50 steps a second, 4 MB/min still catches a leak of
1.3 KB a step; the full run's 2 MB/min catches one of a few hundred bytes.
"""

SOAK_SERVER = {"send_timeout": 5, "orphan_timeout": 2, "resume_ttl": 20}
"""Sessions that vanish keep their generations for ``orphan_timeout`` and are
kept for ``resume_ttl`` (resume: memory, the default): short here, so that the
run reaches its steady state within its first half and the RSS slope of the
second half tells a leak from sessions still waiting to be resumed."""

FAILING = [
    {"status": 500},
    {"status": 429, "retry_after": "1"},
    {"status": 400},
    {"tokens": 20, "cut_after": 5, "interval": 0.01},
    {"tokens": 20, "malformed_after": 5, "interval": 0.01},
    {"tokens": 20, "error_after": 5, "interval": 0.01},
]
FAILED_AS = {"upstream_error", "upstream_rate_limited", "upstream_rejected"}


class Soak:
    def __init__(self, url: str, deadline: float, seed: int) -> None:
        self.url = url
        self.deadline = deadline
        self.random = random.Random(seed)
        self.outcomes: Counter[str] = Counter()
        self.violations: list[str] = []
        self.cancels: dict[str, list[float]] = defaultdict(list)
        self.generations = 0
        self.shed = 0
        self.backoff = 0.0

    async def connect(self) -> WireClient:
        ws = await websockets.connect(self.url, open_timeout=TIMEOUT)
        client = WireClient(ws, Encoding.JSON)
        await asyncio.wait_for(client.ready_event.wait(), TIMEOUT)
        return client

    async def session(self, n: int) -> None:
        client = await self.connect()
        try:
            while time.monotonic() < self.deadline:
                client = await self.step(client, f"s{n}-{self.generations}")
                self.generations += 1
                if self.backoff:
                    await asyncio.sleep(self.backoff * self.random.uniform(0.5, 1.5))
                    self.backoff = 0.0
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def step(self, client: WireClient, gid: str) -> WireClient:
        engine = self.random.choice(ENGINES)
        roll = self.random.random()
        try:
            if roll < 0.55:  # a steady answer: must finish
                pace = {"tokens": self.random.randint(10, 60), "interval": 0.01}
                await client.generate(gid, model=engine, messages=say(**pace))
                self.expect(await client.result(gid, timeout=3 * TIMEOUT), {"stop"}, engine)
            elif roll < 0.70:  # a failing provider
                scenario = self.random.choice(FAILING)
                await client.generate(gid, model=engine, messages=say(**scenario))
                self.expect(await client.result(gid, timeout=3 * TIMEOUT), FAILED_AS, engine)
            elif roll < 0.85:  # a cancel mid-stream
                await client.generate(gid, model=engine, messages=say(tokens=500, interval=0.01))
                await client.first_frame(gid, timeout=3 * TIMEOUT)
                started = time.perf_counter()
                await client.cancel(gid)
                result = await client.result(gid, timeout=3 * TIMEOUT)
                if not self.expect(result, {"cancelled", "stop"}, engine):
                    self.cancels[engine].append(time.perf_counter() - started)
            elif roll < 0.92:  # a reset with two generations running
                for suffix in ("a", "b"):
                    pace = say(tokens=500, interval=0.01)
                    await client.generate(gid + suffix, model=engine, messages=pace)
                await client.first_frame(gid + "a", timeout=3 * TIMEOUT)
                await client.send({"type": "reset"})
                done = await client.next_untagged(timeout=3 * TIMEOUT)
                assert isinstance(done, ResetDone)
                for suffix in ("a", "b"):
                    self.expect(await client.result(gid + suffix), {"cancelled", "stop"}, engine)
            else:  # a client that vanishes mid-answer, and comes back
                await client.generate(gid, model=engine, messages=say(tokens=500, interval=0.01))
                await client.first_frame(gid, timeout=3 * TIMEOUT)
                client.ws.transport.abort()
                self.outcomes["disconnected"] += 1
                return await self.connect()
            client.check()
        except Exception as exc:
            self.violations.append(f"{gid} ({engine}): {type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                client.ws.transport.abort()
            return await self.connect()
        return client

    def expect(self, result, allowed: set[str], engine: str) -> bool:
        """Check the outcome; True when the generation was shed (refused before it started)."""
        outcome = result.error.code if result.error is not None else result.reason
        self.outcomes[f"{engine} {outcome}"] += 1
        if outcome == "overloaded" and result.error.seq == 0:
            self.shed += 1  # load shed, not work failed: back off as a client should
            self.backoff = result.error.retry_after_ms / 1000
            return True
        if outcome not in allowed:
            self.violations.append(f"{result.id} ({engine}): {outcome}, expected {allowed}")
        return False


async def _warm_up(url: str) -> None:
    """One answer per engine first: LiteLLM's first call in a process loads
    its provider code (≈0.5 s of the loop), once."""
    async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
        client = WireClient(ws, Encoding.JSON)
        for engine in ENGINES:
            await client.generate(f"warm-{engine}", model=engine, messages=say(tokens=3))
            await client.result(f"warm-{engine}")
        client._reader.cancel()


def _slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) over the second half, in MB/min."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return 0.0
    return statistics.linear_regression([t for t, _ in half], [v for _, v in half]).slope * 60


@pytest.mark.timeout(QUICK_SECONDS + 120)
async def test_a_mixed_soak_on_both_engines_leaks_nothing_and_breaks_no_rule(tmp_path, full):
    room_for_descriptors()
    seconds = FULL_SECONDS if full else QUICK_SECONDS
    # Quick mode (CI) loads the 2-core machine below saturation: with LiteLLM
    # 1.108 at 20 sessions the server, the fake and this load generator
    # together saturated it and one run measured the load generator's own
    # lateness (cancel p99 119 ms, p50 18.6 ms); at 12, one run on
    # 2026-12-06 shed 95 generations as overloaded and measured LiteLLM's
    # cancel p99 at 142 ms (p50 29 ms, the load generator 1.8 s late): 8
    # keeps it below. --full keeps 50.
    sessions = int(os.environ.get("SOAK_SESSIONS", 50 if full else 8))
    async with (
        hostile_upstream(tmp_path) as (base_url, _),
        serving(tmp_path, server_config(base_url, **SOAK_SERVER)) as server,
    ):
        await _warm_up(server.url)
        started = time.monotonic()
        soak = Soak(server.url, started + seconds, seed=11)
        rss: list[tuple[float, float]] = []
        fds: list[int] = []

        async def sample() -> None:
            while True:
                rss.append((time.monotonic() - started, server.rss_mb()))
                fds.append(server.fds())
                await asyncio.sleep(5)

        sampler = asyncio.create_task(sample())
        own_lag = LoopLag()  # this process's lateness is part of every latency it measures
        measuring = asyncio.create_task(own_lag.run())
        await asyncio.gather(*(soak.session(n) for n in range(sessions)))
        sampler.cancel()
        measuring.cancel()
        await asyncio.sleep(1)
        fds.append(server.fds())
        lines = server.log_lines()
        never_awaited = sum("was never awaited" in line for line in lines)
        # What the server said of a generation that broke a rule (its traceback).
        failed = [line for line in lines if '"level":"error"' in line or "Traceback" in line]
    slope = _slope(rss)
    slope_bound = RSS_SLOPE["full" if full else "quick"]
    for engine in ENGINES:
        times = sorted(soak.cancels[engine]) or [0.0]
        p50 = times[len(times) // 2]
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        report(
            f"soak {seconds} s: cancel, {engine}",
            f"p99 ≤ {CANCEL_P99 * 1000:.0f} ms",
            f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms ({len(times)} cancels)",
        )
        if p99 >= CANCEL_P99:
            soak.violations.append(f"{engine}: cancel p99 {p99 * 1000:.0f} ms")
    report(
        f"soak {seconds} s: contract violations",
        "0",
        f"{len(soak.violations)} in {soak.generations} steps",
    )
    report(
        f"soak {seconds} s: new generations shed",
        "(overloaded, retryable)",
        f"{soak.shed}; the load generator's own loop ran {own_lag.stolen:.1f} s late",
    )
    report(f"soak {seconds} s: RSS", f"slope ≤ {slope_bound} MB/min (2nd half)",
           f"{rss[0][1]:.0f} → {rss[-1][1]:.0f} MB, {slope:+.2f} MB/min")  # fmt: skip
    # Pooled keep-alive connections to the upstream stay open: the bound is
    # the first half's peak, so only growth counts.
    first_half = max(fds[: max(1, len(fds) // 2)])
    report(
        f"soak {seconds} s: descriptors",
        "end ≤ 1st half's peak + 5",
        f"{fds[0]} → peak {first_half} (1st half), {max(fds)} → {fds[-1]} at the end",
    )
    # LiteLLM's own coroutine, left when a cancel lands inside its request
    # set-up (it cannot be shielded: its stream must be read in the task that
    # opened it): about 1 per 1,000 to 20,000 cancels, by LiteLLM's version.
    cancels = sum(len(times) for times in soak.cancels.values())
    allowed = max(3, cancels // 200)
    report(
        f"soak {seconds} s: 'never awaited' warnings",
        f"≤ {allowed} (1 per 200 cancels)",
        f"{never_awaited} in {cancels} cancels",
    )
    print(dict(soak.outcomes))
    assert not soak.violations, (soak.violations[:10], failed[:5])
    assert slope <= slope_bound
    assert fds[-1] <= first_half + 5
    assert never_awaited <= allowed
