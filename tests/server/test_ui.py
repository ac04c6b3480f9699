"""The AI SDK's UI message stream at ``POST /api/chat``, over real HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from conftest import PROMPT_CLOSE_S, TIMEOUT, say


def _chat(text: str, chat_id: str = "chat-1", **body: Any) -> dict[str, Any]:
    user = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": chat_id, "messages": [user], "trigger": "submit-message", **body}


def _fake(**scenario: Any) -> str:
    return say(**scenario)[0]["content"]


async def _events(response: httpx.Response) -> list[Any]:
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append("[DONE]" if payload == "[DONE]" else json.loads(payload))
    return events


async def test_an_answer_streams_as_ui_message_chunks_with_the_sdks_headers(server, fake):
    body = _chat(_fake(tokens=3, reasoning=2), model="fake", maxOutputTokens=50)
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
        http.stream("POST", "/api/chat", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        events = await _events(response)
    types = [e if e == "[DONE]" else e["type"] for e in events]
    assert types[:2] == ["start", "start-step"] and types[-3:] == [
        "finish-step",
        "finish",
        "[DONE]",
    ]
    assert "reasoning-delta" in types and "text-delta" in types
    text = "".join(e["delta"] for e in events[:-1] if e["type"] == "text-delta")
    assert text == "tok0 tok1 tok2 "
    finish = events[-2]
    assert finish["finishReason"] == "stop"
    assert finish["messageMetadata"]["usage"]["outputTokens"] > 0
    assert fake.requests[-1].body["max_tokens"] == 50


async def test_refusals_are_http_errors_and_unknown_fields_are_named(server):
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        refused = await http.post("/api/chat", json=_chat(_fake(status=429, retry_after="2"),
                                                           model="fake"))  # fmt: skip
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
        unknown = await http.post("/api/chat", json=_chat("hi", model="fake", topK=3))
        assert unknown.status_code == 400 and "`topK`" in unknown.json()["error"]["message"]
        model = await http.post("/api/chat", json=_chat("hi", model="gpt-9"))
        assert model.status_code == 404


async def test_stop_cancels_the_chats_answer_and_closes_its_upstream(server, fake):
    body = _chat(_fake(tokens=500, interval=0.02), chat_id="stop-me", model="fake")
    mark = fake.mark()
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
        http.stream("POST", "/api/chat", json=body) as response,
    ):
        record = await fake.request_after(mark, TIMEOUT)
        lines = response.aiter_lines()
        async for line in lines:
            if '"text-delta"' in line:
                break
        stopped = await http.post("/api/chat/stop-me/stop", json={"activeStreamId": None})
        assert stopped.status_code == 200 and stopped.json() == {"stopped": True}
        rest = [json.loads(x[6:]) if x != "data: [DONE]" else "[DONE]"
                async for x in lines if x.startswith("data: ")]  # fmt: skip
    assert rest[-2] == {"type": "abort", "reason": "cancelled"} and rest[-1] == "[DONE]"
    await record.wait_ended(PROMPT_CLOSE_S)
    assert record.disconnected


async def test_one_message_continues_the_history_the_server_kept(server, fake):
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        first = await http.post("/api/chat", json=_chat(_fake(tokens=2), chat_id="kept",
                                                        model="fake"))  # fmt: skip
        assert first.status_code == 200
        mark = fake.mark()
        user = {"id": "u2", "role": "user", "parts": [{"type": "text", "text": _fake(tokens=1)}]}
        second = await http.post("/api/chat", json={"id": "kept", "message": user, "model": "fake"})
        assert second.status_code == 200
        request = await fake.request_after(mark, TIMEOUT)
    roles = [m["role"] for m in request.body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert request.body["messages"][1]["content"] == "tok0 tok1 "


async def test_a_client_leaving_its_post_cancels_at_once(server, fake):
    body = _chat(_fake(tokens=500, interval=0.02), chat_id="leaver", model="fake")
    mark = fake.mark()
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
        http.stream("POST", "/api/chat", json=body) as response,
    ):
        record = await fake.request_after(mark, TIMEOUT)
        async for line in response.aiter_lines():
            if '"text-delta"' in line:
                break
    await record.wait_ended(PROMPT_CLOSE_S)
    assert record.disconnected


async def test_the_ai_sdks_chat_streams_tools_and_errors_through_the_default_transport(server):
    """``ai`` (npm, pinned in tests/node/package.json) as apps use it:
    ``AbstractChat`` (what ``useChat`` wraps) with ``DefaultChatTransport``."""
    from node_parts import node

    result = await node("ai_check.mjs", server.http)
    text = result["text"]
    assert (text["status"], text["error"], text["role"]) == ("ready", None, "assistant")
    assert text["text"] == "tok0 tok1 tok2 " and text["reasoning"]
    assert text["parts"] == ["step-start", "reasoning", "text"]
    assert text["metadata"]["usage"]["outputTokens"] > 0
    tool = result["tool"]
    assert (tool["status"], tool["error"]) == ("ready", None)
    assert tool["calls"] == [{"name": "get_weather", "input": {"city": "Paris"}}]
    # One assistant message: the call, its output, and the reply to it.
    assert tool["messages"] == 2
    assert "tool-get_weather" in tool["parts"] and tool["parts"][-1] == "text"
    assert "sunny, 21 °C" in tool["text"]
    assert result["rateLimited"]["status"] == "error"
    assert "429" in result["rateLimited"]["error"]
    assert result["failedMidway"]["status"] == "error"
    assert result["failedMidway"]["error"]


async def test_cors_lets_a_listed_origin_call_every_http_surface(start_server):
    app = "http://localhost:3000"
    async with (
        start_server(allowed_origins=[app]) as handle,
        httpx.AsyncClient(base_url=handle.http, timeout=TIMEOUT) as http,
    ):
        for path in ("/api/chat", "/v1/chat/completions", "/v1/models", "/api/chat/c/stop"):
            preflight = await http.options(
                path,
                headers={"Origin": app, "Access-Control-Request-Method": "POST",
                         "Access-Control-Request-Headers": "authorization, content-type"},
            )  # fmt: skip
            assert preflight.status_code == 204, path
            assert preflight.headers["Access-Control-Allow-Origin"] == app
            assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
            assert "authorization" in preflight.headers["Access-Control-Allow-Headers"]
        body = _chat(_fake(tokens=2), model="fake")
        async with http.stream("POST", "/api/chat", json=body, headers={"Origin": app}) as stream:
            assert stream.headers["Access-Control-Allow-Origin"] == app
            assert (await _events(stream))[-1] == "[DONE]"
        models = await http.get("/v1/models", headers={"Origin": app})
        assert models.headers["Access-Control-Allow-Origin"] == app
        other = "http://evil.example"
        refused = await http.options("/api/chat", headers={"Origin": other})
        assert "Access-Control-Allow-Origin" not in refused.headers
        post = await http.post("/api/chat", json=body, headers={"Origin": other})
        assert post.status_code == 403 and "Access-Control-Allow-Origin" not in post.headers


async def test_without_allowed_origins_there_are_no_cors_headers(server):
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        origin = {"Origin": "http://localhost:3000"}
        preflight = await http.options("/api/chat", headers=origin)
        assert "Access-Control-Allow-Origin" not in preflight.headers
        answer = await http.post("/api/chat", json=_chat(_fake(tokens=1), model="fake"),
                                 headers=origin)  # fmt: skip
        assert answer.status_code == 200
        assert "Access-Control-Allow-Origin" not in answer.headers


async def test_the_ai_sdks_websocket_transport_streams_stops_and_checks_keys(start_server):
    """``ai``'s ``WebSocketChatTransport`` at ``/api/chat/ws``, its key in its
    frames' headers (as browsers must send it)."""
    from node_parts import node

    async with start_server(api_keys=["sk-right"]) as handle:
        url = handle.url.replace("/v1/ws", "/api/chat/ws")
        result = await node("ai_ws_check.mjs", url, "sk-right")
    text = result["text"]
    assert (text["status"], text["error"]) == ("ready", None)
    assert text["text"] == "tok0 tok1 tok2 " and "reasoning" in text["parts"]
    assert text["metadata"]["usage"]["outputTokens"] > 0
    tool = result["tool"]
    assert tool["calls"] == [{"name": "get_weather", "input": {"city": "Paris"}}]
    assert tool["messages"] == 2 and "sunny, 21 °C" in tool["text"]
    stopped = result["stopped"]
    assert stopped["status"] == "ready" and stopped["text"].startswith("tok0")
    assert len(stopped["text"]) < len("tok0 ") * 500
    assert result["rateLimited"]["status"] == "error" and "429" in result["rateLimited"]["error"]
    assert result["wrongKey"]["status"] == "error"
    assert "API key" in result["wrongKey"]["error"]


