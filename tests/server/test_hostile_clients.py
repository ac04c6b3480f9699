"""A hostile client: every message it can send gets ``bad_message`` (or 1009),
never ``internal``, never a traceback, and its session lives on.

Each case here was a defect: ``internal`` (retryable!), a lost id, a value
sent upstream silently changed, a URL fetched on the client's behalf, or a
900 KB value echoed back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import litellm
import msgspec
import pytest
from aiohttp import web
from conftest import TIMEOUT, ServerHandle, model_list, say

from tokenwire.protocol import Encoding, Error

GEN = {"type": "generate", "id": "g1", "model": "fake"}
DEEP = 100_000


def _generate(**fields: object) -> dict[str, object]:
    return {**GEN, "messages": say(tokens=2), **fields}


def _user(content: object) -> list[dict[str, object]]:
    return [{"role": "user", "content": content}]


async def _terminal_error(client, gid: str = "g1") -> Error:
    result = await client.result(gid)
    assert result.error is not None, result
    return result.error


async def _session_lives(client) -> None:
    await client.generate("after", messages=say(tokens=2))
    assert (await client.result("after")).reason == "stop"


@pytest.fixture
def no_tracebacks(caplog):
    """No ERROR log line (a traceback) while the test runs."""
    caplog.set_level(logging.ERROR)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "tokenwire" in r.name]
    assert not errors, [r.getMessage() for r in errors]


# -- 1. nesting past msgspec's limit --------------------------------------------


async def test_a_deeply_nested_message_is_bad_message_with_null_id(server, connect, no_tracebacks):
    async with connect(server) as client:
        await client.ws.send("[" * DEEP + "]" * DEEP)
        error = await client.next_untagged()
        assert isinstance(error, Error)
        assert (error.code, error.retryable, error.id) == ("bad_message", False, None)
        await _session_lives(client)


async def test_deep_nesting_inside_a_generate_ends_that_generation(server, connect, no_tracebacks):
    async with connect(server) as client:
        nested = "[" * DEEP + "]" * DEEP
        raw = json.dumps(_generate(messages=_user("PLACE"))).replace('"PLACE"', nested)
        await client.ws.send(raw)
        error = await _terminal_error(client)
        assert (error.code, error.retryable, error.seq) == ("bad_message", False, 0)
        await _session_lives(client)


async def test_deep_msgpack_nesting_is_bad_message(server, connect, no_tracebacks):
    async with connect(server, encoding=Encoding.MSGPACK) as client:
        await client.ws.send(b"\x91" * DEEP + b"\xc0")
        error = await client.next_untagged()
        assert isinstance(error, Error) and error.code == "bad_message"
        place = msgspec.msgpack.encode("PLACE")
        raw = msgspec.msgpack.encode(_generate(messages=_user("PLACE")))
        await client.ws.send(raw.replace(place, b"\x91" * DEEP + b"\xc0"))
        error = await _terminal_error(client)
        assert (error.code, error.seq) == ("bad_message", 0)
        await _session_lives(client)


# -- 2. malformed messages and tools, refused before LiteLLM sees them ---------


@pytest.mark.parametrize(
    ("messages", "path"),
    [
        (_user(["hi"]), "$.messages[0].content[0]"),
        (_user([["hi"]]), "$.messages[0].content[0]"),
        (_user([{"type": "image_url"}]), "$.messages[0].content[0]"),
        (_user([{"type": "image_url", "image_url": {}}]), "$.messages[0].content[0]"),
        (_user([{"type": "text"}]), "$.messages[0].content[0]"),
        (_user([{"type": "dance"}]), "$.messages[0].content[0]"),
        (_user({"text": "hi"}), "$.messages[0].content"),
        (_user(5), "$.messages[0].content"),
        ([{"content": "hi"}], "$.messages[0]"),
        ([{"role": "wizard", "content": "hi"}], "$.messages[0]"),
        ([{"role": "user"}], "$.messages[0]"),
        (["hi"], "$.messages[0]"),
        ([{"role": "tool", "content": "42"}], "$.messages[0]"),
        ([{"role": "tool", "tool_call_id": "c1", "content": [{"type": "image_url"}]}], "$.messages[0].content[0]"),
        ([{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}], "$.messages[0].tool_calls[0]"),
        ([{"role": "assistant", "content": None, "tool_calls": "x"}], "$.messages[0].tool_calls"),
    ],
)  # fmt: skip
async def test_malformed_messages_are_bad_message_naming_the_path(
    server, connect, no_tracebacks, encoding, messages, path
):
    async with connect(server, encoding=encoding) as client:
        await client.send(_generate(messages=messages))
        error = await _terminal_error(client)
        assert (error.code, error.seq) == ("bad_message", 0)
        assert path in error.message
        await _session_lives(client)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"tools": ["f"]}, "$.tools[0]"),
        ({"tools": [{"type": "code_interpreter"}]}, "$.tools[0].type"),
        ({"tools": [{"type": "function"}]}, "$.tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "$.tools[0].function"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "$.tools[0].function.parameters",
        ),
        ({"tool_choice": "sometimes"}, "$.tool_choice"),
        ({"tool_choice": {"type": "function"}}, "$.tool_choice"),
    ],
)
async def test_malformed_tools_are_bad_message_naming_the_path(
    server, connect, no_tracebacks, fields, path
):
    async with connect(server) as client:
        await client.send(_generate(**fields))
        error = await _terminal_error(client)
        assert (error.code, error.seq) == ("bad_message", 0)
        assert path in error.message


async def test_well_formed_parts_and_tool_turns_are_taken(server, connect, fake):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        *say(tokens=2),
    ]
    async with connect(server) as client:
        await client.send(_generate(messages=messages))
        assert (await client.result("g1")).reason == "stop"


# -- 3, 5. MessagePack values that are not JSON --------------------------------


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"messages": _user(msgspec.msgpack.Ext(1, b"x"))}, "$.messages[0].content"),
        ({"messages": _user([{"type": "text", "text": b"bytes"}])}, "$.messages[0].content[0].text"),
        ({"params": {"presence_penalty": float("nan")}}, "$.params.presence_penalty"),
        ({"params": {"temperature": float("inf")}}, "$.params.temperature"),
        ({"params": {"response_format": {"type": "json_object", "x": float("-inf")}}}, "$.params.response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"x": float("nan")}}}]}, "$.tools[0]"),
    ],
)  # fmt: skip
async def test_msgpack_values_json_cannot_carry_are_bad_message(
    server, connect, no_tracebacks, fields, path
):
    async with connect(server, encoding=Encoding.MSGPACK) as client:
        await client.send(_generate(**fields))
        error = await _terminal_error(client)
        assert (error.code, error.seq) == ("bad_message", 0)
        assert path in error.message
        await _session_lives(client)


# -- 4. the id is kept when a number cannot be read ----------------------------


async def test_an_out_of_range_number_keeps_the_generations_id(server, connect, no_tracebacks):
    async with connect(server) as client:
        raw = json.dumps(_generate(params={"presence_penalty": 1})).replace(
            '"presence_penalty": 1', '"presence_penalty": 1e999'
        )
        await client.ws.send(raw)
        error = await _terminal_error(client)
        assert (error.id, error.seq, error.code) == ("g1", 0, "bad_message")
        assert "$.params.presence_penalty" in error.message


# -- 6. no URL a client names is fetched ---------------------------------------


@pytest.fixture
async def url_trap():
    """An HTTP server that counts the requests it gets (an image or PDF host)."""
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        await asyncio.sleep(3)  # a slow host: fetched on the loop, it would stall everyone
        return web.Response(body=b"\x89PNG\r\n\x1a\n", content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    # LiteLLM's filter blocks private addresses; off, so that only tokenwire
    # stands between a client's URL and a fetch.
    before = getattr(litellm, "user_url_validation", True)
    litellm.user_url_validation = False
    yield f"http://127.0.0.1:{port}", hits
    litellm.user_url_validation = before
    await runner.cleanup()


async def test_an_image_url_is_never_fetched_even_to_count_tokens(server, connect, fake, url_trap):
    base, hits = url_trap
    image = {"type": "image_url", "image_url": {"url": f"{base}/cat.png", "detail": "high"}}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "fake:{}"}]}]
    messages[0]["content"][1]["text"] = "fake:" + json.dumps({"tokens": 50, "interval": 0.05})
    async with connect(server) as client:
        mark = fake.mark()
        await client.send(_generate(messages=messages))
        await fake.request_after(mark, TIMEOUT)
        await client.first_frame("g1")
        started = asyncio.get_running_loop().time()
        await client.cancel("g1")  # estimating usage on cancel used to download the image
        result = await client.result("g1")
        assert asyncio.get_running_loop().time() - started < 1.0
    assert result.reason == "cancelled" and result.usage is not None and result.usage.estimated
    assert result.usage.prompt_tokens > 0
    assert hits == []
    # The URL went to the provider as it came.
    sent = fake.requests[mark].body["messages"][0]["content"][0]
    assert sent["image_url"]["url"] == f"{base}/cat.png"


async def test_a_file_id_that_is_a_url_is_refused(server, connect, url_trap):
    base, hits = url_trap
    part = {"type": "file", "file": {"file_id": f"{base}/doc.pdf"}}
    async with connect(server) as client:
        await client.send(_generate(messages=_user([part, {"type": "text", "text": "hi"}])))
        error = await _terminal_error(client)
        assert error.code == "bad_message" and "file_id" in error.message
    assert hits == []


# -- 9. errors quote a little of what they name --------------------------------


@pytest.mark.parametrize("field", ["type", "model", "conversation"])
async def test_an_error_never_echoes_a_huge_value(server, connect, field):
    huge = "x" * 900_000
    message = {"type": huge} if field == "type" else _generate(**{field: huge})
    async with connect(server, max_size=2**21) as client:
        await client.send(message)
        error = (await client.next_untagged()) if field == "type" else await _terminal_error(client)
        assert isinstance(error, Error) and error.code in ("bad_message", "unknown_model")
        assert len(error.message) <= 300


# -- 7. a huge prompt costs its own session, not everyone's ------------------------


WATCHER = """
import asyncio, json, sys, time
import websockets

