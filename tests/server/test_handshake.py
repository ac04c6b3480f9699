"""Handshake checks in the contract's order, HTTP routes, message size, sessions limit."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
import websockets
from conftest import TIMEOUT, say
from websockets.exceptions import InvalidStatus

from tokenwire.server.app import auth_subprotocol

KEY = "k-123_secret"


async def _status(url: str, **kwargs) -> int:
    try:
        async with websockets.connect(url, open_timeout=TIMEOUT, **kwargs):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def _http(url: str) -> tuple[int, str, str]:
    def get() -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                return (
                    response.status,
                    response.headers.get("Content-Type", ""),
                    response.read().decode(),
                )
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()

    return await asyncio.to_thread(get)


async def test_api_key_in_the_authorization_header(start_server):
    async with start_server(api_keys=["other", KEY]) as handle:
        assert await _status(handle.url) == 401
        assert await _status(handle.url, additional_headers={"Authorization": "Bearer nope"}) == 401
        assert (
            await _status(handle.url, additional_headers={"Authorization": f"Bearer {KEY}"}) == 101
        )


async def test_api_key_as_a_subprotocol_for_browsers(start_server):
    async with start_server(api_keys=[KEY]) as handle:
        offered = ["tokenwire.v1", auth_subprotocol(KEY)]
        async with websockets.connect(handle.url, subprotocols=offered, open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol == "tokenwire.v1"  # the key is never echoed back
        wrong = ["tokenwire.v1", auth_subprotocol("guess")]
        assert await _status(handle.url, subprotocols=wrong) == 401


async def test_origin_allow_list(start_server):
    async with start_server(allowed_origins=["http://ok.example"]) as handle:
        assert await _status(handle.url, origin="http://ok.example") == 101
        assert await _status(handle.url, origin="http://evil.example") == 403
        assert await _status(handle.url, origin="null") == 403
        assert await _status(handle.url) == 101  # no Origin: not a browser


async def test_origin_is_checked_before_the_key(start_server):
    async with start_server(allowed_origins=["http://ok.example"], api_keys=[KEY]) as handle:
        assert await _status(handle.url, origin="http://evil.example") == 403
        assert await _status(handle.url, origin="http://ok.example") == 401


async def test_server_full_is_503_after_origin_and_key(start_server, connect):
    async with start_server(max_sessions=1, api_keys=[KEY]) as handle:
        auth = {"additional_headers": {"Authorization": f"Bearer {KEY}"}}
        async with connect(handle, **auth):
            assert await _status(handle.url) == 401
            assert await _status(handle.url, **auth) == 503
        async with asyncio.timeout(TIMEOUT):
            await handle.server.no_sessions.wait()
        assert await _status(handle.url, **auth) == 101


async def test_a_message_over_max_message_bytes_closes_with_1009(start_server, connect):
    async with start_server(max_message_bytes=2000) as handle, connect(handle) as client:
        assert client.ready is not None and client.ready.limits.max_message_bytes == 2000
        await client.generate("big", messages=[{"role": "user", "content": "x" * 3000}])
        code, _ = await client.wait_closed()
        assert code == 1009


async def test_a_message_at_the_limit_is_taken(start_server, connect):
    async with start_server(max_message_bytes=2000) as handle, connect(handle) as client:
        await client.generate("fits", messages=[{"role": "user", "content": "x" * 1500}])
        await client.result("fits")


async def test_health_ready_and_metrics_routes(server, connect):
    assert await _http(server.http + "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    status, _, _ = await _http(server.http + "/readyz")
    assert status == 200
    async with connect(server) as client:
        await client.generate("m", messages=say(tokens=3))
        await client.result("m")
        await client.generate("e", model="nope")
        await client.result("e")
        status, content_type, body = await _http(server.http + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    metrics = dict(
        line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#")
    )
    assert metrics['tokenwire_sessions{state="attached"}'] == "1.0"
    assert metrics['tokenwire_sessions{state="detached"}'] == "0.0"
    assert float(metrics["tokenwire_frames_sent_total"]) >= 6  # ready, 3 tokens, finish, error
    assert metrics["tokenwire_tokens_sent_total"] == "3.0"
    assert metrics['tokenwire_errors_total{code="unknown_model"}'] == "1.0"
    assert metrics['tokenwire_generations_total{outcome="stop"}'] == "1.0"
    assert metrics["tokenwire_time_to_first_token_seconds_count"] == "1.0"
    assert metrics["tokenwire_generations_active"] == "0.0"


async def test_unknown_paths_are_404(server):
    assert (await _http(server.http + "/nothing-here"))[0] == 404


@pytest.mark.parametrize(
    "offered", [["tokenwire.v1.msgpack", "tokenwire.v1"], ["x", "tokenwire.v1"]]
)
async def test_the_first_known_subprotocol_offered_is_chosen(server, offered):
    async with websockets.connect(server.url, subprotocols=offered, open_timeout=TIMEOUT) as ws:
        assert ws.subprotocol == next(p for p in offered if p.startswith("tokenwire"))


async def test_keepalive_pings_close_a_peer_that_vanished_and_can_be_off(start_server):
    import websockets as ws_lib

    async def silent_for(settings: dict[str, float], seconds: float, *, silent: bool = True) -> int:
        """Sessions left (at most ``seconds`` later) after a client stops
        reading (or, not ``silent``, while it reads and answers pings)."""
        async with start_server(**settings) as handle:
            connection = await ws_lib.connect(handle.url, open_timeout=TIMEOUT)
            if silent:
                connection.transport.pause_reading()  # answers no ping any more
            for _ in range(round(seconds / 0.05)):
                if not handle.server.connections:
                    break
                await asyncio.sleep(0.05)
            left = len(handle.server.connections)
            if not silent:  # a pong came back to the server: its latency is measured
                (link,) = handle.server.connections
                assert link._ws.latency > 0
            connection.transport.abort()
            return left

    # The ping, its timeout, then the closing handshake's own (CLOSE_TIMEOUT).
    assert await silent_for({"ping_interval": 0.2, "ping_timeout": 0.2}, 4.0) == 0
    assert await silent_for({"ping_interval": 0}, 1.5) == 1
    # A client that answers is pinged and stays.
    settings = {"ping_interval": 0.2, "ping_timeout": 0.2}
    assert await silent_for(settings, 1.5, silent=False) == 1