async def test_the_websocket_transports_frames_resume_abort_and_no_active(server, fake):
    import websockets

    url = server.url.replace("/v1/ws", "/api/chat/ws")
    chat = _chat(_fake(tokens=300, interval=0.01), chat_id="ws-chat", model="fake")
    send = {"type": "send", "requestId": "r1", "id": "ws-chat", "trigger": "submit-message",
            "messageId": None, "messages": chat["messages"], "headers": {},
            "body": {"model": "fake"}, "metadata": None}  # fmt: skip
    async with websockets.connect(url, open_timeout=TIMEOUT) as ws:

        async def frame() -> dict[str, Any]:
            async with asyncio.timeout(TIMEOUT):
                return json.loads(await ws.recv())

        await ws.send(json.dumps({"type": "resume", "requestId": "r0", "id": "none",
                                  "lastSequence": None, "headers": {}, "body": {}}))  # fmt: skip
        assert await frame() == {"type": "no-active", "requestId": "r0"}
        mark = fake.mark()
        await ws.send(json.dumps(send))
        assert await frame() == {"type": "start", "requestId": "r1"}
        first = [await frame() for _ in range(6)]
        assert [f["sequence"] for f in first] == list(range(6))
        assert first[0]["chunk"] == {"type": "start", "messageId": first[0]["chunk"]["messageId"]}
        await ws.send(json.dumps({"type": "resume", "requestId": "r2", "id": "ws-chat",
                                  "lastSequence": 3, "headers": {}, "body": {}}))  # fmt: skip
        resumed: list[dict[str, Any]] = []
        while not resumed or resumed[-1]["type"] != "start":
            got = await frame()
            if got["requestId"] == "r2":
                resumed.append(got)
        replay = [await frame() for _ in range(3)]
        r2 = [f for f in replay if f["requestId"] == "r2"]
        assert r2 and r2[0]["sequence"] == 4  # exactly the chunks after lastSequence
        record = await fake.request_after(mark, TIMEOUT)
        await ws.send(json.dumps({"type": "abort", "requestId": "r1"}))
        ends: dict[str, list[dict[str, Any]]] = {"r1": [], "r2": []}
        while not all(e and e[-1]["type"] == "end" for e in ends.values()):
            got = await frame()
            ends[got["requestId"]].append(got)
        chunks = [f["chunk"]["type"] for f in ends["r1"] if f["type"] == "chunk"]
        assert chunks[-1] == "abort"
        await record.wait_ended(PROMPT_CLOSE_S)
        assert record.disconnected


async def test_the_kept_chats_are_bounded_by_count_and_by_bytes(start_server):
    def message(scenario: dict[str, Any]) -> dict[str, Any]:
        return {"id": "u", "role": "user", "parts": [{"type": "text", "text": _fake(**scenario)}]}

    async def roles(http: httpx.AsyncClient, chat: str) -> str:
        body = {"id": chat, "message": message({"echo_roles": True}), "model": "fake"}
        async with http.stream("POST", "/api/chat", json=body) as response:
            events = await _events(response)
        return "".join(e["delta"] for e in events if e != "[DONE]" and e["type"] == "text-delta")

    for settings in ({"max_ui_chats": 2}, {"max_total_history_bytes": 250}):
        async with (
            start_server(**settings) as handle,
            httpx.AsyncClient(base_url=handle.http, timeout=TIMEOUT) as http,
        ):
            for chat in ("a", "b", "c"):
                body = {"id": chat, "messages": [message({"tokens": 2})], "model": "fake"}
                assert (await http.post("/api/chat", json=body)).status_code == 200
            assert await roles(http, "c") == "user assistant user ", settings
            assert await roles(http, "a") == "user ", settings  # the oldest, forgotten
