"""The Python client, async and sync, as one parametrized suite.

Both flavours run against the real server and the fake upstream. The sync
client blocks, so its calls run in a thread (``asyncio.to_thread``) while the
servers keep running on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import PROMPT_CLOSE_S, TIMEOUT, say

from tokenwire import client as aio
from tokenwire.client import ConnectionLost, GenerationError, sync


class Flavour:
    """One client flavour behind one async interface, for the tests."""

    name: str

    async def connect(self, url: str, **options: Any) -> Any: ...


class AsyncFlavour(Flavour):
    name = "async"

    async def connect(self, url: str, **options: Any) -> Any:
        client = aio.connect(url, **options)
        await client.__aenter__()
        return AsyncClientView(client)


class AsyncClientView:
    def __init__(self, client: aio.AsyncClient) -> None:
        self.raw = client

    @property
    def models(self) -> list[str]:
        return self.raw.models

    async def generate(self, **kwargs: Any) -> Any:
        return AsyncGenerationView(await self.raw.generate(**kwargs))

    async def reset(self) -> list[str]:
        return await self.raw.reset()

    async def close(self) -> None:
        await self.raw.close()


class AsyncGenerationView:
    def __init__(self, generation: aio.AsyncGeneration) -> None:
        self.raw = generation

    @property
    def text(self) -> str:
        return self.raw.text

    async def events(self, stop_after: int | None = None) -> list[Any]:
        seen = []
        async for event in self.raw:
            seen.append(event)
            if stop_after is not None and len(seen) >= stop_after:
                break
        return seen

    async def result(self) -> Any:
        return await self.raw.result()

    async def cancel(self) -> None:
        await self.raw.cancel()


class SyncFlavour(Flavour):
    name = "sync"

    async def connect(self, url: str, **options: Any) -> Any:
        client = sync.connect(url, **options)
        await asyncio.to_thread(client.__enter__)
        return SyncClientView(client)


class SyncClientView:
    def __init__(self, client: sync.Client) -> None:
        self.raw = client

    @property
    def models(self) -> list[str]:
        return self.raw.models

    async def generate(self, **kwargs: Any) -> Any:
        return SyncGenerationView(await asyncio.to_thread(lambda: self.raw.generate(**kwargs)))

    async def reset(self) -> list[str]:
        return await asyncio.to_thread(self.raw.reset)

    async def close(self) -> None:
        await asyncio.to_thread(self.raw.close)


class SyncGenerationView:
    def __init__(self, generation: sync.Generation) -> None:
        self.raw = generation

    @property
    def text(self) -> str:
        return self.raw.text

    async def events(self, stop_after: int | None = None) -> list[Any]:
        def run() -> list[Any]:
            seen = []
            for event in self.raw:
                seen.append(event)
                if stop_after is not None and len(seen) >= stop_after:
                    break
            return seen

        return await asyncio.to_thread(run)

    async def result(self) -> Any:
        return await asyncio.to_thread(self.raw.result)

    async def cancel(self) -> None:
        await asyncio.to_thread(self.raw.cancel)


@pytest.fixture(params=[AsyncFlavour(), SyncFlavour()], ids=lambda f: f.name)
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def client(flavour, server):
    view = await flavour.connect(server.url)
    yield view
    await view.close()


USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_stream_then_result(flavour, server, encoding):
    client = await flavour.connect(server.url, encoding=encoding)
    try:
        assert client.models == ["fake", "demo"]
        gen = await client.generate(model="fake", messages=say(tokens=4, reasoning=1))
        events = await asyncio.wait_for(gen.events(), TIMEOUT)
        assert [type(e).__name__ for e in events] == ["Reasoning"] + ["Token"] * 4
        result = await gen.result()
        assert result.content == gen.text == "tok0 tok1 tok2 tok3 "
        assert (result.reasoning, result.reason) == ("think0 ", "stop")
        assert result.usage is not None and result.usage.completion_tokens == 5
    finally:
        await client.close()


async def test_generations_are_independent(client, fake):
    slow = await client.generate(model="fake", messages=say(tokens=200, interval=0.05))
    quick = await client.generate(model="fake", messages=say(tokens=3, interval=0.01))
    other = await client.generate(model="fake", messages=say(tokens=2))
    assert (await quick.result()).content == "tok0 tok1 tok2 "
    assert len(await other.events()) == 2
    await slow.cancel()
    result = await slow.result()
    assert result.reason == "cancelled" and result.content == slow.text


async def test_leaving_the_loop_early_cancels_the_generation(client, fake):
    mark = fake.mark()
    gen = await client.generate(model="fake", messages=say(tokens=500, interval=0.02))
    record = await fake.request_after(mark, TIMEOUT)
    events = await gen.events(stop_after=2)
    assert len(events) == 2
    result = await asyncio.wait_for(gen.result(), TIMEOUT)
    assert result.reason == "cancelled"
    await record.wait_ended(PROMPT_CLOSE_S)
    assert record.disconnected


@pytest.mark.parametrize(
    ("scenario", "code", "retryable", "retry_after_ms"),
    [
        ({"status": 429, "retry_after": "3"}, "upstream_rate_limited", True, 3000),
        ({"status": 400}, "upstream_rejected", False, None),
        ({"status": 502}, "upstream_error", True, None),
    ],
)
async def test_error_frames_raise_generation_error(
    client, scenario, code, retryable, retry_after_ms
):
    gen = await client.generate(model="fake", messages=say(**scenario))
    with pytest.raises(GenerationError) as raised:
        await gen.events()
    with pytest.raises(GenerationError) as again:
        await gen.result()
    for exc in (raised.value, again.value):
        assert (exc.code, exc.retryable, exc.retry_after_ms) == (code, retryable, retry_after_ms)


async def test_unknown_model_raises_generation_error(client):
    gen = await client.generate(model="nope", messages=user("hi"))
    with pytest.raises(GenerationError) as raised:
        await gen.result()
    assert (raised.value.code, raised.value.retryable) == ("unknown_model", False)


async def test_a_duplicate_active_id_is_refused_before_sending(client):
    first = await client.generate(model="fake", messages=say(tokens=50, interval=0.02), id="mine")
    with pytest.raises(GenerationError) as raised:
        await client.generate(model="fake", messages=say(), id="mine")
    assert raised.value.code == "duplicate_id"
    await first.cancel()


async def test_bad_arguments_raise_value_error_naming_the_field(client):
    with pytest.raises(ValueError, match=r"\$\.params\.n"):
        await client.generate(model="fake", messages=user("x"), params={"n": 2})


async def test_reset_returns_the_cancelled_ids(client):
    a = await client.generate(model="fake", messages=say(tokens=300, interval=0.02), id="a")
    b = await client.generate(model="fake", messages=say(tokens=300, interval=0.02), id="b")
    assert sorted(await client.reset()) == ["a", "b"]
    assert (await a.result()).reason == "cancelled"
    assert (await b.result()).reason == "cancelled"


async def test_a_lost_connection_raises_connection_lost(flavour, start_server, fake):
    async with start_server() as handle:
        client = await flavour.connect(handle.url)
        mark = fake.mark()
        gen = await client.generate(model="fake", messages=say(tokens=500, interval=0.02))
        await fake.request_after(mark, TIMEOUT)  # in flight
    # The server is gone (closed with 1001): the pending generation ends.
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(gen.result(), TIMEOUT)
    with pytest.raises(ConnectionLost):
        await client.generate(model="fake", messages=say())
    await client.close()


async def test_reconnect_serves_generations_started_after_the_drop(flavour, upstream, fake):
    from tokenwire.server.app import TokenwireServer
    from tokenwire.server.config import ServerSettings

    first = TokenwireServer(ServerSettings(), upstream)
    async with first.listen("127.0.0.1", 0) as (host, port):
        client = await flavour.connect(f"ws://{host}:{port}/v1/ws", reconnect=True)
        mark = fake.mark()
        inflight = await client.generate(model="fake", messages=say(tokens=500, interval=0.02))
        await fake.request_after(mark, TIMEOUT)  # in flight
    # A restarted server does not know the session: the generation in
    # flight cannot be resumed, and says so; new ones are served.
    second = TokenwireServer(ServerSettings(), upstream)
    async with second.listen(host, port):
        with pytest.raises(ConnectionLost, match=r"could not be resumed \(unknown\)"):
            await asyncio.wait_for(inflight.result(), TIMEOUT)
        gen = await asyncio.wait_for(client.generate(model="fake", messages=say(tokens=2)), TIMEOUT)
        assert (await gen.result()).content == "tok0 tok1 "
        await client.close()


async def _until(condition: Any) -> None:
    """Poll ``condition`` (what a client has received so far)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _cut(handle: Any) -> None:
    """The server's side of every connection just goes (no close frame)."""
    for link in list(handle.server.connections):
        link._ws.transport.abort()


