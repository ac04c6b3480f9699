"""Resume of the AI SDK's chats: ``GET /api/chat/{id}/stream`` after a cut
POST, and ``resume`` frames on ``/api/chat/ws`` after a dropped socket,
over real HTTP and WebSockets (one node; tests/cluster has several)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import websockets
from conftest import PROMPT_CLOSE_S, TIMEOUT, say


def _chat(text: str, chat_id: str, **body: Any) -> dict[str, Any]:
    user = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": chat_id, "messages": [user], "trigger": "submit-message", **body}


def _fake(**scenario: Any) -> str:
    return say(**scenario)[0]["content"]


def _parse(line: str) -> Any:
    payload = line[len("data: ") :]
    return "[DONE]" if payload == "[DONE]" else json.loads(payload)


def _text(chunks: list[Any]) -> str:
    return "".join(c["delta"] for c in chunks if c != "[DONE]" and c["type"] == "text-delta")


async def _cut_after(http: httpx.AsyncClient, body: dict[str, Any], deltas: int) -> list[Any]:
    """POST ``body``, read until ``deltas`` text deltas came, then cut the stream."""
    got: list[Any] = []
    async with http.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                got.append(_parse(line))
                if sum(1 for c in got if c["type"] == "text-delta") >= deltas:
                    break
    return got


async def _replay(http: httpx.AsyncClient, chat_id: str, **headers: str) -> tuple[int, list[Any]]:
    async with http.stream("GET", f"/api/chat/{chat_id}/stream", headers=headers) as response:
        chunks = [_parse(x) async for x in response.aiter_lines() if x.startswith("data: ")]
        return response.status_code, chunks


def _whole(chunks: list[Any], message_id: str, text: str) -> None:
    """``chunks`` are a whole UI message: its own id, every part once, its end."""
    assert chunks[0] == {"type": "start", "messageId": message_id}
    assert chunks[-1] == "[DONE]" and chunks[-2]["type"] == "finish"
    assert _text(chunks) == text
    starts = [c["id"] for c in chunks[:-1] if c["type"] == "text-start"]
    assert len(starts) == len(set(starts)) == 1


async def test_a_cut_post_resumes_whole_then_the_chat_answers_204(start_server, fake):
    text = "".join(f"tok{i} " for i in range(60))
    async with (
        start_server(orphan_timeout=10) as server,
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
    ):
        body = _chat(_fake(tokens=60, interval=0.02), "cut", model="fake", resume=True)
        mark = fake.mark()
        first = await _cut_after(http, body, deltas=5)
        record = await fake.request_after(mark, TIMEOUT)
        await asyncio.sleep(0.2)
        assert not record.disconnected  # it runs on, waiting for a resume
        status, chunks = await _replay(http, "cut")
        assert status == 200
        _whole(chunks, first[0]["messageId"], text)
        assert (await _replay(http, "cut"))[0] == 204  # its finish was received


async def test_an_answer_that_finished_during_the_cut_is_replayed(start_server, fake):
    async with (
        start_server(ui_resume=True) as server,
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
    ):
        body = _chat(_fake(tokens=20, interval=0.01), "away", model="fake")
        mark = fake.mark()
        first = await _cut_after(http, body, deltas=1)
        record = await fake.request_after(mark, TIMEOUT)
        await record.wait_ended(TIMEOUT)
        assert not record.disconnected  # it finished; nobody received its end
        status, chunks = await _replay(http, "away")
        assert status == 200
        _whole(chunks, first[0]["messageId"], "".join(f"tok{i} " for i in range(20)))
        assert (await _replay(http, "away"))[0] == 204


async def test_without_resume_a_cut_cancels_and_nothing_is_resumed(server, fake):
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        assert (await _replay(http, "never"))[0] == 204
        mark = fake.mark()
        await _cut_after(http, _chat(_fake(tokens=500, interval=0.02), "plain", model="fake"), 2)
        record = await fake.request_after(mark, TIMEOUT)
        await record.wait_ended(PROMPT_CLOSE_S)
        assert record.disconnected
        assert (await _replay(http, "plain"))[0] == 204


async def test_a_detached_answer_stops_by_stop_and_by_orphan_timeout(start_server, fake):
    async with (
        start_server(orphan_timeout=0.5) as server,
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
    ):
        long = _fake(tokens=2000, interval=0.02)
        mark = fake.mark()
        await _cut_after(http, _chat(long, "stopped", model="fake", resume=True), deltas=2)
        record = await fake.request_after(mark, TIMEOUT)
        asked = time.monotonic()
        stop = await http.post("/api/chat/stopped/stop")
        assert stop.json() == {"stopped": True}
        await record.wait_ended(PROMPT_CLOSE_S)
        assert record.disconnected, time.monotonic() - asked
        status, chunks = await _replay(http, "stopped")  # its end: never received
        assert status == 200 and chunks[-2] == {"type": "abort", "reason": "cancelled"}
        mark = fake.mark()
        await _cut_after(http, _chat(long, "orphan", model="fake", resume=True), deltas=2)
        record = await fake.request_after(mark, TIMEOUT)
        await record.wait_ended(0.5 + 1.5)  # orphan_timeout, and the sweeper's period
        assert record.disconnected


async def test_a_chat_is_resumed_only_with_the_key_that_made_it(start_server, fake):
    async with (
        start_server(api_keys=["key-a", "key-b"]) as server,
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
    ):
        a = {"Authorization": "Bearer key-a"}
        b = {"Authorization": "Bearer key-b"}
        body = _chat(_fake(tokens=40, interval=0.02), "mine", model="fake", resume=True)
        async with http.stream("POST", "/api/chat", json=body, headers=a) as response:
            async for line in response.aiter_lines():
                if "text-delta" in line:
                    break
        assert (await _replay(http, "mine", **b))[0] == 204
        assert (await http.post("/api/chat/mine/stop", headers=b)).json() == {"stopped": False}
        assert (await _replay(http, "mine"))[0] == 401
        status, chunks = await _replay(http, "mine", **a)
        assert status == 200 and _text(chunks) == "".join(f"tok{i} " for i in range(40))


async def _frames(ws: Any, request_id: str) -> list[dict[str, Any]]:
    """The frames for ``request_id`` up to its ``end`` (or ``no-active``)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while not out or out[-1]["type"] not in ("end", "no-active", "error"):
            frame = json.loads(await ws.recv())
            if frame["requestId"] == request_id:
                out.append(frame)
    return out


