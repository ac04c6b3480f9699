"""Gateway CPU per token of the UI message stream (``/api/chat``), side by
side with ``/v1/ws`` and ``/v1/chat/completions`` on the same server, in
one invocation: the AI SDK's endpoint may cost at most 1.2× ``/v1/ws``.

    .venv/bin/python bench/ui.py [--streams 200] [--rounds 2]

Each round runs the three endpoints in turn (200 streams at 50 tokens/s,
started over 1 s, against the fake upstream), the order rotated each round;
each cell is the best (lowest) of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from core import start_server, write_config
from run import PACE, measured, settle, sse_load, ws_load

from tokenwire.server.engines.fake_upstream import FakeUpstream

ENDPOINTS = ("/v1/ws", "/v1/chat/completions", "/api/chat")


async def main(args: argparse.Namespace) -> str:
    prompt = "fake:" + json.dumps({"tokens": 100, "interval": 1 / PACE})
    best: dict[str, dict[str, Any]] = {}
    async with FakeUpstream() as fake:
        config = write_config(Path(tempfile.mkdtemp()) / "tokenwire.yaml", fake)
        server, url, _ = await start_server(config)
        base = url.replace("ws://", "http://").removesuffix("/ws")
        try:
            for round_ in range(args.rounds):
                order = ENDPOINTS[round_ % 3 :] + ENDPOINTS[: round_ % 3]
                for endpoint in order:
                    await settle(fake, 60)
                    if endpoint == "/v1/ws":
                        load = ws_load(url, args.streams, prompt, 60, 1.0)
                    else:
                        load = sse_load(
                            base, args.streams, prompt, 60, 1.0, ui=endpoint == "/api/chat"
                        )
                    report = await measured(server.pid, load)
                    cell = report.get("gateway_cpu_s_per_1k_tokens", float("inf"))
                    kept = best.get(endpoint)
                    if kept is None or cell < kept["gateway_cpu_s_per_1k_tokens"]:
                        best[endpoint] = report
        finally:
            server.terminate()
            await server.wait()
    ws = best["/v1/ws"]["gateway_cpu_s_per_1k_tokens"]
    lines = [
        f"{args.streams} streams at {PACE} tokens/s, best of {args.rounds} rounds",
        "",
        "| endpoint | tokens | failed | gateway CPU s / 1k tokens | × /v1/ws |",
        "|---|---|---|---|---|",
    ]
    for endpoint in ENDPOINTS:
        r = best[endpoint]
        cpu = r["gateway_cpu_s_per_1k_tokens"]
        failed = r.get("generations_failed") or 0
        lines.append(f"| {endpoint} | {r['tokens']} | {failed} | {cpu:.4f} | {cpu / ws:.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    print(asyncio.run(main(parser.parse_args())))
