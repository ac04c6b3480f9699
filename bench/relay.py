"""The floor of a relayed token's CPU, beside tokenwire's, in one run.

    .venv/bin/python bench/relay.py [--streams 200] [--tokens 250] [--runs 3]

The reference relay (``--serve PORT --upstream URL``, started by this script
as a process of its own) is the least a WebSocket gateway can do per token:
raw asyncio protocols, no framework. For each ``generate`` it opens a
connection to the upstream, and for each SSE line the upstream sends it
reads the line, takes the delta's text out of its JSON, and writes one
WebSocket frame (``token``; ``finish`` at ``[DONE]``). No validation, no
limits, no resume, no logs, no metrics: the floor, not a product.

Both it and ``tokenwire serve`` (the native path) are loaded by the same
``tokenwire loadtest`` (two client processes) with ``--streams`` concurrent
streams of ``--tokens`` tokens at 50 tokens/s from one fake upstream, in
turn, ``--runs`` times; the best run of each is printed: CPU per token
(µs, the server's processes only), gap p99, and tokenwire ÷ floor.
``--workers N`` runs ``tokenwire serve --workers N`` (the reference relay
stays one process: with ``--streams 1000`` it shows whether one process of
it could carry what two of tokenwire's carry).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import msgspec

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PACE = 50


def ws_frame(payload: bytes, binary: bool) -> bytes:
    """One unmasked WebSocket frame, as a server sends it."""
    head = 0x82 if binary else 0x81
    n = len(payload)
    if n < 126:
        return bytes((head, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", head, 126, n) + payload
    return struct.pack("!BBQ", head, 127, n) + payload


class Upstream(asyncio.Protocol):
    """One streamed chat completion: each SSE ``data:`` line → one frame."""

    def __init__(self, client: Client, gid: str, body: bytes, host: str, path: str) -> None:
        self.client, self.gid, self.seq = client, gid, 0
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        self.buffer = b""
        self.headers_done = False
        self.texts: list[str] = []

    def connection_made(self, transport: Any) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.headers_done:
            _, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.headers_done, self.buffer = True, rest
        # Chunked or not, SSE lines start with "data: "; chunk-size lines do not.
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].rstrip(b"\r")
            if data == b"[DONE]":
                self.client.send(
                    {"type": "finish", "id": self.gid, "seq": self.seq, "reason": "stop",
                     "content": "".join(self.texts), "tool_calls": [], "usage": None}
                )  # fmt: skip
                continue
            choices = json.loads(data).get("choices")
            text = choices[0]["delta"].get("content") if choices else None
            if text:
                self.texts.append(text)
                self.client.send({"type": "token", "id": self.gid, "seq": self.seq, "text": text})
                self.seq += 1


class Client(asyncio.Protocol):
    """A WebSocket session: the handshake, ``ready``, then ``generate``s."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path.rstrip("/") + "/chat/completions"
        self.buffer = b""
        self.open = False
        self.binary = False
        self.transport: Any = None
        self.connecting: set[asyncio.Task[Any]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, message: dict[str, Any]) -> None:
        payload = (msgspec.msgpack if self.binary else msgspec.json).encode(message)
        self.transport.write(ws_frame(payload, self.binary))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.open:
            head, sep, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = head
                return
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
            }
            accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + GUID).digest())
            offered = [p.strip() for p in headers.get(b"sec-websocket-protocol", b"").split(b",")]
            protocol = (
                b"tokenwire.v1.msgpack" if b"tokenwire.v1.msgpack" in offered else b"tokenwire.v1"
            )
            self.binary = protocol.endswith(b"msgpack")
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: " + protocol
                + b"\r\n\r\n"
            )  # fmt: skip
            self.open = True
            self.send(
                {"type": "ready", "session": "s", "protocol": "tokenwire.v1", "models": ["fake"],
                 "limits": {"max_generations": 1024, "max_message_bytes": 1 << 20}}
            )  # fmt: skip
        while len(self.buffer) >= 6:
            opcode, n = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
            at = 2
            if n == 126:
                (n,), at = struct.unpack_from("!H", self.buffer, 2), 4
            elif n == 127:
                (n,), at = struct.unpack_from("!Q", self.buffer, 2), 10
            if len(self.buffer) < at + 4 + n:
                return
            mask = self.buffer[at : at + 4]
            masked = self.buffer[at + 4 : at + 4 + n]
            self.buffer = self.buffer[at + 4 + n :]
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(masked))
            if opcode == 8:
                self.transport.close()
                return
            if opcode in (1, 2):
                self.received(payload)

    def received(self, payload: bytes) -> None:
        message = (msgspec.msgpack if self.binary else msgspec.json).decode(payload)
        if message.get("type") != "generate":
            return
        body = json.dumps(
            {"model": "fake-model", "messages": message["messages"], "stream": True}
        ).encode()
        upstream = Upstream(self, message["id"], body, f"{self.host}:{self.port}", self.path)
        loop = asyncio.get_running_loop()
        connecting = loop.create_task(
            loop.create_connection(lambda: upstream, self.host, self.port)
        )
        self.connecting.add(connecting)
        connecting.add_done_callback(self.connecting.discard)


