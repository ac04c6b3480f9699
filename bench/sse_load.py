"""An SSE load generator for OpenAI-compatible /chat/completions endpoints
(and, with ``--surface``, for tokenwire's other SSE surfaces: ``ui``, the AI
SDK's ``/api/chat``; ``responses``, ``POST /v1/responses``; ``messages``,
Anthropic's ``POST /v1/messages``).

What `tokenwire loadtest` does over WebSocket, done over HTTP+SSE, so that the
fake upstream itself (the ceiling) and the LiteLLM proxy are measured the same
way. Prints one JSON object with the same field names.

    python bench/sse_load.py --url http://127.0.0.1:9000/v1 --model fake --streams 100 \\
        --prompt 'fake:{"tokens": 100, "interval": 0.02}' [--deadline 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

import aiohttp
import msgspec

from tokenwire.client.loadtest import percentiles as pct


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []


_decode = msgspec.json.Decoder(_Chunk).decode


class _UiChunk(msgspec.Struct):
    type: str
    delta: str | None = None


_decode_ui = msgspec.json.Decoder(_UiChunk).decode


class _TextDelta(msgspec.Struct):
    type: str = ""
    text: str | None = None


class _MessagesEvent(msgspec.Struct):
    type: str
    delta: _TextDelta | None = None


_decode_messages = msgspec.json.Decoder(_MessagesEvent).decode


def _text(line: bytes, surface: str) -> str | None:
    """The text a ``data:`` line carries, if any."""
    if surface in ("ui", "responses"):  # both: {"type": ..., "delta": "text"}
        chunk = _decode_ui(line[6:])
        wanted = "text-delta" if surface == "ui" else "response.output_text.delta"
        return chunk.delta if chunk.type == wanted else None
    if surface == "messages":
        event = _decode_messages(line[6:])
        delta = event.delta
        return delta.text if delta is not None and delta.type == "text_delta" else None
    choices = _decode(line[6:]).choices
    return choices[0].delta.content if choices and choices[0].delta else None


async def stream(
    session: aiohttp.ClientSession, args: argparse.Namespace, out: dict[str, Any], delay: float
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(delay)
    if args.surface == "ui":
        user = {"id": "u", "role": "user", "parts": [{"type": "text", "text": args.prompt}]}
        body: dict[str, Any] = {"id": f"chat-{delay}", "messages": [user], "model": args.model}
        url = args.url.removesuffix("/v1") + "/api/chat"
    elif args.surface == "responses":
        body = {"model": args.model, "stream": True, "input": args.prompt, "store": False}
        url = args.url + "/responses"
    elif args.surface == "messages":
        body = {
            "model": args.model,
            "stream": True,
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": args.prompt}],
        }
        url = args.url + "/messages"
    else:
        body = {
            "model": args.model,
            "stream": True,
            "messages": [{"role": "user", "content": args.prompt}],
        }
        url = args.url + "/chat/completions"
    started = loop.time()
    last = None
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                out["errors"][str(response.status)] = out["errors"].get(str(response.status), 0) + 1
                await response.read()
                return
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                text = _text(line, args.surface)
                if not text:
                    continue
                now = loop.time()
                out["frames"] += 1
                out["tokens"] += 1
                if last is None:
                    out["ttft"].append(now - started)
                else:
                    out["gaps"].append(now - last)
                last = now
        out["completed"] += 1
    except (TimeoutError, aiohttp.ClientError) as exc:
        name = type(exc).__name__
        out["errors"][name] = out["errors"].get(name, 0) + 1


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "completed": 0,
        "errors": {},
        "tokens": 0,
        "frames": 0,
        "ttft": [],
        "gaps": [],
    }
    connector = aiohttp.TCPConnector(limit=0)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    async with aiohttp.ClientSession(
        connector=connector, headers={"Authorization": f"Bearer {args.key}"}
    ) as session:
        tasks = [
            asyncio.create_task(stream(session, args, out, args.ramp * i / args.streams))
            for i in range(args.streams)
        ]
        _, pending = await asyncio.wait(tasks, timeout=args.deadline)
        for task in pending:
            task.cancel()
        if pending:
            out["errors"]["deadline"] = len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "streams": args.streams,
        "generations_completed": out["completed"],
        "generations_failed": out["errors"],
        "tokens": out["tokens"],
        "frames": out["frames"],
        "wall_s": round(wall, 3),
        "tokens_per_s": round(out["tokens"] / wall, 1),
        "ttft_ms": pct(out["ttft"]),
        "inter_token_ms": pct(out["gaps"]),
        "client_cpu_s": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 3),
        "violations": 0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:9000/v1")
    parser.add_argument("--model", default="fake")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--prompt", default='fake:{"tokens": 100}')
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds, then give up")
    parser.add_argument(
        "--ramp", type=float, default=0.0, help="seconds over which the streams start, evenly"
    )
    parser.add_argument("--key", default="sk-none", help="sent as Authorization: Bearer")
    parser.add_argument(
        "--surface",
        choices=("chat", "ui", "responses", "messages"),
        default="chat",
        help="chat: /chat/completions; ui: /api/chat; responses: /responses; "
        "messages: Anthropic's /messages",
    )
    parser.add_argument("--ui", action="store_true", help="the same as --surface ui")
    args = parser.parse_args()
    if args.ui:
        args.surface = "ui"
    print(json.dumps(asyncio.run(main(args))))