async def main(url, gid, tokens):
    async with websockets.connect(url) as ws:
        await ws.recv()  # ready
        pace = "fake:" + json.dumps({"tokens": tokens, "interval": 0.01})
        message = {"type": "generate", "id": gid, "model": "fake",
                   "messages": [{"role": "user", "content": pace}]}
        await ws.send(json.dumps(message))
        last, largest = None, 0.0
        while True:
            frame = json.loads(await ws.recv())
            now = time.perf_counter()
            if last is None:
                print("streaming", flush=True)
            else:
                largest = max(largest, now - last)
            last = now
            if frame["type"] in ("finish", "error"):
                print(largest, flush=True)
                return

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def _largest_gap(url: str, gid: str, started: asyncio.Event | None = None) -> float:
    """A paced generation streamed by a client in a process of its own (its
    reading does not share the server's loop): the largest pause between two
    of its frames. ``started`` is set once its first frame came."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WATCHER, url, gid, "300", stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(6 * TIMEOUT):
            assert (await process.stdout.readline()).strip() == b"streaming"
            if started is not None:
                started.set()
            largest = float(await process.stdout.readline())
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return largest


@pytest.fixture(scope="module")
def outside_upstream(outside_fake):
    """An upstream on the fake in its own process: its parsing of 2.4 MB
    bodies must not count as the server's stall."""
    from tokenwire.server.config import parse
    from tokenwire.server.engines.upstream import Upstream

    upstream = Upstream(parse({"model_list": model_list(outside_fake)}), repeated_chunk_limit=100)
    upstream.warm_up()
    return upstream


