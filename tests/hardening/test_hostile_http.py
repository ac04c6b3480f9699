"""Hostile HTTP clients on the HTTP surfaces and the Responses WebSocket mode.

Each case was a defect: a 500 (or an ``internal`` error event, retryable)
for JSON nested too deeply, a plain-text 404 on one method where the others
get OpenAI's JSON, connections held open forever by a client that sends a
byte a second, and a log filled with plain-text tracebacks by malformed
requests any client can send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest
import websockets
from conftest import TIMEOUT, say
from processes import serving

DEEP = 100_000
NEST = "[" * DEEP + "]" * DEEP
NEST_OBJECTS = '{"a":' * DEEP + "1" + "}" * DEEP


@pytest.fixture
def no_tracebacks(caplog):
    """No ERROR log line (a traceback) while the test runs."""
    caplog.set_level(logging.ERROR)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": say(tokens=2), **fields}


@pytest.mark.parametrize(
    "body",
    [
        NEST,
        NEST_OBJECTS,
        json.dumps(_chat(messages="PLACE")).replace('"PLACE"', NEST),
        json.dumps(_chat(tools="PLACE")).replace('"PLACE"', NEST_OBJECTS),
        json.dumps(_chat(messages=[{"role": "user", "content": "PLACE"}])).replace(
            '"PLACE"', "[" * 2_000 + "]" * 2_000
        ),
    ],
    ids=["arrays", "objects", "in messages", "in tools", "2,000 levels in content"],
)
async def test_deep_json_on_chat_completions_is_a_400_bad_message(server, body, no_tracebacks):
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        response = await http.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "bad_message")
        assert "nested too deeply" in error["message"] or "invalid" in error["message"]
        ok = await http.post("/v1/chat/completions", json=_chat())
        assert ok.status_code == 200


@pytest.mark.parametrize("depth", [2_000, DEEP])
@pytest.mark.parametrize("where", ["instructions", "input", "tools", "top"])
async def test_deep_json_on_responses_is_bad_message_and_the_socket_lives_on(
    server, where, depth, no_tracebacks
):
    nested = "[" * depth + "]" * depth
    create = {"type": "response.create", "model": "fake", "input": "hi"}
    raw = nested if where == "top" else json.dumps({**create, where: "PLACE"})
    raw = raw.replace('"PLACE"', nested)
    url = server.url.replace("/v1/ws", "/v1/responses")
    async with websockets.connect(url, max_size=None, open_timeout=TIMEOUT) as ws:
        await ws.send(raw)
        async with asyncio.timeout(TIMEOUT):
            error = json.loads(await ws.recv())
        assert (error["type"], error["code"], error["status"]) == ("error", "bad_message", 400)
        await ws.send(json.dumps({**create, "input": "fake:" + json.dumps({"tokens": 1})}))
        async with asyncio.timeout(TIMEOUT):
            while (event := json.loads(await ws.recv()))["type"] != "response.completed":
                assert event["type"] != "error", event


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE", "PUT"])
async def test_an_unknown_v1_path_is_openais_json_404_on_every_method(server, method):
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        response = await http.request(method, "/v1/embeddings")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    if method != "HEAD":
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "/v1/chat/completions" in error["message"]


# -- slow and malformed requests, against a `tokenwire serve` process ---------------


async def _dribble(host: str, port: int, head: bytes, count: int) -> tuple[bytes, float]:
    """Send ``head`` then one byte a second ``count`` times (or until closed):
    what came back and when."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head)
        await writer.drain()
        for _ in range(count):
            try:
                answer = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                writer.write(b"a")
                await writer.drain()
                continue
            except ConnectionError:
                return b"", time.monotonic() - started
            return answer, time.monotonic() - started
        return b"(still open)", time.monotonic() - started
    except ConnectionError:
        return b"", time.monotonic() - started
    finally:
        writer.close()


async def test_slow_headers_and_slow_bodies_are_cut_at_their_deadlines(tmp_path, fake):
    config = {
        "model_list": [{"model_name": "fake", "litellm_params": {"model": "openai/fake",
                                                                "api_base": fake.base_url,
                                                                "api_key": "sk-fake"}}],
        "server": {"http_header_timeout": 2.0, "http_body_timeout": 3.0},
    }  # fmt: skip
    async with serving(tmp_path, config) as served:
        host, port = served.http.removeprefix("http://").rsplit(":", 1)
        before = served.fds()
        body_head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        header_head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: "
        results = await asyncio.gather(
            *[_dribble(host, int(port), body_head, 12) for _ in range(10)],
            *[_dribble(host, int(port), header_head, 12) for _ in range(10)],
        )
        for answer, took in results[:10]:
            assert took < 6.5, (answer, took)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
        for answer, took in results[10:]:
            assert took < 5.5, (answer, took)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
        await asyncio.sleep(0.5)
        assert served.fds() <= before + 2
        lines = served.log_lines()
        assert any("request too slow" in line for line in lines), lines[-5:]


MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 20_000 + b"\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
]


async def test_malformed_requests_are_refused_with_one_json_log_line_each(tmp_path, fake):
    config = {"model_list": [{"model_name": "fake", "litellm_params": {
        "model": "openai/fake", "api_base": fake.base_url, "api_key": "sk-fake"}}]}  # fmt: skip
    async with serving(tmp_path, config) as served:
        host, port = served.http.removeprefix("http://").rsplit(":", 1)
        before = len(served.log_lines())
        for raw in MALFORMED:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(raw)
            await writer.drain()
            async with asyncio.timeout(2):  # refused at once, not at a deadline
                answer = await reader.read(4096)
            writer.close()
            assert answer == b"" or answer[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4"), (raw, answer)
        # The server still serves.
        async with httpx.AsyncClient(base_url=served.http, timeout=TIMEOUT) as http:
            assert (await http.get("/healthz")).status_code == 200
        await asyncio.sleep(0.3)
        lines = served.log_lines()[before:]
        records = []
        for line in lines:
            records.append(json.loads(line))  # every line is JSON: no plain-text traceback
        # The GETs are refused by the WebSocket handshake, quietly; the
        # others (and what is not HTTP at all) one line each.
        refused = [r for r in records if r.get("event") == "request refused"]
        assert len(refused) == sum(not raw.startswith(b"GET") for raw in MALFORMED), records
        assert len(records) <= len(MALFORMED), records
        for record in refused:
            assert record["level"] in ("info", "warning"), record
            assert "reason" in record and "peer" in record
            assert "exception" not in record and "Traceback" not in json.dumps(record)
