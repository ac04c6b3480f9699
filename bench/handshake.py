"""What a session's handshake and its keep-alive pings cost the server,
beside a bare websockets server, in one run.

    .venv/bin/python bench/handshake.py [--sessions 3000] [--idle 5000]
    .venv/bin/python bench/against.py COMMIT handshake.py

1. ``--sessions`` sessions opened (50 at a time, until their first message)
   and closed by a client process of their own: the server's CPU per
   session, for ``tokenwire serve`` and for the floor, a bare websockets
   server on uvloop (no pings, no compression) sending one ``ready``-sized
   message.
2. ``--idle`` idle sessions held open while ``tokenwire serve`` pings each
   every second (``ping_interval: 1``) for 10 s: the server's CPU per ping
   and its pong, less what the same sessions cost with pings off.

CPU is read from ``/proc`` (the server's processes only).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import websockets
from core import start_server, write_config
from run import cpu_s, free_port

from tokenwire.server.engines.fake_upstream import FakeUpstream

READY = (
    '{"type":"ready","session":"s","protocol":"tokenwire.v1","models":["fake"],'
    '"limits":{"max_generations":64,"max_message_bytes":1048576}}'
)
PINGED = 10.0
"""Seconds the idle sessions' CPU is measured for."""


async def _open_and_close(url: str, n: int) -> None:
    gate = asyncio.Semaphore(50)

    async def one() -> None:
        async with gate, websockets.connect(url, max_size=None, compression=None) as ws:
            await ws.recv()

    await asyncio.gather(*(one() for _ in range(n)))


def open_and_close(url: str, n: int) -> None:
    asyncio.run(_open_and_close(url, n))


async def _hold(url: str, n: int, seconds: float) -> None:
    gate = asyncio.Semaphore(50)
    held: list[Any] = []

    async def one() -> None:
        async with gate:
            ws = await websockets.connect(url, compression=None, ping_interval=None)
            await ws.recv()
            held.append(ws)

    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(seconds)


def hold(url: str, n: int, seconds: float) -> None:
    asyncio.run(_hold(url, n, seconds))


async def _bare(port: int) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        await ws.send(READY)
        async for _ in ws:
            pass

    async with serve(handler, "127.0.0.1", port, ping_interval=None, compression=None):
        await asyncio.Future()


def bare(port: int) -> None:
    import uvloop

    uvloop.run(_bare(port))


async def per_session(pid: int, url: str, n: int) -> float:
    """Server CPU µs per session opened and closed by a client process."""
    spawn = multiprocessing.get_context("spawn")
    await asyncio.to_thread(open_and_close, url, 100)  # warm
    client = spawn.Process(target=open_and_close, args=(url, n))
    before = cpu_s(pid)
    client.start()
    await asyncio.to_thread(client.join)
    return (cpu_s(pid) - before) / n * 1e6


async def idle_cpu(config: Path, n: int) -> float:
    """Server CPU seconds over ``PINGED`` s while ``n`` sessions sit idle."""
    process, url, _ = await start_server(config)
    try:
        spawn = multiprocessing.get_context("spawn")
        client = spawn.Process(target=hold, args=(url, n, PINGED + 30))
        client.start()
        # Opened (the clients share the machine: at most ≈600 a second), then settled.
        await asyncio.sleep(n / 400 + 3)
        before = cpu_s(process.pid)
        await asyncio.sleep(PINGED)
        used = cpu_s(process.pid) - before
        client.kill()
        await asyncio.to_thread(client.join)
        return used
    finally:
        process.terminate()
        await process.wait()


async def main(args: argparse.Namespace) -> str:
    folder = Path(tempfile.mkdtemp())
    async with FakeUpstream() as fake:
        config = write_config(folder / "serve.yaml", fake)
        process, url, _ = await start_server(config)
        try:
            tokenwire = await per_session(process.pid, url, args.sessions)
        finally:
            process.terminate()
            await process.wait()
        port = free_port()
        floor_process = multiprocessing.get_context("spawn").Process(target=bare, args=(port,))
        floor_process.start()
        await asyncio.sleep(1.5)  # the spawned server imports, then listens
        try:
            floor = await per_session(
                floor_process.pid or 0, f"ws://127.0.0.1:{port}/", args.sessions
            )
        finally:
            floor_process.terminate()
            floor_process.join()
        pinged = await idle_cpu(
            write_config(folder / "pinged.yaml", fake, ping_interval=1), args.idle
        )
        quiet = await idle_cpu(
            write_config(folder / "quiet.yaml", fake, ping_interval=0), args.idle
        )
    per_ping = (pinged - quiet) / (args.idle * PINGED) * 1e6
    return "\n".join(
        [
            f"# handshakes: {args.sessions} sessions opened and closed, 50 at a time; "
            f"{args.idle} idle sessions pinged every second",
            "",
            f"{'':40}{'bare websockets':>18}{'tokenwire':>12}",
            f"{'server CPU µs per session (open, close)':40}{floor:>18.0f}{tokenwire:>12.0f}",
            f"{'tokenwire ÷ floor':40}{'':>18}{tokenwire / floor:>12.2f}",
            f"{'server CPU µs per ping and its pong':40}{'':>18}{per_ping:>12.1f}",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--idle", type=int, default=5000)
    print(asyncio.run(main(parser.parse_args())))
