"""Lanes on the Responses API's WebSocket mode (``stream_id``), spoken by the
official ``openai`` SDK's ``client.responses.connect()``: FIFO within a
lane, lanes in parallel, every event echoing its lane, forks across lanes,
and ``response.cancel``."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import openai
import pydantic
import pytest
from conftest import TIMEOUT, ServerHandle
from openai.types.responses import ResponsesServerEvent

EVENT = pydantic.TypeAdapter(ResponsesServerEvent)
TERMINAL = ("response.completed", "response.incomplete", "response.failed", "error")


def scripted(**scenario: Any) -> str:
    return "fake:" + json.dumps(scenario)


@pytest.fixture
async def connection(server: ServerHandle) -> Any:
    client = openai.AsyncOpenAI(base_url=f"{server.http}/v1", api_key="sk", max_retries=0)
    async with client.responses.connect() as connection:
        yield connection
    await client.close()


async def collect(connection: Any, ends: int) -> list[dict[str, Any]]:
    """Events (each validated by the SDK's models) until ``ends`` terminal ones."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while sum(e["type"] in TERMINAL for e in events) < ends:
            raw = json.loads(await connection.recv_bytes())
            EVENT.validate_python(raw)
            events.append(raw)
    return events


def by_lane(events: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    lanes: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        lanes[event.get("stream_id")].append(event)
    return lanes


async def test_two_lanes_stream_at_once_each_event_echoing_its_lane(connection):
    slow = scripted(tokens=30, interval=0.02)
    await connection.response.create(model="fake", input=slow, stream_id="a")
    await connection.response.create(model="fake", input=slow, stream_id="b")
    events = await collect(connection, 2)
    lanes = by_lane(events)
    assert set(lanes) == {"a", "b"}
    for lane in ("a", "b"):
        mine = lanes[lane]
        assert [e["sequence_number"] for e in mine] == list(range(len(mine)))
        assert mine[-1]["type"] == "response.completed"
        text = mine[-1]["response"]["output"][0]["content"][0]["text"]
        assert text == "".join(f"tok{i} " for i in range(30))
    first_end = next(i for i, e in enumerate(events) if e["type"] in TERMINAL)
    assert {e["stream_id"] for e in events[:first_end]} == {"a", "b"}  # interleaved


async def test_a_lane_runs_its_responses_in_order_and_a_fork_crosses_lanes(connection, fake):
    await connection.response.create(model="fake", input=scripted(tokens=20, interval=0.01),
                                      stream_id="a")  # fmt: skip
    await connection.response.create(model="fake", input=scripted(tokens=2), stream_id="a")
    events = await collect(connection, 2)
    starts = [i for i, e in enumerate(events) if e["type"] == "response.created"]
    ends = [i for i, e in enumerate(events) if e["type"] == "response.completed"]
    assert starts[1] > ends[0]  # FIFO: the second waited for the first
    first = events[ends[0]]["response"]
    await connection.response.create(
        model="fake", input=scripted(echo_roles=True), stream_id="b",
        previous_response_id=first["id"],
    )  # fmt: skip
    (fork,) = [e for e in await collect(connection, 1) if e["type"] == "response.completed"]
    assert fork["stream_id"] == "b"
    assert fork["response"]["output"][0]["content"][0]["text"] == "user assistant user "


async def test_a_cancel_ends_one_response_and_leaves_the_other_lanes(connection, fake):
    await connection.response.create(model="fake", input=scripted(tokens=2000, interval=0.01),
                                      stream_id="long")  # fmt: skip
    await connection.response.create(model="fake", input=scripted(tokens=30, interval=0.02),
                                      stream_id="short")  # fmt: skip
    created: dict[str, str] = {}
    async with asyncio.timeout(TIMEOUT):
        while "long" not in created:
            event = json.loads(await connection.recv_bytes())
            if event["type"] == "response.created":
                created[event["stream_id"]] = event["response"]["id"]
    await connection.send({"type": "response.cancel", "response_id": created["long"]})
    await connection.send({"type": "response.cancel", "response_id": "resp_none"})
    events = await collect(connection, 3)
    terminal = {e.get("stream_id"): e for e in events if e["type"] in TERMINAL}
    assert terminal["long"]["type"] == "response.incomplete"
    assert terminal["short"]["type"] == "response.completed"
    unknown = [e for e in events if e["type"] == "error"]
    assert unknown[0]["code"] == "response_not_found"
    await asyncio.sleep(0.2)
    cancelled = [r for r in fake.requests if "2000" in json.dumps(r.body["messages"])]
    assert cancelled and cancelled[-1].disconnected