async def test_a_dropped_connection_is_resumed_and_the_stream_is_unbroken(
    flavour, start_server, fake
):
    async with start_server() as handle:
        client = await flavour.connect(handle.url, reconnect=True)
        gen = await client.generate(model="fake", messages=say(tokens=60, interval=0.01))
        reading = asyncio.create_task(gen.events())
        await _until(lambda: gen.text.count("tok") >= 10)
        _cut(handle)
        texts = [e.text for e in await asyncio.wait_for(reading, TIMEOUT)]
        assert "".join(texts) == "".join(f"tok{i} " for i in range(60))
        assert (await gen.result()).content == "".join(texts)
        assert client.raw.resumes == 1
        await client.close()


async def test_a_conversation_survives_a_drop_between_turns(flavour, start_server, fake):
    async with start_server() as handle:
        client = await flavour.connect(handle.url, reconnect=True)
        first = await client.generate(model="fake", messages=say(tokens=2), conversation="c")
        await first.result()
        session = client.raw.session
        _cut(handle)
        await asyncio.sleep(0.1)
        mark = fake.mark()
        second = await client.generate(model="fake", messages=user("and?"), conversation="c")
        await second.result()
        record = await fake.request_after(mark, TIMEOUT)
        assert [m["role"] for m in record.body["messages"]] == ["user", "assistant", "user"]
        assert client.raw.session == session
        await client.close()


