"""Gateway CPU per token of every surface (``/v1/ws``, Chat Completions,
the AI SDK's ``/api/chat``, ``POST /v1/responses``, Anthropic's ``POST
/v1/messages``), side by side on the same server, in one invocation: an SSE
surface may cost at most 1.2× ``/v1/ws``.

    .venv/bin/python bench/surfaces.py [--streams 200] [--rounds 2] [--unpaced]
        [--against-proxy]

Each round runs the endpoints in turn (200 streams at 50 tokens/s, started
over 1 s, against the fake upstream; with ``--unpaced``, one stream of
20,000 tokens as fast as they come), the order rotated each round; each
cell is the best (lowest CPU) of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

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

ENDPOINTS = ("/v1/ws", "/v1/chat/completions", "/api/chat", "/v1/responses", "/v1/messages")
SURFACES = {
    "/v1/chat/completions": "chat",
    "/api/chat": "ui",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}
UNPACED_TOKENS = 20_000


async def main(args: argparse.Namespace) -> str:
    per_stream = 100
    prompt = "fake:" + json.dumps({"tokens": per_stream, "interval": 1 / PACE})
    if args.unpaced:
        args.streams = 1
        per_stream = UNPACED_TOKENS
        prompt = "fake:" + json.dumps({"tokens": per_stream})
    best: dict[str, dict[str, Any]] = {}
    async with FakeUpstream() as fake:
        config = write_config(Path(tempfile.mkdtemp()) / "tokenwire.yaml", fake)
        server, url, _ = await start_server(config)
        base = url.replace("ws://", "http://").removesuffix("/ws")
        try:
            ramp = 0.0 if args.unpaced else 1.0
            for round_ in range(args.rounds):
                shift = round_ % len(ENDPOINTS)
                for endpoint in ENDPOINTS[shift:] + ENDPOINTS[:shift]:
                    await settle(fake, 60)
                    if endpoint == "/v1/ws":
                        load = ws_load(url, args.streams, prompt, 60, ramp)
                    else:
                        surface = SURFACES[endpoint]
                        load = sse_load(base, args.streams, prompt, 60, ramp, surface=surface)
                    report = await measured(server.pid, load)
                    # Per token the provider sent: a reader that falls behind
                    # gets merged text (fewer, longer deltas), the same tokens.
                    relayed = (report.get("generations_completed") or 0) * per_stream
                    report["relayed"] = relayed
                    report["relayed_per_s"] = round(relayed / max(report["wall_s"], 1e-9))
                    cpu = report.get("gateway_cpu_s", float("inf"))
                    cell = report["gateway_cpu_s_per_1k_tokens"] = (
                        round(1000 * cpu / relayed, 4) if relayed else float("inf")
                    )
                    kept = best.get(endpoint)
                    if kept is None or cell < kept["gateway_cpu_s_per_1k_tokens"]:
                        best[endpoint] = report
        finally:
            server.terminate()
            await server.wait()
        proxy = await against_proxy(fake, prompt, args) if args.against_proxy else {}
    ws = best["/v1/ws"]["gateway_cpu_s_per_1k_tokens"]
    load = (
        f"one unpaced stream of {UNPACED_TOKENS} tokens"
        if args.unpaced
        else f"{args.streams} streams at {PACE} tokens/s"
    )
    lines = [
        f"{load}, best of {args.rounds} rounds",
        "",
        "| endpoint | tokens relayed | tokens/s | deltas the client read | failed "
        "| gateway CPU s / 1k tokens | × /v1/ws |",
        "|---|---|---|---|---|---|---|",
    ]
    for endpoint in ENDPOINTS:
        r = best[endpoint]
        cpu = r["gateway_cpu_s_per_1k_tokens"]
        failed = r.get("generations_failed") or 0
        lines.append(
            f"| {endpoint} | {r['relayed']} | {r['relayed_per_s']} | {r['tokens']} | {failed} "
            f"| {cpu:.4f} | {cpu / ws:.2f}× |"
        )
    if proxy:
        lines += [
            "",
            "The same load through the LiteLLM proxy (its own endpoints, same fake upstream):",
            "",
            "| endpoint | proxy tokens/s | failed | tokenwire tokens/s | × the proxy |",
            "|---|---|---|---|---|",
        ]
        for endpoint, r in proxy.items():
            mine = best[endpoint]["relayed_per_s"]
            failed = r.get("generations_failed") or 0
            times = mine / r["relayed_per_s"] if r["relayed_per_s"] else float("inf")
            lines.append(
                f"| {endpoint} | {r['relayed_per_s']} | {failed} | {mine} | {times:.1f}× |"
            )
    return "\n".join(lines)


async def against_proxy(
    fake: FakeUpstream, prompt: str, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """The LiteLLM proxy's figures on its SSE endpoints (installed once into
    bench/.proxy-venv), best of the rounds."""
    litellm = ensure_proxy()
    if litellm is None:
        return {}
    # As a chat-completions-only provider (vLLM's kind): the proxy bridges its
    # /v1/responses and /v1/messages to the fake's /chat/completions, as
    # tokenwire does (as openai/, it would call the fake's /responses).
    deployment = {**fake_deployment(fake), "model": "hosted_vllm/fake"}
    config = write_proxy_config(Path(tempfile.mkdtemp()), deployment)
    port = free_port()
    proxy = await start_proxy(litellm, config, port)
    base = f"http://127.0.0.1:{port}/v1"
    per_stream = json.loads(prompt.removeprefix("fake:"))["tokens"]
    best: dict[str, dict[str, Any]] = {}
    try:
        for _ in range(args.rounds):
            # /v1/responses last: the proxy sends it to the provider's own
            # /responses (which the fake has not), and the 404 cools the model down.
            for endpoint in ("/v1/chat/completions", "/v1/messages", "/v1/responses"):
                surface = SURFACES[endpoint]
                await settle(fake, 60)
                report = await sse_load(base, args.streams, prompt, 120, 0.0, surface=surface)
                relayed = (report.get("generations_completed") or 0) * per_stream
                report["relayed_per_s"] = round(relayed / max(report["wall_s"], 1e-9))
                kept = best.get(endpoint)
                if kept is None or report["relayed_per_s"] > kept["relayed_per_s"]:
                    best[endpoint] = report
    finally:
        proxy.terminate()
        await proxy.wait()
    return best


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--unpaced", action="store_true", help="one stream, as fast as it comes")
    parser.add_argument(
        "--against-proxy", action="store_true", help="also the LiteLLM proxy's SSE endpoints"
    )
    print(asyncio.run(main(parser.parse_args())))
