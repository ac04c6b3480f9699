"""``tokenwire serve --workers 2`` on ``resume: memory``: resume and
``previous_response_id`` work whichever worker the kernel hands the new
connection to, and a worker that dies loses only its own sessions.

Real processes: the server with its two workers, and the fake upstream in a
process of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets
from conftest import TIMEOUT, say
from processes import Served, hostile_upstream, serving

from tokenwire.client import ConnectionLost, connect

DROPS = 50
CHAINS = 50


@contextlib.asynccontextmanager
async def two_workers(tmp: Path, **server: Any) -> AsyncIterator[Served]:
    async with hostile_upstream(tmp) as (base_url, _):
        params = {"model": "openai/fake-model", "api_base": base_url, "api_key": "sk-test"}
        config = {
            "model_list": [{"model_name": "fake", "litellm_params": params}],
            "server": {"resume": "memory", **server},
        }
        async with serving(tmp, config, workers=2) as node:
            yield node


def _events(node: Served, event: str) -> list[dict[str, Any]]:
    """The log's ``event`` lines (the last line may be half written: skipped)."""
    found = []
    for line in node.log_lines():
        with contextlib.suppress(json.JSONDecodeError):
            if line.startswith("{") and (parsed := json.loads(line)).get("event") == event:
                found.append(parsed)
    return found


async def _dropped_and_resumed(url: str) -> tuple[str, int, str]:
    """A generation whose connection is cut mid-answer; the client resumes
    on a fresh connection. Its text, resumes, and the worker that made it."""
    async with connect(url, reconnect=True) as client:
        gen = await client.generate(model="fake", messages=say(tokens=40, interval=0.02))
        seen = 0
        async for _ in gen:
            seen += 1
            if seen == 5:
                assert client._drop()
        result = await gen.result()
        assert client._token is not None
        return result.content, client.resumes, client._token.partition(".")[0]


async def test_drops_resume_whichever_worker_takes_the_new_connection(tmp_path):
    async with two_workers(tmp_path) as node:
        results = await asyncio.gather(*(_dropped_and_resumed(node.url) for _ in range(DROPS)))
        expected = "".join(f"tok{i} " for i in range(40))
        assert [content for content, _, _ in results] == [expected] * DROPS
        assert all(resumes == 1 for _, resumes, _ in results)
        assert {worker for _, _, worker in results} == {"0", "1"}
        # About half the resumes landed on the other worker and were piped.
        piped = _events(node, "session piped")
        assert 0 < len(piped) < DROPS


async def _response(url: str, previous: str | None) -> dict[str, Any]:
    """One ``response.create`` on a fresh connection; its last event."""
    async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
        event: dict[str, Any] = {
            "type": "response.create",
            "model": "fake",
            "input": "fake:" + json.dumps({"echo_roles": True}),
        }
        if previous is not None:
            event["previous_response_id"] = previous
        await ws.send(json.dumps(event))
        async with asyncio.timeout(TIMEOUT):
            while True:
                last = json.loads(await ws.recv())
                if last["type"] in ("response.completed", "response.failed", "error"):
                    return last


async def _chain(url: str) -> list[str]:
    """Three responses, each continuing the last from a fresh connection:
    the text of each (the roles its request carried)."""
    texts, previous = [], None
    for _ in range(3):
        last = await _response(url, previous)
        assert last["type"] == "response.completed", last
        previous = last["response"]["id"]
        texts.append(last["response"]["output"][0]["content"][0]["text"])
    return texts


async def test_response_chains_continue_on_either_worker(tmp_path):
    async with two_workers(tmp_path) as node:
        url = node.url.replace("/v1/ws", "/v1/responses")
        chains = await asyncio.gather(*(_chain(url) for _ in range(CHAINS)))
        assert (
            chains
            == [["user ", "user assistant user ", "user assistant user assistant user "]] * CHAINS
        )


async def _stream(gen: Any, streaming: asyncio.Event) -> tuple[str, float]:
    """Read ``gen`` to its end: how it ended (``finish`` or the resume
    failure) and when. ``streaming`` is set at its first event."""
    try:
        async for _ in gen:
            streaming.set()
        await gen.result()
        outcome = "finish"
    except ConnectionLost as exc:
        outcome = f"lost:{exc.resume_failure}"
    return outcome, time.monotonic()


async def test_a_killed_worker_loses_only_its_sessions(tmp_path):
    async with two_workers(tmp_path) as node:
        pids = {e["worker"]: e["pid"] for e in _events(node, "listening")}
        clients = [connect(node.url, reconnect=True) for _ in range(12)]
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            owners = [client._token.partition(".")[0] for client in clients]  # type: ignore[union-attr]
            assert set(owners) == {"0", "1"}
            streaming = [asyncio.Event() for _ in clients]
            long = say(tokens=150, interval=0.02)
            gens = [await client.generate(model="fake", messages=long) for client in clients]
            readers = [
                asyncio.create_task(_stream(gen, event))
                for gen, event in zip(gens, streaming, strict=True)
            ]
            async with asyncio.timeout(TIMEOUT):
                for event in streaming:
                    await event.wait()
            killed = time.monotonic()
            os.kill(pids[0], signal.SIGKILL)
            ended = await asyncio.gather(*readers)
        for owner, (outcome, when) in zip(owners, ended, strict=True):
            if owner == "0":  # the client resumed, and heard its session is gone
                assert outcome == "lost:unknown"
                assert when - killed < 5
            else:
                assert outcome == "finish"  # the other worker's sessions never noticed
