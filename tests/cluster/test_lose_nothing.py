"""Resume loses nothing: ``tokenwire loadtest --disconnect-rate 1`` against
every way of running tokenwire, with real processes.

Each run opens 20 sessions of 2 generations (≈ 1.8 s each, paced by the fake
upstream in a process of its own) and cuts each session's TCP connection
about once a second; the client resumes on a fresh connection and every
frame is checked for holes and duplicates. Three runs per setup: one node on
``resume: redis``, two nodes behind nginx on one Redis, one node on
``resume: memory``, and ``--workers 2`` on ``resume: memory``. A generation
that could not be resumed is a failure of the run (``resume_failed:gap``),
so an answer lost anywhere fails the test.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from processes import hostile_upstream, loadtest, serving
from test_cluster import cluster

RUNS = 3
PROMPT = "fake:" + json.dumps({"tokens": 60, "interval": 0.03})


def _config(base_url: str, **server: Any) -> dict[str, Any]:
    params = {"model": "openai/fake-model", "api_base": base_url, "api_key": "sk-test"}
    return {"model_list": [{"model_name": "fake", "litellm_params": params}], "server": server}


@contextlib.asynccontextmanager
async def setup(name: str, tmp: Path, redis: Any) -> AsyncIterator[str]:
    """The URL a client connects to, for the setup called ``name``."""
    if name == "redis, two nodes behind nginx":
        async with cluster(tmp, redis) as c:
            yield c.url
        return
    redis.cli("FLUSHALL")
    server: dict[str, Any] = {"resume": "memory"}
    workers = 1
    if name == "redis, one node":
        server = {"resume": "redis", "redis_url": redis.url}
    elif name == "memory, --workers 2":
        workers = 2
    async with (
        hostile_upstream(tmp) as (base_url, _),
        serving(tmp, _config(base_url, **server), workers=workers) as node,
    ):
        yield node.url


@pytest.mark.parametrize(
    "name",
    ["redis, one node", "redis, two nodes behind nginx", "memory, one node", "memory, --workers 2"],
)
async def test_drops_every_second_lose_no_answer(name, tmp_path, redis):
    async with setup(name, tmp_path, redis) as url:
        for _ in range(RUNS):
            status, report = await loadtest(
                url, "--model", "fake", "--sessions", "20", "--generations", "2",
                "--prompt", PROMPT, "--disconnect-rate", "1",
            )  # fmt: skip
            assert report["resume_failures"] == {}, report
            assert report["generations_failed"] == {}, report
            assert report["violations"] == 0, report["violation_examples"]
            assert report["generations_completed"] == 40 and report["tokens"] == 40 * 60
            assert report["resumes"] > 10  # the drops did land mid-answer
            assert status == 0
