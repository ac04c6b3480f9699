"""Keep-alive on the SSE surfaces: a model silent before its first token
(a reasoning model thinking) must not let a proxy close the answer.

Every ``sse_keepalive`` seconds of silence the stream gets an SSE comment
(``: keep-alive``); the clients (the official ``openai`` SDK, the AI SDK's
parser) skip comments. Through Debian's nginx with a ``proxy_read_timeout``
shorter than the silence, the whole answer arrives.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from conftest import TIMEOUT, say
from test_cluster import nginx

SILENT = 1.6
"""Seconds the model says nothing before its first token."""


def _scenario(**extra: Any) -> str:
    return say(tokens=3, first_delay=SILENT, **extra)[0]["content"]


async def _lines(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[str]:
    async with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, await response.aread()
        return [line async for line in response.aiter_lines() if line]


async def test_a_silent_model_s_stream_gets_comments_until_its_first_token(start_server):
    chat = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": _scenario()}]}
    user = {"id": "u", "role": "user", "parts": [{"type": "text", "text": _scenario()}]}
    ui = {"id": "keep", "messages": [user], "model": "fake"}
    async with (
        start_server(sse_keepalive=0.4) as server,
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
    ):
        for path, body in (("/v1/chat/completions", chat), ("/api/chat", ui)):
            lines = await _lines(http, path, body)
            first = next(i for i, line in enumerate(lines) if line.startswith("data:"))
            assert set(lines[:first]) == {": keep-alive"} and first >= 3, (path, lines[:5])
            assert lines[-1] == "data: [DONE]"
            assert ": keep-alive" not in lines[first:], path  # the tokens came fast after
    async with (
        start_server(sse_keepalive=30) as server,
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
    ):
        lines = await _lines(http, "/v1/chat/completions", chat)
        assert lines[0].startswith("data:")  # silent for less than sse_keepalive: none


async def test_the_openai_sdk_reads_a_kept_alive_stream_whole(start_server):
    from openai import AsyncOpenAI

    async with start_server(sse_keepalive=0.4) as server:
        client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key="none", max_retries=0)
        stream = await client.chat.completions.create(
            model="fake", stream=True, messages=[{"role": "user", "content": _scenario()}]
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
    assert text == "tok0 tok1 tok2 "


async def test_through_nginx_shorter_than_the_silence_the_answer_arrives(start_server, tmp_path):
    body = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": _scenario()}]}
    for keepalive, status in ((0.3, 200), (30, 504)):
        async with start_server(sse_keepalive=keepalive) as server:
            port = server.port
            (tmp_path / str(keepalive)).mkdir()
            with nginx(tmp_path / str(keepalive), [port, port], proxy_read_timeout="1s") as url:
                base = url.replace("ws://", "http://").removesuffix("/v1/ws")
                async with (
                    httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http,
                    http.stream("POST", "/v1/chat/completions", json=body) as response,
                ):
                    lines = [line async for line in response.aiter_lines() if line]
        assert response.status_code == status, (keepalive, lines[-3:])
        if status == 200:  # the whole answer, not a stream cut by nginx
            data = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
            choices = [c["choices"][0]["delta"] for c in data if c["choices"]]
            assert "".join(d.get("content") or "" for d in choices) == "tok0 tok1 tok2 "
            assert lines[-1] == "data: [DONE]"
