"""The hardening suite's parts (a module, not a conftest: the options and the
figures table are the root conftest's): the server and a hostile upstream, each in a
process of its own, and the figures each test measures.

The server runs as ``tokenwire serve`` (so its RSS, descriptors and event
loop are its own) with two models on the same upstream: ``native`` on the
native streaming path and ``litellm`` on LiteLLM's (``model_info:
fast_path: off``). The upstream is ``tokenwire fake-upstream``, scripted per
request into any hostile behaviour.

Quick mode runs in ``.ci/run``; ``--full`` (``./scripts/test tests/hardening
--full``) runs the long soak (30 minutes) and the larger floods. Every test
adds its figures to one table, printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import REPORT
from processes import Served, hostile_upstream, serving

ENGINES = ("native", "litellm")
FIRST_TOKEN_TIMEOUT = 2.0
IDLE_TIMEOUT = 2.0


def report(test: str, bound: str, measured: str) -> None:
    """A row of the figures table printed at the end of the run."""
    REPORT.append((test, bound, measured))


def server_config(base_url: str, **server: Any) -> dict[str, Any]:
    params = {"model": "openai/hostile", "api_base": base_url, "api_key": "sk-test"}
    return {
        "model_list": [
            {"model_name": "native", "litellm_params": params},
            {"model_name": "litellm", "litellm_params": params, "model_info": {"fast_path": "off"}},
        ],
        "server": {
            "first_token_timeout": FIRST_TOKEN_TIMEOUT,
            "idle_timeout": IDLE_TIMEOUT,
            "max_sessions": 20_000,
            **server,
        },
    }


async def healthz_latency(http: str, stop: asyncio.Event) -> float:
    """The slowest ``GET /healthz`` answer (seconds) while ``stop`` is unset:
    the server's loop is blocked for at least that long."""
    host, port = http.removeprefix("http://").split(":")
    worst = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await reader.read()
        writer.close()
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.05)
    return worst


def room_for_descriptors() -> None:
    """Floods open thousands of sockets: the soft limit up to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


__all__ = ["Served", "hostile_upstream", "serving"]