async def test_without_reconnect_a_drop_still_ends_the_generation(flavour, start_server, fake):
    async with start_server() as handle:
        client = await flavour.connect(handle.url)
        gen = await client.generate(model="fake", messages=say(tokens=60, interval=0.01))
        await _until(lambda: gen.text.count("tok") >= 2)
        _cut(handle)
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(gen.result(), TIMEOUT)
        await client.close()


async def test_api_key(flavour, start_server):
    async with start_server(api_keys=["k-1"]) as handle:
        client = await flavour.connect(handle.url, api_key="k-1")
        gen = await client.generate(model="fake", messages=say(tokens=1))
        assert (await gen.result()).reason == "stop"
        await client.close()
        with pytest.raises(Exception, match="401"):
            await flavour.connect(handle.url, api_key="wrong")


async def test_to_openai_matches_litellms_stream_chunk_builder(client, fake):
    import litellm

    scenario = say(
        tokens=3,
        reasoning=2,
        tool_calls=[{"name": "lookup", "arguments": '{"q": "tokenwire"}', "fragment_chars": 5}],
    )
    gen = await client.generate(model="fake", messages=scenario)
    ours = (await gen.result()).to_openai()

    stream = await litellm.acompletion(
        model="openai/fake-model",
        api_base=fake.base_url,
        api_key="sk-fake",
        max_retries=0,
        messages=scenario,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    theirs = json.loads(litellm.stream_chunk_builder(chunks).model_dump_json())

    def essentials(completion: dict[str, Any]) -> dict[str, Any]:
        choice = completion["choices"][0]
        message = choice["message"]
        return {
            "object": completion["object"],
            "finish_reason": choice["finish_reason"],
            "role": message["role"],
            "content": message["content"],
            "reasoning_content": message.get("reasoning_content"),
            "tool_calls": message.get("tool_calls"),
            "usage": {
                k: completion["usage"][k]
                for k in ("prompt_tokens", "completion_tokens", "total_tokens")
            },
        }

    assert essentials(ours) == essentials(theirs)
    assert ours["model"] == "fake"


async def test_the_readme_quickstart_runs_as_written(tmp_path, start_server):
    """The README's Python client example, run against `demo`."""
    text = (Path(__file__).parent.parent.parent / "README.md").read_text()
    start = text.index("```python\nimport asyncio\nfrom tokenwire.client import")
    code = text[start + len("```python\n") : text.index("```", start + 10)]
    assert len(code.strip().splitlines()) < 15
    async with start_server() as handle:
        script = tmp_path / "quickstart.py"
        script.write_text(code.replace("ws://127.0.0.1:8765/v1/ws", handle.url))
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(script), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 3 * TIMEOUT)
    assert process.returncode == 0
    assert 'You said: "' in out.decode()


