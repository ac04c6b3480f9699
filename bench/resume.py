"""What resume costs: the gateway's CPU per token with ``resume: off``,
``memory``, ``redis`` and ``redis`` on a Redis Cluster side by side, resume
latency, Redis memory.

    .venv/bin/python bench/resume.py [--streams 200] [--tokens 250] [--runs 2] [--resumes 100]

One fake upstream (in this process), one ``redis-server`` (Debian's, on a
free port, no persistence), a Redis Cluster of six more (three primaries,
three replicas) and a ``tokenwire serve`` process per ``resume`` mode
(``cluster``: ``redis`` on the cluster), each loaded by ``tokenwire
loadtest`` (two client processes) with ``--streams`` concurrent streams of
``--tokens`` tokens at 50 tokens/s. The modes run in turn, ``--runs``
times, so that the machine's drift hits them alike; the best run of each is
printed with its ratio to ``off`` (the bounds: memory within 1.05×, redis
within 1.25×). Then the same with ``--workers 2`` (``w2``): ``memory``
against ``off``, both with two workers (the bound: 1.05×; a resume there may
be piped between workers).

Then, for ``memory``, ``redis``, ``cluster`` and ``w2 memory``:
``--resumes`` sessions each drop their connection mid-answer and resume at
once, concurrently: the latency from opening the new connection to the
first replayed frame (the bound: p99 100 ms). Last, the single Redis's
memory (its keys' ``MEMORY USAGE``) per finished 1,000-token generation (paced, so each token is
an entry of its own: the most entries a generation makes; the bound: 40 B
a token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import redis.asyncio as aioredis
import websockets
from core import pct, start_server
from run import free_port, measured, ws_load

from tokenwire.server.engines.fake_upstream import FakeUpstream

MODES = ("off", "memory", "redis", "cluster", "w2 off", "w2 memory")
"""The resume modes, one process each (``cluster``: ``resume: redis`` on a
Redis Cluster of three primaries and three replicas), then ``--workers 2``
with ``off`` and ``memory``."""
PACE = 50


def scenario(tokens: int, pace: float = PACE) -> str:
    return "fake:" + json.dumps({"tokens": tokens, "interval": 1 / pace})


def workers_of(mode: str) -> int:
    return 2 if mode.startswith("w2 ") else 1


def write_config(tmp: Path, mode: str, base_url: str, redis_url: str) -> Path:
    resume = "redis" if mode == "cluster" else mode.removeprefix("w2 ")
    server: dict[str, Any] = {"resume": resume, "max_sessions": 20_000}
    if mode in ("redis", "cluster"):
        server["redis_url"] = redis_url
    params = {"model": "openai/fake-model", "api_base": base_url, "api_key": "sk-bench"}
    config = {"model_list": [{"model_name": "fake", "litellm_params": params}], "server": server}
    path = tmp / f"{mode.replace(' ', '-')}.yaml"
    path.write_text(json.dumps(config))
    return path


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.3)
    return process, f"redis://127.0.0.1:{port}/0"


def start_cluster(tmp: Path) -> tuple[list[subprocess.Popen[bytes]], str]:
    """A Redis Cluster: six ``redis-server`` in cluster mode (three primaries,
    three replicas), joined by ``redis-cli --cluster create``."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    ports = [free_port() for _ in range(6)]
    processes = []
    for port in ports:
        (tmp / str(port)).mkdir()
        processes.append(subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp / str(port)), "--cluster-enabled", "yes",
             "--cluster-port", str(free_port())],
            stdout=subprocess.DEVNULL,
        ))  # fmt: skip
    time.sleep(0.5)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-replicas", "1",
                    "--cluster-yes"], check=True, capture_output=True, timeout=60)  # fmt: skip
    for port in ports:
        while (
            "cluster_state:ok"
            not in subprocess.run(
                [cli, "-p", str(port), "cluster", "info"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        ):
            time.sleep(0.1)
    return processes, f"redis+cluster://127.0.0.1:{ports[0]}"


async def cpu_per_token(url: str, pid: int, streams: int, tokens: int) -> dict[str, Any]:
    return await measured(pid, ws_load(url, streams, scenario(tokens), deadline=120, ramp=1.0))


async def _drop_and_resume(url: str, ids: range, go: Any, ready_count: Any) -> list[float]:
    """Each session streams, drops mid-answer, waits for ``go``, resumes."""

    async def one(i: int) -> float:
        ws = await websockets.connect(url, max_size=None)
        ready = json.loads(await ws.recv())
        gid = f"g{i}"
        await ws.send(json.dumps({"type": "generate", "id": gid, "model": "fake",
                                  "messages": [{"role": "user", "content": scenario(300)}]}))  # fmt: skip
        seq = -1
        while seq < 5:
            frame = json.loads(await ws.recv())
            if frame.get("id") == gid:
                seq = frame["seq"]
        ws.transport.abort()
        with ready_count.get_lock():
            ready_count.value += 1
        while not go.is_set():  # noqa: ASYNC110 (a flag shared across processes)
            await asyncio.sleep(0.005)
        started = time.perf_counter()
        again = await websockets.connect(url, max_size=None)
        await again.recv()  # ready
        await again.send(json.dumps({"type": "resume", "token": ready["resume_token"],
                                     "generations": {gid: seq}}))  # fmt: skip
        while True:
            frame = json.loads(await again.recv())
            if frame.get("id") == gid and "seq" in frame:
                latency = time.perf_counter() - started
                break
        await again.close()
        return latency

    return list(await asyncio.gather(*(one(i) for i in ids)))


def _clients(url: str, ids: range, go: Any, ready_count: Any, out: Any) -> None:
    out.put(asyncio.run(_drop_and_resume(url, ids, go, ready_count)))


async def resume_latency(url: str, n: int, processes: int = 2) -> list[float]:
    """n sessions drop mid-answer, then resume all at once: seconds from the
    new connection's start to its first replayed frame. The clients run in
    ``processes`` processes of their own, so that their handshakes do not
    queue behind each other in one event loop (a single Python process
    making 100 handshakes at once measures itself)."""
    context = multiprocessing.get_context("spawn")
    go, ready_count, out = context.Event(), context.Value("i", 0), context.Queue()
    shares = [range(i, n, processes) for i in range(processes)]
    workers = [
        context.Process(target=_clients, args=(url, ids, go, ready_count, out)) for ids in shares
    ]
    for worker in workers:
        worker.start()
    while ready_count.value < n:  # noqa: ASYNC110 (a counter shared across processes)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # frames pile up while they are away
    go.set()
    latencies: list[float] = []
    for _ in workers:
        latencies += await asyncio.to_thread(out.get, True, 60)
    for worker in workers:
        worker.join()
    return latencies


async def redis_bytes_per_generation(url: str, redis_url: str, n: int = 20) -> float:
    """What Redis keeps for one finished, paced 1,000-token generation: the
    ``MEMORY USAGE`` of every key (exact: ``SAMPLES 0``) after ``n`` of them,
    divided by ``n`` (``used_memory`` also counts client buffers, and moves
    with them by tens of KiB)."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()

    async def one(i: int) -> None:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "generate", "id": "g", "model": "fake",
                                      "messages": [{"role": "user", "content": scenario(1000, 200)}]}))  # fmt: skip
            while json.loads(await ws.recv()).get("type") not in ("finish", "error"):
                pass

    await asyncio.gather(*(one(i) for i in range(n)))
    await asyncio.sleep(0.2)
    total = 0
    async for key in client.scan_iter(count=1000):
        total += await client.memory_usage(key, samples=0) or 0
    await client.aclose()
    return total / n


async def main(args: argparse.Namespace) -> str:
    tmp = Path(tempfile.mkdtemp())
    redis_process, redis_url = start_redis(tmp)
    cluster_processes, cluster_url = start_cluster(tmp)
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    reports: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    latencies: dict[str, list[float]] = {}
    try:
        async with FakeUpstream() as fake:
            servers = {}
            for mode in MODES:
                shared = cluster_url if mode == "cluster" else redis_url
                config = write_config(tmp, mode, fake.base_url, shared)
                process, url, _ = await start_server(config, workers_of(mode))
                servers[mode] = (process, url)
            try:
                for _ in range(args.runs):
                    for mode in MODES:
                        process, url = servers[mode]
                        report = await cpu_per_token(url, process.pid, args.streams, args.tokens)
                        reports[mode].append(report)
                        if "gateway_cpu_s_per_1k_tokens" in report:
                            cpu[mode].append(report["gateway_cpu_s_per_1k_tokens"])
                for mode in ("memory", "redis", "cluster", "w2 memory"):
                    latencies[mode] = await resume_latency(servers[mode][1], args.resumes)
                per_generation = await redis_bytes_per_generation(servers["redis"][1], redis_url)
            finally:
                for process, _ in servers.values():
                    process.terminate()
                    await process.wait()
    finally:
        for redis in (redis_process, *cluster_processes):
            redis.terminate()
            redis.wait()
    return render(args, cpu, reports, latencies, per_generation)


def render(args, cpu, reports, latencies, per_generation) -> str:  # type: ignore[no-untyped-def]
    base = min(cpu["off"]) if cpu["off"] else float("nan")
    base_w2 = min(cpu["w2 off"]) if cpu["w2 off"] else float("nan")
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    lines = [
        f"# resume: {args.streams} streams of {args.tokens} tokens at {PACE} tokens/s, "
        f"{args.runs} runs each, best shown ({redis_version})",
        "",
        "".join([f"{'':34}", *(f"{m:>11}" for m in MODES)]),
    ]
    row = "gateway CPU s / 1k tokens"
    lines.append(
        f"{row:34}" + "".join(f"{min(cpu[m]) if cpu[m] else float('nan'):>11.4f}" for m in MODES)
    )
    ratios = [min(cpu[m]) / (base_w2 if workers_of(m) > 1 else base) for m in MODES]
    lines.append(f"{'  ratio to off (same workers)':34}" + "".join(f"{r:>11.2f}" for r in ratios))
    for name, key in (("inter-token p99 ms", "inter_token_ms"), ("first token p99 ms", "ttft_ms")):
        values = [
            min((r.get(key) or {}).get("p99") or float("nan") for r in reports[m]) for m in MODES
        ]
        lines.append(f"{name:34}" + "".join(f"{v:>11.1f}" for v in values))
    completed = [sum(r.get("generations_completed", 0) for r in reports[m]) for m in MODES]
    lines.append(f"{'generations completed':34}" + "".join(f"{v:>11}" for v in completed))
    for mode in MODES:
        lines.append(f"  {mode} runs: " + ", ".join(f"{v:.4f}" for v in cpu[mode]))
    lines.append("")
    lines.append(f"resume latency, {args.resumes} at once (connect → first replayed frame)")
    for mode, values in latencies.items():
        lines.append(
            f"  {mode:10} p50 {pct(values, 0.5) * 1000:6.1f} ms   p99 {pct(values, 0.99) * 1000:6.1f} ms"
            f"   max {max(values) * 1000:6.1f} ms"
        )
    lines.append("")
    lines.append(
        f"Redis memory per finished 1,000-token generation: {per_generation / 1024:.1f} KiB"
        f" ({per_generation / 1000:.1f} B per token)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=250)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--resumes", type=int, default=100)
    arguments = parser.parse_args()
    print(asyncio.run(main(arguments)))
