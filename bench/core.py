"""Core figures of `tokenwire serve`, each beside a baseline run in the same invocation.

    .venv/bin/python bench/core.py [--sessions 1000] [--cancels 50]

- start-up: process start to "listening", beside `python -c "import litellm"`;
- memory: resident set of the idle server, beside a Python that imported
  LiteLLM, and per idle WebSocket session;
- cancel: `cancel` sent → `finish` received and → the upstream request
  closed (seen by the fake upstream), beside LiteLLM's own `aclose()` on the
  same stream from the same process.

Everything talks to 127.0.0.1 only, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import websockets

from tokenwire.server.engines.fake_upstream import FakeUpstream

TOKENWIRE = os.environ.get("TOKENWIRE_SERVE") or str(Path(sys.executable).with_name("tokenwire"))
"""The server the benchmarks start: this checkout's, or another's (``against.py``)."""
SLOW = "fake:" + json.dumps({"tokens": 10_000, "interval": 0.02})


def fake_deployment(fake: FakeUpstream) -> dict[str, str]:
    """The LiteLLM params of the fake upstream's one model."""
    return {"model": "openai/fake", "api_base": fake.base_url, "api_key": "sk-fake"}


def write_config(path: Path, fake: FakeUpstream, **server: object) -> Path:
    """A tokenwire config at ``path`` offering the fake as model ``fake``,
    with these ``server`` settings (and room for 20,000 sessions)."""
    path.write_text(json.dumps({
        "model_list": [{"model_name": "fake", "litellm_params": fake_deployment(fake)}],
        "server": {"max_sessions": 20_000, **server},
    }))  # fmt: skip
    return path


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def start_server(
    config: Path, workers: int = 1
) -> tuple[asyncio.subprocess.Process, str, float]:
    started = time.monotonic()
    extra = (
        ["--workers", str(workers), "--port", str(_free_port())] if workers > 1 else ["--port", "0"]
    )
    process = await asyncio.create_subprocess_exec(
        TOKENWIRE,
        "serve",
        *extra,
        "--log-format",
        "json",
        "--log-level",
        "warning",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    # --log-level warning hides "listening": read the port from /proc instead.
    url = await _listening_url(process.pid, workers)
    return process, url, time.monotonic() - started


def children(pid: int) -> list[int]:
    """The process's children (``--workers``: the workers)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _listening_url(pid: int, workers: int = 1) -> str:
    async with asyncio.timeout(120):
        while True:
            listening = [
                p for p in ([pid] if workers == 1 else children(pid)) if _listening_port(p)
            ]
            if len(listening) == workers:
                return f"ws://127.0.0.1:{_listening_port(listening[0])}/v1/ws"
            await asyncio.sleep(0.02)


def _listening_port(pid: int) -> int | None:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            return int(fields[1].split(":")[1], 16)
    return None


async def baseline_import() -> tuple[float, int]:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import litellm, sys; sys.stdout.write('ok\\n'); sys.stdout.flush(); sys.stdin.read()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    await process.stdout.readline()
    elapsed = time.monotonic() - started
    memory = rss_kb(process.pid)
    process.stdin.close()
    await process.wait()
    return elapsed, memory


async def cancel_through_tokenwire(
    url: str, fake: FakeUpstream, n: int
) -> tuple[list[float], list[float]]:
    to_finish, to_close = [], []
    async with websockets.connect(url) as ws:
        await ws.recv()
        for i in range(n):
            gid = f"c{i}"
            mark = fake.mark()
            await ws.send(
                json.dumps(
                    {
                        "type": "generate",
                        "id": gid,
                        "model": "fake",
                        "messages": [{"role": "user", "content": SLOW}],
                    }
                )
            )
            record = await fake.request_after(mark, 10)
            await ws.recv()  # first token
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "cancel", "id": gid}))
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "finish":
                    to_finish.append(time.monotonic() - sent)
                    break
            closed = await record.wait_ended(10)
            to_close.append(closed - sent)
    return to_finish, to_close


async def cancel_in_litellm(fake: FakeUpstream, n: int) -> list[float]:
    import litellm

    out = []
    for _ in range(n):
        stream = await litellm.acompletion(
            model="openai/fake",
            api_base=fake.base_url,
            api_key="k",
            max_retries=0,
            messages=[{"role": "user", "content": SLOW}],
            stream=True,
        )
        record = fake.requests[-1]
        await stream.__anext__()
        sent = time.monotonic()
        await stream.aclose()
        out.append(await record.wait_ended(10) - sent)
    return out


async def idle_sessions(url: str, pid: int, n: int) -> float:
    before = rss_kb(pid)
    sockets = []
    for _ in range(n):
        ws = await websockets.connect(url, compression=None)
        await ws.recv()
        sockets.append(ws)
    await asyncio.sleep(0.5)
    after = rss_kb(pid)
    for ws in sockets:
        await ws.close()
    return (after - before) / n


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--cancels", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    async with FakeUpstream() as fake:
        config = Path(tempfile.mkdtemp()) / "bench.yaml"
        config.write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": "fake",
                            "litellm_params": {
                                "model": "openai/fake",
                                "api_base": fake.base_url,
                                "api_key": "k",
                            },
                        }
                    ],
                    "server": {"max_sessions": args.sessions + 10},
                }
            )
        )

        baseline = [await baseline_import() for _ in range(args.runs)]
        starts, idle_rss = [], []
        for run in range(args.runs):
            process, url, elapsed = await start_server(config)
            starts.append(elapsed)
            await asyncio.sleep(1)
            idle_rss.append(rss_kb(process.pid))
            if run < args.runs - 1:
                process.terminate()
                await process.wait()

        per_session = await idle_sessions(url, process.pid, args.sessions)
        to_finish, to_close = await cancel_through_tokenwire(url, fake, args.cancels)
        direct = await cancel_in_litellm(fake, args.cancels)
        process.terminate()
        await process.wait()

    def row(label: str, value: str, baseline: str = "", note: str = "") -> None:
        print(f"{label:44}{value:>14}{baseline:>14}   {note}".rstrip())

    def ms(values: list[float], q: float) -> str:
        return f"{pct(values, q) * 1000:.1f} ms"

    print(
        f"tokenwire core figures — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}\n"
    )
    row("", "tokenwire", "baseline")
    row(
        f"start-up to listening (median of {args.runs})",
        f"{statistics.median(starts):.2f} s",
        f"{statistics.median(b[0] for b in baseline):.2f} s",
        "baseline: python -c 'import litellm'",
    )
    row(
        "resident memory, idle",
        f"{statistics.median(idle_rss) / 1024:.1f} MB",
        f"{statistics.median(b[1] for b in baseline) / 1024:.1f} MB",
        "baseline: the same import",
    )
    row(f"memory per idle session ({args.sessions} open)", f"{per_session:.1f} KB")
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        row(
            f"cancel → upstream closed, {name}",
            ms(to_close, q),
            ms(direct, q),
            "baseline: LiteLLM aclose() in-process",
        )
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        row(f"cancel → finish received, {name}", ms(to_finish, q))


if __name__ == "__main__":
    asyncio.run(main())
