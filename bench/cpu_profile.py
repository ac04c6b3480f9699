"""Where a relayed token's CPU goes: tokenwire, LiteLLM, and the rest.

    .venv/bin/python bench/cpu_profile.py [--tokens 3000]

Runs the fake upstream, the server and a client in this one process under
cProfile while one unpaced stream of --tokens chunks is relayed, then prints
CPU per token by package and the most expensive functions of tokenwire and of
LiteLLM. (The fake upstream's own cost shows under aiohttp.)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
from collections import defaultdict

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import websockets

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=3000)
    args = parser.parse_args()
    logs.configure("warning")
    profiler = cProfile.Profile()
    asyncio.run(relay(args.tokens, profiler))
    stats = pstats.Stats(profiler)
    by_package: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, function), (_, _, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        package = package_of(filename)
        by_package[package] += tottime
        rows.append((tottime, cumtime, package, f"{os.path.basename(filename)}:{line} {function}"))
    total = sum(by_package.values())
    print(
        f"CPU per relayed token: {total / args.tokens * 1e6:.0f} µs ({args.tokens} tokens, "
        "fake upstream and client included)\n"
    )
    print("by package (own time):")
    for package, seconds in sorted(by_package.items(), key=lambda kv: -kv[1]):
        print(
            f"  {package:12} {seconds / args.tokens * 1e6:8.1f} µs/token  {100 * seconds / total:5.1f}%"
        )
    for package in ("tokenwire", "litellm"):
        print(f"\nmost expensive in {package} (own time per token, then cumulative):")
        top = sorted((r for r in rows if r[2] == package), reverse=True)[:8]
        for tottime, cumtime, _, where in top:
            print(
                f"  {tottime / args.tokens * 1e6:7.1f} µs  {cumtime / args.tokens * 1e6:8.1f} µs  {where}"
            )


if __name__ == "__main__":
    main()
