"""OpenAI's Chat Completions SSE, through tokenwire and through the LiteLLM proxy, in one run.

    .venv/bin/python bench/chat_completions.py [--streams 200] [--tokens 20000] [--skip-proxy]

On one fake upstream (in this process), side by side:

1. one unpaced stream of ``--tokens`` tokens: tokens/s through tokenwire's
   ``/v1/chat/completions``, through the LiteLLM proxy's, and (the baseline)
   through tokenwire's own ``/v1/ws``;
2. ``--streams`` streams at 50 tokens/s, started over 1 s: the gateway's CPU
   seconds per 1,000 tokens over ``/v1/chat/completions`` and over ``/v1/ws``,
   on the same ``tokenwire serve`` process, run after one another.

The SSE load is ``bench/sse_load.py`` (aiohttp), the WebSocket load
``tokenwire loadtest``; both read every token. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import fake_deployment, start_server, write_config
from run import (
    PACE,
    ensure_proxy,
    free_port,
    measured,
    settle,
    sse_load,
    start_proxy,
    write_proxy_config,
    ws_load,
)

from tokenwire.server.engines.fake_upstream import FakeUpstream


async def main(args: argparse.Namespace) -> None:
    async with FakeUpstream() as fake:
        tmp = Path(tempfile.mkdtemp())
        deployment = fake_deployment(fake)
        config = write_config(tmp / "tokenwire.yaml", fake)
        proxy_config = write_proxy_config(tmp, deployment)
        long = "fake:" + json.dumps({"tokens": args.tokens})
        paced = "fake:" + json.dumps({"tokens": 100, "interval": 1 / PACE})
        rows: dict[str, dict[str, object]] = {}

        server, ws_url, _ = await start_server(config)
        http = ws_url.replace("ws://", "http://").removesuffix("/ws")
        try:
            for _ in range(args.rounds):
                rows.setdefault("unpaced, /v1/ws", {}).update(
                    await measured(server.pid, ws_load(ws_url, 1, long, 120))
                )
                rows.setdefault("unpaced, /v1/chat/completions", {}).update(
                    await measured(server.pid, sse_load(http, 1, long, 120))
                )
                await settle(fake, 60)
                ws = await measured(server.pid, ws_load(ws_url, args.streams, paced, 60, 1.0))
                await settle(fake, 60)
                sse = await measured(server.pid, sse_load(http, args.streams, paced, 60, 1.0))
                await settle(fake, 60)
                for name, report in (
                    (f"{args.streams} paced, /v1/ws", ws),
                    (f"{args.streams} paced, /v1/chat/completions", sse),
                ):
                    runs = rows.setdefault(name, {"cpu": []})
                    runs["cpu"].append(report.get("gateway_cpu_s_per_1k_tokens"))  # type: ignore[union-attr]
                    runs["completed"] = report.get("generations_completed")
        finally:
            server.terminate()
            await server.wait()

        litellm = None if args.skip_proxy else ensure_proxy()
        if litellm is not None:
            port = free_port()
            proxy = await start_proxy(litellm, proxy_config, port)
            try:
                rows["unpaced, LiteLLM proxy"] = await measured(
                    proxy.pid, sse_load(f"http://127.0.0.1:{port}/v1", 1, long, 300)
                )
            finally:
                proxy.terminate()
                await proxy.wait()

    print(f"one unpaced stream of {args.tokens} tokens (tokens/s):")
    base = rows["unpaced, /v1/chat/completions"].get("tokens_per_s")
    for name in ("unpaced, /v1/ws", "unpaced, /v1/chat/completions", "unpaced, LiteLLM proxy"):
        if name in rows:
            value = rows[name].get("tokens_per_s")
            ratio = (
                f"   chat/completions is {base / value:.1f}x this"
                if value and base and "proxy" in name
                else ""
            )
            print(f"  {name:42s} {value}{ratio}")
    print(f"{args.streams} streams at {PACE} tokens/s, gateway CPU s per 1000 tokens (each round):")
    ws_cpu = rows[f"{args.streams} paced, /v1/ws"]["cpu"]
    sse_cpu = rows[f"{args.streams} paced, /v1/chat/completions"]["cpu"]
    for name in (f"{args.streams} paced, /v1/ws", f"{args.streams} paced, /v1/chat/completions"):
        print(
            f"  {name:42s} {rows[name]['cpu']}  completed {rows[name]['completed']}/{args.streams}"
        )
    ratios = [round(s / w, 2) for s, w in zip(sse_cpu, ws_cpu, strict=True) if s and w]  # type: ignore[call-overload]
    print(f"  chat/completions / ws, per round: {ratios}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-proxy", action="store_true")
    asyncio.run(main(parser.parse_args()))
