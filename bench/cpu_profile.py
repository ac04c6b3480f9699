"""Where a relayed token's (or a handshake's) CPU goes: tokenwire, LiteLLM,
and the rest.

    .venv/bin/python bench/cpu_profile.py [--tokens 3000]
    .venv/bin/python bench/cpu_profile.py --paced 200 [--tokens 250]
    .venv/bin/python bench/cpu_profile.py --handshakes 3000

By default, runs the fake upstream, the server and a client in this one
process under cProfile while one unpaced stream of --tokens chunks is
relayed. (The fake upstream's own cost shows under aiohttp.)

``--paced N``: the server alone is profiled, in this process; the fake
upstream and ``tokenwire loadtest`` (N streams of --tokens tokens at 50
tokens/s) run in processes of their own. ``--handshakes N``: the same, while
a client process opens N sessions, 50 at a time, and closes them.

Prints CPU per token (or per handshake) by package and the most expensive
functions of tokenwire and of LiteLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import os
import pstats
import re
from collections import defaultdict

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import websockets
from run import TOKENWIRE

from tokenwire.server import logs
from tokenwire.server.app import TokenwireServer
from tokenwire.server.config import ServerSettings, parse
from tokenwire.server.engines.fake_upstream import FakeUpstream
from tokenwire.server.engines.upstream import Upstream

PACKAGES = ("tokenwire", "litellm", "pydantic", "openai", "httpx", "httpcore", "aiohttp",
            "websockets", "msgspec", "asyncio", "tiktoken", "json")  # fmt: skip


def package_of(filename: str) -> str:
    for name in PACKAGES:
        if f"/{name}/" in filename or filename.endswith(f"/{name}.py"):
            return name
    for root in ("/work/", "/protocol/", "/server/", "/clients/"):
        if root in filename and "site-packages" not in filename:
            return "tokenwire"
    return "other"


async def relay(tokens: int, profiler: cProfile.Profile) -> None:
    async with FakeUpstream() as fake:
        config = parse({"model_list": [{"model_name": "fake", "litellm_params": {
            "model": "openai/fake", "api_base": fake.base_url, "api_key": "k"}}]})  # fmt: skip
        server = TokenwireServer(ServerSettings(), Upstream(config, repeated_chunk_limit=100))
        async with (
            server.listen("127.0.0.1", 0) as (host, port),
            websockets.connect(f"ws://{host}:{port}/v1/ws", max_size=None) as ws,
        ):
            await ws.recv()

            async def generate(gid: str, n: int) -> None:
                prompt = "fake:" + json.dumps({"tokens": n})
                await ws.send(
                    json.dumps(
                        {
                            "type": "generate",
                            "id": gid,
                            "model": "fake",
                            "messages": [{"role": "user", "content": prompt}],
                        }
                    )
                )
                while json.loads(await ws.recv())["type"] not in ("finish", "error"):
                    pass

            await generate("warm", 50)  # LiteLLM's first call imports and builds a lot
            profiler.enable()
            await generate("measured", tokens)
            profiler.disable()


async def outside(*command: str) -> tuple[asyncio.subprocess.Process, str]:
    """A ``tokenwire`` command in a process of its own; its first line."""
    process = await asyncio.create_subprocess_exec(
        TOKENWIRE, *command, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    return process, (await asyncio.wait_for(process.stdout.readline(), 30)).decode()


async def run(*command: str) -> str:
    """A ``tokenwire`` command run to its end; what it printed."""
    process = await asyncio.create_subprocess_exec(
        TOKENWIRE, *command, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    return out.decode()


async def _opener(url: str, n: int) -> None:
    gate = asyncio.Semaphore(50)

    async def one() -> None:
        async with gate, websockets.connect(url, max_size=None) as ws:
            await ws.recv()

    await asyncio.gather(*(one() for _ in range(n)))


def opener(url: str, n: int) -> None:
    asyncio.run(_opener(url, n))


async def served(args: argparse.Namespace, profiler: cProfile.Profile) -> int:
    """The server in this process under the profiler, its load outside; the
    count of what was measured (tokens, or handshakes)."""
    fake, line = await outside("fake-upstream", "--port", "0")
    found = re.search(r"(http://\S+)", line)
    assert found, line
    base_url = found.group(1)
    config = parse({"model_list": [{"model_name": "fake", "litellm_params": {
        "model": "openai/fake", "api_base": base_url, "api_key": "k"}}]})  # fmt: skip
    server = TokenwireServer(
        ServerSettings(max_sessions=100_000), Upstream(config, repeated_chunk_limit=100)
    )
    try:
        async with server.listen("127.0.0.1", 0) as (host, port):
            url = f"ws://{host}:{port}/v1/ws"
            if args.handshakes:
                await asyncio.to_thread(opener, url, 50)  # warm
                spawn = multiprocessing.get_context("spawn")
                process = spawn.Process(target=opener, args=(url, args.handshakes))
                profiler.enable()
                process.start()
                await asyncio.to_thread(process.join)
                profiler.disable()
                return int(args.handshakes)
            prompt = "fake:" + json.dumps({"tokens": args.tokens, "interval": 0.02})
            command = ["loadtest", "--url", url, "--model", "fake", "--json", "--prompt", prompt,
                       "--sessions", str(args.paced), "--processes", "2", "--ramp", "1"]  # fmt: skip
            warm = [
                "loadtest",
                "--url",
                url,
                "--model",
                "fake",
                "--sessions",
                "2",
                "--prompt",
                "fake:{}",
            ]
            await run(*warm)
            profiler.enable()
            out = await run(*command)
            profiler.disable()
            report = json.loads(out.strip().splitlines()[-1] or "{}")
            return int(report.get("tokens", 0)) or 1
    finally:
        fake.terminate()
        await fake.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--paced", type=int, default=0, help="streams at 50 tokens/s")
    parser.add_argument("--handshakes", type=int, default=0, help="sessions opened")
    args = parser.parse_args()
    logs.configure("warning")
    profiler = cProfile.Profile()
    if args.paced or args.handshakes:
        args.tokens = asyncio.run(served(args, profiler))
    else:
        asyncio.run(relay(args.tokens, profiler))
    unit = "handshake" if args.handshakes else "token"
    stats = pstats.Stats(profiler)
    by_package: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, function), (_, _, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        package = package_of(filename)
        by_package[package] += tottime
        rows.append((tottime, cumtime, package, f"{os.path.basename(filename)}:{line} {function}"))
    total = sum(by_package.values())
    where = (
        "the server alone" if args.paced or args.handshakes else "fake upstream and client included"
    )
    print(f"CPU per {unit}: {total / args.tokens * 1e6:.0f} µs ({args.tokens} of them, {where})\n")
    print("by package (own time):")
    for package, seconds in sorted(by_package.items(), key=lambda kv: -kv[1]):
        print(
            f"  {package:12} {seconds / args.tokens * 1e6:8.1f} µs/{unit}  {100 * seconds / total:5.1f}%"
        )
    for package in ("tokenwire", "websockets", "other", "asyncio", "litellm"):
        print(f"\nmost expensive in {package} (own time per token, then cumulative):")
        top = sorted((r for r in rows if r[2] == package), reverse=True)[:8]
        for tottime, cumtime, _, where in top:
            print(
                f"  {tottime / args.tokens * 1e6:7.1f} µs  {cumtime / args.tokens * 1e6:8.1f} µs  {where}"
            )


if __name__ == "__main__":
    main()