async def serve(port: int, upstream: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream), "127.0.0.1", port, backlog=4096)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


# -- the comparison ------------------------------------------------------------


async def start_reference(upstream: str) -> tuple[asyncio.subprocess.Process, str]:
    from run import free_port

    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(port), "--upstream", upstream,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.readline(), 10)
    return process, f"ws://127.0.0.1:{port}/v1/ws"


async def compare(args: argparse.Namespace) -> str:
    from core import start_server, write_config
    from run import measured, ws_load

    from tokenwire.server.engines.fake_upstream import FakeUpstream

    prompt = "fake:" + json.dumps({"tokens": args.tokens, "interval": 1 / PACE})
    rows: dict[str, list[dict[str, Any]]] = {"reference relay": [], "tokenwire": []}
    async with FakeUpstream() as fake:
        tmp = Path(tempfile.mkdtemp())
        config = write_config(tmp / "relay.yaml", fake)
        tokenwire, tw_url, _ = await start_server(config, args.workers)
        reference, ref_url = await start_reference(fake.base_url)
        servers = {"reference relay": (reference, ref_url), "tokenwire": (tokenwire, tw_url)}
        try:
            for _ in range(args.runs):
                for name, (process, url) in servers.items():
                    load = ws_load(url, args.streams, prompt, deadline=120, ramp=1.0)
                    rows[name].append(await measured(process.pid, load))
        finally:
            for process, _ in servers.values():
                process.terminate()
                await process.wait()

    def best(name: str) -> dict[str, Any]:
        return min(rows[name], key=lambda r: r.get("gateway_cpu_s_per_1k_tokens", 1e9))

    floor, ours = best("reference relay"), best("tokenwire")
    lines = [
        f"# relay floor: {args.streams} streams × {args.tokens} tokens at {PACE} tokens/s, "
        f"best of {args.runs}, tokenwire --workers {args.workers}",
        "",
        f"{'':28}{'reference relay':>18}{'tokenwire':>12}",
    ]
    for label, key, scale in (
        ("CPU µs per token", "gateway_cpu_s_per_1k_tokens", 1000.0),
        ("gap p99 ms", "inter_token_ms", None),
        ("tokens", "tokens", None),
    ):
        values = []
        for report in (floor, ours):
            value = report.get(key)
            if isinstance(value, dict):
                value = value.get("p99")
            values.append(float(value or 0) * (scale or 1))
        lines.append(f"{label:28}{values[0]:>18.1f}{values[1]:>12.1f}")
    ratio = ours["gateway_cpu_s_per_1k_tokens"] / floor["gateway_cpu_s_per_1k_tokens"]
    lines.append(f"{'tokenwire ÷ floor':28}{'':>18}{ratio:>12.2f}")
    for name in rows:
        runs = ", ".join(
            f"{1000 * r.get('gateway_cpu_s_per_1k_tokens', 0):.1f}" for r in rows[name]
        )
        lines.append(f"  {name} runs (µs/token): {runs}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int, help="run the reference relay on this port")
    parser.add_argument("--upstream", help="the upstream's base URL (with --serve)")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=250)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="tokenwire serve --workers")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.upstream))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        print(asyncio.run(compare(args)))