# -- failures to connect, and a server that breaks the protocol --------------------


async def test_a_refused_handshake_is_connect_failed_with_its_status(flavour, start_server):
    async with start_server(api_keys=["key-one"]) as handle:
        with pytest.raises(aio.ConnectFailed) as caught:
            await flavour.connect(handle.url)
        assert caught.value.status == 401 and "api_key" in str(caught.value)
        with pytest.raises(aio.ConnectFailed) as caught:
            await flavour.connect(handle.url.replace("/v1/ws", "/v1/nowhere"), api_key="key-one")
        assert caught.value.status == 404 and "/v1/ws" in str(caught.value)
        # reconnect=True does not retry what the server refused.
        with pytest.raises(aio.ConnectFailed):
            await flavour.connect(handle.url, api_key="wrong", reconnect=True)


async def test_a_wrong_path_says_what_is_there_and_where_v1_ws_is(flavour, server):
    base = server.url.removesuffix("/v1/ws")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aio.ConnectFailed) as page:
        await flavour.connect(base + "/")
    assert page.value.status == 200
    assert "web page" in str(page.value) and f"{base}/v1/ws" in str(page.value)
    with pytest.raises(aio.ConnectFailed) as responses:
        await flavour.connect(base + "/v1/responses")
    assert responses.value.status == 400
    assert "Responses API" in str(responses.value) and "/v1/ws" in str(responses.value)
    assert loop.time() - started < 2  # said at once, not after a timeout

    import websockets

    async def other_protocol(ws) -> None:
        await ws.send(json.dumps({"hello": "I speak something else"}))
        await ws.wait_closed()

    async with websockets.serve(other_protocol, "127.0.0.1", 0) as other:
        port = other.sockets[0].getsockname()[1]
        with pytest.raises(aio.ConnectFailed) as elsewhere:
            await flavour.connect(f"ws://127.0.0.1:{port}/v1/ws", reconnect=True)
    assert elsewhere.value.cause == "not_tokenwire"
    assert "not tokenwire's WebSocket" in str(elsewhere.value)


async def test_nothing_listening_is_connect_failed_without_status(flavour):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(aio.ConnectFailed) as caught:
        await flavour.connect(f"ws://127.0.0.1:{port}/v1/ws")
    assert caught.value.status is None and "is the server running" in str(caught.value)


async def test_a_frame_the_client_cannot_read_ends_pending_generations_clearly(flavour):
    import websockets

    async def broken_server(ws) -> None:
        limits = {"max_generations": 4, "max_message_bytes": 1024}
        ready = {"type": "ready", "session": "s", "models": ["m"], "limits": limits}
        await ws.send(json.dumps(ready))
        message = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "token", "id": message["id"], "seq": "zero"}))
        await ws.wait_closed()

    async with websockets.serve(broken_server, "127.0.0.1", 0) as served:
        port = served.sockets[0].getsockname()[1]
        client = await flavour.connect(f"ws://127.0.0.1:{port}/v1/ws")
        generation = await client.generate(model="m", messages=user("hi"))
        with pytest.raises(aio.ServerProtocolError) as caught:
            await generation.result()
        assert "cannot read" in str(caught.value) and caught.value.code == 1002
        await client.close()  # no exception: the reader ended cleanly
