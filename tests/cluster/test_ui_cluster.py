"""The AI SDK's chats on two nodes, one Redis, nginx in front: an answer
cut on one node resumes on the other, also after its node died.

The same real processes as ``test_cluster.py``: two ``tokenwire serve``
nodes (``resume: redis``), the fake upstream in a process of its own,
Debian's ``redis-server`` and ``nginx`` on ephemeral ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import httpx
import websockets
from conftest import TIMEOUT, say
from test_cluster import cluster

TEXT = "".join(f"tok{i} " for i in range(60))


def _chat(chat_id: str, **scenario: Any) -> dict[str, Any]:
    text = say(**scenario)[0]["content"]
    user = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": chat_id, "messages": [user], "model": "fake", "resume": True}


def _parse(line: str) -> Any:
    payload = line[len("data: ") :]
    return "[DONE]" if payload == "[DONE]" else json.loads(payload)


async def _cut(base: str, body: dict[str, Any], deltas: int) -> str:
    """POST ``body`` to ``base``, cut it after ``deltas`` text deltas; its message id."""
    got: list[Any] = []
    async with (
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
        http.stream("POST", "/api/chat", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                got.append(_parse(line))
                if sum(1 for c in got if c["type"] == "text-delta") >= deltas:
                    break
    message_id: str = got[0]["messageId"]
    return message_id


async def _replay(base: str, chat_id: str) -> tuple[int, list[Any]]:
    async with (
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
        http.stream("GET", f"/api/chat/{chat_id}/stream") as response,
    ):
        chunks = [_parse(x) async for x in response.aiter_lines() if x.startswith("data: ")]
        return response.status_code, chunks


def _text(chunks: list[Any]) -> str:
    return "".join(c["delta"] for c in chunks if c != "[DONE]" and c["type"] == "text-delta")


async def test_a_cut_chat_resumes_on_the_other_node_and_through_nginx(tmp_path, redis):
    async with cluster(tmp_path, redis) as c:
        a, b = c.nodes
        front = c.url.replace("ws://", "http://").removesuffix("/v1/ws")
        message_id = await _cut(a.http, _chat("sse", tokens=60, interval=0.02), deltas=5)
        status, chunks = await _replay(b.http, "sse")  # relayed from node A through Redis
        assert status == 200
        assert chunks[0] == {"type": "start", "messageId": message_id}
        assert _text(chunks) == TEXT and chunks[-2]["type"] == "finish"
        for _ in range(2):  # either node, through nginx: the finish was received
            assert (await _replay(front, "sse"))[0] == 204
        # All through nginx: a POST on one node, its resume on whichever.
        message_id = await _cut(front, _chat("front", tokens=60, interval=0.02), deltas=5)
        status, chunks = await _replay(front, "front")
        assert status == 200 and chunks[0] == {"type": "start", "messageId": message_id}
        assert _text(chunks) == TEXT
        # The WebSocket transport: a socket dropped on node A, resumed on B.
        chat = _chat("ws", tokens=60, interval=0.02)
        send = {"type": "send", "requestId": "s", "id": "ws", "trigger": "submit-message",
                "messageId": None, "messages": chat["messages"], "headers": {},
                "body": {"model": "fake"}, "metadata": None}  # fmt: skip
        async with websockets.connect(a.url.replace("/v1/ws", "/api/chat/ws")) as ws:
            await ws.send(json.dumps(send))
            seen = 0
            while seen < 6:
                seen += json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "chunk"
            ws.transport.abort()
        async with websockets.connect(b.url.replace("/v1/ws", "/api/chat/ws")) as ws:
            await ws.send(json.dumps({"type": "resume", "requestId": "r", "id": "ws",
                                      "headers": {}, "body": {}}))  # fmt: skip
            frames = []
            async with asyncio.timeout(TIMEOUT):
                while not frames or frames[-1]["type"] not in ("end", "no-active"):
                    frames.append(json.loads(await ws.recv()))
        chunks = [f["chunk"] for f in frames if f["type"] == "chunk"]
        assert frames[0]["type"] == "start" and frames[-1]["type"] == "end"
        assert [f["sequence"] for f in frames if f["type"] == "chunk"] == list(range(len(chunks)))
        assert _text(chunks) == TEXT


async def test_a_chat_whose_node_died_ends_with_the_retryable_error(tmp_path, redis):
    async with cluster(tmp_path, redis) as c:
        a, b = c.nodes
        await _cut(a.http, _chat("dead", tokens=400, interval=0.02), deltas=5)
        os.killpg(a.process.pid, signal.SIGKILL)
        status, chunks = await _replay(b.http, "dead")
        assert status == 200 and _text(chunks).startswith("tok0 tok1 tok2 tok3 tok4 ")
        error = chunks[-2] if chunks[-1] == "[DONE]" else chunks[-1]
        assert error["type"] == "error", chunks[-3:]
        assert "stopped; retry it" in error["errorText"]