async def test_a_dropped_socket_s_answer_runs_on_and_resumes_on_a_new_one(server, fake):
    url = server.url.replace("/v1/ws", "/api/chat/ws")
    chat = _chat(_fake(tokens=80, interval=0.02), "ws-drop", model="fake")
    send = {"type": "send", "requestId": "s", "id": "ws-drop", "trigger": "submit-message",
            "messageId": None, "messages": chat["messages"], "headers": {},
            "body": {"model": "fake"}, "metadata": None}  # fmt: skip
    mark = fake.mark()
    async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
        await ws.send(json.dumps(send))
        seen = []
        while len(seen) < 8:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if frame["type"] == "chunk":
                seen.append(frame)
        ws.transport.abort()  # a network drop, not a close
    record = await fake.request_after(mark, TIMEOUT)
    await asyncio.sleep(0.3)
    assert not record.disconnected
    resume = {"type": "resume", "id": "ws-drop", "headers": {}, "body": {}}
    async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
        await ws.send(json.dumps({**resume, "requestId": "whole"}))
        whole = await _frames(ws, "whole")
        await ws.send(json.dumps({**resume, "requestId": "after", "lastSequence": 3}))
        late = await _frames(ws, "after")
    assert whole[0]["type"] == "start" and whole[-1]["type"] == "end"
    chunks = [f for f in whole if f["type"] == "chunk"]
    assert [f["sequence"] for f in chunks] == list(range(len(chunks)))
    assert [f["chunk"] for f in chunks[:8]] == [f["chunk"] for f in seen]
    assert _text([f["chunk"] for f in chunks]) == "".join(f"tok{i} " for i in range(80))
    assert late[-1] == {"type": "no-active", "requestId": "after"}  # its end went out


async def test_a_resume_with_a_last_sequence_sends_exactly_the_chunks_after_it(server, fake):
    url = server.url.replace("/v1/ws", "/api/chat/ws")
    chat = _chat(_fake(tokens=60, interval=0.02), "ws-after", model="fake")
    send = {"type": "send", "requestId": "s", "id": "ws-after", "trigger": "submit-message",
            "messageId": None, "messages": chat["messages"], "headers": {},
            "body": {"model": "fake"}, "metadata": None}  # fmt: skip
    async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
        await ws.send(json.dumps(send))
        got = 0
        while got < 6:
            got += json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "chunk"
        ws.transport.abort()
    async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
        await ws.send(json.dumps({"type": "resume", "requestId": "r", "id": "ws-after",
                                  "lastSequence": 4, "headers": {}, "body": {}}))  # fmt: skip
        frames = await _frames(ws, "r")
    chunks = [f for f in frames if f["type"] == "chunk"]
    assert frames[0]["type"] == "start" and chunks[0]["sequence"] == 5
    assert [f["sequence"] for f in chunks] == list(range(5, 5 + len(chunks)))


async def test_the_ai_sdk_resumes_a_cut_answer_over_both_transports(server):
    """The npm package ``ai`` as it is: a Chat cut mid-answer, then a new one
    (a reloaded page) calling ``resumeStream()``: one message, whole."""
    from node_parts import node

    ws_url = server.url.replace("/v1/ws", "/api/chat/ws")
    result = await node("ai_resume_check.mjs", server.http, ws_url)
    whole = "".join(f"tok{i} " for i in range(60))
    for kind in ("sse", "ws"):
        got = result[kind]
        assert (got["status"], got["error"]) == ("ready", None), (kind, got)
        assert got["messages"] == 2 and got["id"] == got["cutId"], (kind, str(got)[:3000])
        assert got["parts"] == ["step-start", "text"] and got["text"] == whole, (kind, got)
        assert len(got["cutText"]) < len(whole)
        assert got["after"] == {"status": "ready", "messages": 1}, (kind, got)
