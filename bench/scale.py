"""Sessions one node holds: idle WebSocket sessions opened at a steady rate,
then paced streams among them.

    .venv/bin/python bench/scale.py [--sessions 100000] [--rate 2000] [--processes 4]
        [--streams 100]

Prints sessions held, RSS per session, handshake p99 while ramping,
``/healthz`` p99 throughout (sampled every 50 ms), and the paced streams'
gap p99, each beside its bound. The sessions are opened by ``--processes``
client processes, each from its own loopback source address (127.0.0.2,
127.0.0.3, ...) so that ephemeral ports do not run out; the server (one
process) and the fake upstream (another) run on 127.0.0.1.

100,000 sessions need about 100,000 descriptors on each side: the server
raises its soft limit to the hard one itself; the hard limit of the shell
that runs this is raised first (as root: ``prlimit --pid $$ --nofile=
1048576:1048576``, or ``ulimit -Hn 1048576``), and the client processes
raise theirs the same way. A quick run (``--sessions 2000``) needs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from core import pct, start_server, write_config
from run import PACE, settle, ws_load

from tokenwire.server.engines.fake_upstream import FakeUpstream

BOUNDS = {
    "rss_kb_per_session": 20.0,
    "handshake_p99_ms": 250.0,
    "healthz_p99_ms": 50.0,
    "gap_p99_ms": 50.0,
}


def _raise_own_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _client(url: str, source: str, count: int, rate: float, results: Any, stop: Any) -> None:
    """One client process: ``count`` sessions from ``source``, ``rate`` a
    second; their handshake times go to ``results``; held until ``stop``."""
    import uvloop
    import websockets

    _raise_own_limit()

    async def main() -> None:
        held = []
        times: list[float] = []
        failed = 0
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def one() -> None:
            nonlocal failed
            t = time.perf_counter()
            try:
                held.append(
                    await websockets.connect(
                        url, local_addr=(source, 0), open_timeout=30, ping_interval=None,
                        compression=None, max_queue=4,
                    )
                )  # fmt: skip
                times.append(time.perf_counter() - t)
            except Exception:
                failed += 1

        tasks = []
        for i in range(count):
            await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        results.put({"times": times, "failed": failed, "held": len(held)})
        await asyncio.to_thread(stop.wait)  # a multiprocessing Event: held until it is set
        for ws in held:
            ws.transport.abort()

    uvloop.run(main())


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _healthz(base: str, samples: list[float], done: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not done.is_set():
        t = time.perf_counter()
        try:
            await loop.run_in_executor(
                None, lambda: urllib.request.urlopen(base + "/healthz", timeout=5).read()
            )
            samples.append(time.perf_counter() - t)
        except OSError:
            samples.append(5.0)
        await asyncio.sleep(0.05)


async def main(args: argparse.Namespace) -> str:
    _raise_own_limit()
    async with FakeUpstream() as fake:
        config = write_config(
            Path(tempfile.mkdtemp()) / "tokenwire.yaml", fake, max_sessions=args.sessions + 1000
        )
        server, url, _ = await start_server(config)
        base = url.replace("ws://", "http://").removesuffix("/v1/ws")
        try:
            rss_before = _rss_kb(server.pid or 0)
            context = multiprocessing.get_context("spawn")
            results = context.Queue()
            stop = context.Event()
            share = args.sessions // args.processes
            clients = [
                context.Process(
                    target=_client,
                    args=(
                        url,
                        f"127.0.0.{2 + i}",
                        share,
                        args.rate / args.processes,
                        results,
                        stop,
                    ),
                )
                for i in range(args.processes)
            ]
            health: list[float] = []
            done = asyncio.Event()
            sampler = asyncio.create_task(_healthz(base, health, done))
            ramp_started = time.monotonic()
            for client in clients:
                client.start()
            reports = [await asyncio.to_thread(results.get) for _ in clients]
            ramp_s = time.monotonic() - ramp_started
            await asyncio.sleep(2)
            rss_after = _rss_kb(server.pid or 0)
            held = sum(r["held"] for r in reports)
            prompt = "fake:" + json.dumps({"tokens": 250, "interval": 1 / PACE})
            await settle(fake, 30)
            paced = await ws_load(url, args.streams, prompt, 60, 1.0)
            done.set()
            await sampler
            stop.set()
            for client in clients:
                await asyncio.to_thread(client.join, 30)
        finally:
            server.terminate()
            await server.wait()
    times = [t for r in reports for t in r["times"]]
    failed = sum(r["failed"] for r in reports)
    figures = {
        "sessions held": f"{held} of {args.sessions} ({failed} failed)",
        "ramp": f"{ramp_s:.1f} s ({held / ramp_s:.0f} a second)",
        "rss_kb_per_session": (rss_after - rss_before) / max(held, 1),
        "rss_total_mb": rss_after / 1024,
        "handshake_p99_ms": 1000 * pct(times, 0.99) if times else float("inf"),
        "healthz_p99_ms": 1000 * pct(health, 0.99) if health else float("inf"),
        "gap_p99_ms": (paced.get("inter_token_ms") or {}).get("p99", float("inf")),
    }
    lines = [
        f"{args.sessions} sessions at {args.rate}/s from {args.processes} processes, "
        f"then {args.streams} streams at {PACE} tokens/s among them",
        "",
        "| figure | measured | bound |",
        "|---|---|---|",
    ]
    for name, value in figures.items():
        bound = BOUNDS.get(name)
        shown = f"{value:.1f}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown} | {'≤ ' + str(bound) if bound else ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="sessions opened a second")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--streams", type=int, default=100)
    print(asyncio.run(main(parser.parse_args())))