async def test_cancelling_huge_prompts_does_not_stall_other_sessions(outside_upstream, connect):
    from tokenwire.server.app import TokenwireServer
    from tokenwire.server.config import ServerSettings

    # 55,000 short messages (1.1 MB of MessagePack): counting their tokens on
    # a cancel held the loop 0.4 s each; four at once stalled every session
    # 1.7-3.1 s.
    messages = [{"role": "user", "content": "hi"} for i in range(55_000)]
    messages[-1] = say(tokens=1000, interval=0.01)[0]
    huge = [msgspec.msgpack.encode({**GEN, "id": f"h{n}", "messages": messages}) for n in range(4)]
    server = TokenwireServer(ServerSettings(max_message_bytes=2 << 20), outside_upstream)
    async with server.listen("127.0.0.1", 0) as (host, port):
        await _watch_an_attack(ServerHandle(server, host, port), connect, huge)


async def _watch_an_attack(server, connect, huge: list[bytes]) -> None:
    async with connect(server, encoding=Encoding.MSGPACK) as attacker:
        baseline = await _largest_gap(server.url, "quiet")
        streaming = asyncio.Event()
        watching = asyncio.create_task(_largest_gap(server.url, "loud", streaming))
        await streaming.wait()
        await asyncio.sleep(0.1)
        for raw in huge:
            await attacker.ws.send(raw)
        for n in range(4):
            await attacker.first_frame(f"h{n}", timeout=TIMEOUT)
        for n in range(4):
            await attacker.cancel(f"h{n}")
        results = [await attacker.result(f"h{n}") for n in range(4)]
        stalled = await watching
    assert all(r.reason == "cancelled" and r.usage and r.usage.estimated for r in results)
    assert results[0].usage is not None and results[0].usage.prompt_tokens > 55_000 // 4
    print(f"largest gap: {baseline * 1000:.0f} ms alone, {stalled * 1000:.0f} ms beside the attack")
    # Decoding and checking one such message holds the loop ≈50 ms, by design
    # (it is what a session may cost the others, once, before it waits as
    # long); its neighbour then needs a few turns more, and this test's own
    # attacking client shares the loop. Measured on the 2-core machine: 52-98
    # ms past the quiet baseline in 12 runs (the regression this guards
    # stalled every session 1.7-3.1 s).
    assert stalled - baseline < 0.05 + 0.1
