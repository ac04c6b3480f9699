"""A hostile upstream, in its own process, against the server in its own: each
behaviour ends its generation with the right code within its deadline, on
both engines, while ``/healthz`` keeps answering and the server's memory
stays bounded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest
from conftest import TIMEOUT, say
from parts import (
    ENGINES,
    FIRST_TOKEN_TIMEOUT,
    healthz_latency,
    hostile_upstream,
    report,
    server_config,
    serving,
)

from tokenwire.protocol import sanitize

_EVENT = (
    'data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"m",'
    '"choices":[{"index":0,"delta":%s,"finish_reason":%s}]}\n\n'
)
TEXT = _EVENT % ('{"content":"hi"}', "null")
STOP = _EVENT % ("{}", '"stop"')
DONE = "data: [DONE]\n\n"
TIMED_OUT_BY = FIRST_TOKEN_TIMEOUT + 2.0

# name: (scenario, expected code or finish reason, deadline in seconds)
CASES: dict[str, tuple[dict[str, Any], str, float]] = {
    "one 200 MB line": ({"long_line": 200 << 20}, "upstream_error", 5),
    "an HTML page instead of SSE": (
        {"raw": ["<html>" + "x" * 5000 + "</html>"], "content_type": "text/html"},
        "upstream_error",
        3,
    ),
    "a JSON body instead of SSE": (
        {"raw": ['{"choices": []}'], "content_type": "application/json"},
        "upstream_error",
        3,
    ),
    "a 1 GiB gzip bomb as the stream": ({"bomb": 1 << 30}, "upstream_error", 5),
    "a 1 GiB gzip bomb as a 400's body": ({"bomb": 1 << 30, "status": 400}, "upstream_rejected", 5),
    "a 10 MB error body": ({"error_body": 10 << 20, "status": 400}, "upstream_rejected", 5),
    "a cut mid-chunk": ({"raw": [TEXT, TEXT[:30]], "abort": True}, "upstream_error", 3),
    "a clean close without [DONE]": ({"raw": [TEXT, TEXT]}, "upstream_error", 3),
    "keep-alive comments forever": (
        {"raw": [": keep-alive\n\n"] * 2000, "interval": 0.01},
        "upstream_timeout",
        TIMED_OUT_BY,
    ),
    "one byte a second": ({"raw": list(TEXT), "interval": 1.0}, "upstream_timeout", TIMED_OUT_BY),
    "accept, then silence": ({"hang_after": 0}, "upstream_timeout", TIMED_OUT_BY),
    "reset mid-stream": ({"tokens": 10, "cut_after": 3}, "upstream_error", 3),
    "1,000 parallel tool calls": (
        {"tokens": 0, "tool_calls": [{"name": f"f{i}", "arguments": '{"a": 1}'} for i in range(1000)]},
        "tool_calls",
        10,
    ),
    "absurd usage": (
        {
            "raw": [
                TEXT,
                STOP,
                'data: {"choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":7.0,'
                '"total_tokens":123456789012345678901234567890}}\n\n',
                DONE,
            ]
        },
        "stop",
        3,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    async with hostile_upstream(tmp) as (base_url, _):
        config = server_config(base_url)
        for engine in ENGINES:  # a provider that refuses connections
            entry = {"model": "openai/refused", "api_base": "http://127.0.0.1:9/v1", "api_key": "k"}
            info = {"fast_path": "off"} if engine == "litellm" else None
            config["model_list"].append(
                {"model_name": f"{engine}-refused", "litellm_params": entry, "model_info": info}
            )
        async with serving(tmp, config) as server:
            yield server


class _Handle:
    def __init__(self, url: str) -> None:
        self.url = url


async def _outcome(client, gid: str, model: str, scenario: dict[str, Any], deadline: float):
    started = time.perf_counter()
    fields: dict[str, Any] = {"messages": say(**scenario)}
    if "tool_calls" in scenario:
        tools = {c["name"] for c in scenario["tool_calls"]}
        fields["tools"] = [
            {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
            for n in sorted(tools)
        ]
    await client.generate(gid, model=model, **fields)
    result = await client.result(gid, timeout=deadline + TIMEOUT)
    took = time.perf_counter() - started
    outcome = result.error.code if result.error is not None else result.reason
    return result, outcome, took


@pytest.mark.parametrize("engine", ENGINES)
async def test_every_hostile_behaviour_ends_its_generation_in_time(stack, connect, engine):
    rss_before = stack.rss_mb()
    stop = asyncio.Event()
    probe = asyncio.create_task(healthz_latency(stack.http, stop))
    failures = []
    try:
        async with connect(_Handle(stack.url)) as client:
            for n, (name, (scenario, expected, deadline)) in enumerate(CASES.items()):
                result, outcome, took = await _outcome(client, f"c{n}", engine, scenario, deadline)
                report(
                    f"{engine}: {name}", f"{expected} ≤ {deadline:g} s", f"{outcome} {took:.2f} s"
                )
                if outcome != expected or took > deadline:
                    failures.append((name, outcome, round(took, 2)))
                if name == "1,000 parallel tool calls":
                    assert len(result.tool_calls) == 1000
                if name == "absurd usage":
                    assert result.usage is not None
                    assert result.usage.prompt_tokens == 0
                    assert result.usage.total_tokens == sanitize.MAX_COUNT
            result, outcome, took = await _outcome(client, "refused", f"{engine}-refused", {}, 3)
            report(
                f"{engine}: a refused connection", "upstream_error ≤ 3 s", f"{outcome} {took:.2f} s"
            )
            if outcome != "upstream_error" or took > 3:
                failures.append(("refused", outcome, took))
    finally:
        stop.set()
        worst = await probe
    rss_after = stack.rss_mb()
    report(f"{engine}: /healthz slowest answer", "≤ 0.5 s", f"{worst:.3f} s")
    report(f"{engine}: server RSS", "grows ≤ 150 MB", f"{rss_before:.0f} → {rss_after:.0f} MB")
    assert not failures, failures
    assert worst < 0.5, f"/healthz took {worst:.2f} s: the loop was blocked"
    assert rss_after - rss_before < 150


async def test_an_upstream_killed_mid_stream_ends_its_generations(tmp_path, connect):
    async with (
        hostile_upstream(tmp_path, "doomed") as (base_url, upstream),
        serving(tmp_path, server_config(base_url)) as server,
        connect(_Handle(server.url)) as client,
    ):
        for engine in ENGINES:
            await client.generate(engine, model=engine, messages=say(tokens=1000, interval=0.02))
        for engine in ENGINES:
            await client.first_frame(engine)
        started = time.perf_counter()
        os.killpg(upstream.pid, signal.SIGKILL)
        results = {engine: await client.result(engine) for engine in ENGINES}
        took = time.perf_counter() - started
    for engine, result in results.items():
        code = result.error.code if result.error else result.reason
        report(
            f"{engine}: the upstream killed mid-stream",
            "upstream_error ≤ 3 s",
            f"{code} {took:.2f} s",
        )
        assert code == "upstream_error", json.dumps(str(result))
    assert took < 3


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("where", ["the stream", "a 400's body"])
async def test_after_a_gzip_bomb_the_next_generation_streams_and_healthz_never_stalls(
    stack, connect, engine, where
):
    """A 1 GiB gzip bomb on LiteLLM's path left the next generation failing
    and /healthz stalling up to 0.56 s for ≈ 2 s; the native path recovered
    at once."""
    bomb = {"bomb": 1 << 30, **({"status": 400} if where != "the stream" else {})}
    stop = asyncio.Event()
    probe = asyncio.create_task(healthz_latency(stack.http, stop))
    try:
        async with connect(_Handle(stack.url)) as client:
            _, outcome, _ = await _outcome(client, "bomb", engine, bomb, 5)
            assert outcome in ("upstream_error", "upstream_rejected")
            for n in range(3):
                result, outcome, _ = await _outcome(client, f"next{n}", engine, {"tokens": 5}, 3)
                assert outcome == "stop", (n, outcome, result.error)
    finally:
        stop.set()
        worst = await probe
    report(f"{engine}: /healthz after a bomb in {where}", "≤ 0.1 s", f"{worst:.3f} s")
    assert worst < 0.1, f"/healthz took {worst:.3f} s"
