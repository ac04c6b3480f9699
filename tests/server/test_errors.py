"""Every error code of the contract, each through the real path that causes it."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
import websockets
from conftest import PROMPT_CLOSE_S, TIMEOUT, say

from tokenwire.protocol import Encoding, Error, ErrorCode, Token
from tokenwire.server.engines.failures import classify


async def _untagged_error(client) -> Error:
    frame = await client.next_untagged()
    assert isinstance(frame, Error)
    assert frame.id is None and frame.seq is None
    return frame


# -- bad_message ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("{not json", "invalid JSON"),
        ('{"type": "dance"}', "$.type"),
        ('{"type": "cancel"}', "id"),
        ('{"type": "cancel", "id": 5}', "$.id"),
        ('{"type": "reset", "extra": 1}', "extra"),
        ("[1, 2]", "object"),
        ('{"type": "generate", "id": "bad id!", "model": "fake", "messages": [{}]}', "$.id"),
    ],
)
async def test_unreadable_messages_get_an_error_with_null_id_and_the_session_lives(
    server, connect, raw, needle
):
    async with connect(server) as client:
        await client.ws.send(raw)
        error = await _untagged_error(client)
        assert error.code == "bad_message" and not error.retryable
        assert needle in error.message
        await client.generate("after", messages=say(tokens=1))
        assert (await client.result("after")).reason == "stop"


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"params": {"n": 2}}, "$.params.n"),
        ({"params": {"top_k": 3}}, "top_k"),
        ({"params": {"max_tokens": "many"}}, "$.params.max_tokens"),
        ({"messages": []}, "$.messages"),
        ({"messages": "hi"}, "$.messages"),
        ({"surprise": True}, "surprise"),
        ({"tools": {"not": "a list"}}, "$.tools"),
    ],
)
async def test_a_bad_generate_with_a_valid_id_ends_that_generation(server, connect, extra, path):
    async with connect(server) as client:
        message = {"type": "generate", "id": "g", "model": "fake", "messages": say(), **extra}
        await client.send(message)
        result = await client.result("g")
        assert result.error is not None and result.error.code == "bad_message"
        assert result.error.seq == 0 and not result.error.retryable
        assert path in result.error.message
        assert len(client.frames_of("g")) == 1


async def test_a_bad_generate_reusing_an_active_id_leaves_that_generation_alone(server, connect):
    async with connect(server) as client:
        await client.generate("live", messages=say(tokens=4, interval=0.05))
        await client.first_frame("live")
        await client.send({"type": "generate", "id": "live", "model": "fake", "messages": []})
        error = await _untagged_error(client)
        assert error.code == "bad_message"
        result = await client.result("live")
        assert result.reason == "stop" and result.content.count("tok") == 4


@pytest.mark.parametrize("encoding", list(Encoding), ids=lambda e: e.value)
async def test_a_frame_of_the_wrong_kind_is_a_bad_message(server, connect, encoding):
    async with connect(server, encoding) as client:
        payload = msgspec.json.encode({"type": "reset"})
        wrong = payload if encoding is Encoding.JSON else payload.decode()
        await client.ws.send(wrong)
        error = await _untagged_error(client)
        assert error.code == "bad_message"
        assert ("binary frame" if encoding is Encoding.JSON else "text frame") in error.message


async def test_msgpack_garbage_is_a_bad_message(server, connect):
    async with connect(server, Encoding.MSGPACK) as client:
        await client.ws.send(b"\xc1\xc1")
        error = await _untagged_error(client)
        assert error.code == "bad_message" and "MessagePack" in error.message


# -- rejected before start -------------------------------------------------------------


async def test_unknown_model(server, connect):
    async with connect(server) as client:
        await client.generate("m", model="gpt-nonexistent")
        error = (await client.result("m")).error
        assert error is not None
        assert (error.code, error.seq, error.retryable) == ("unknown_model", 0, False)


async def test_duplicate_id_is_refused_and_the_active_generation_goes_on(server, connect):
    async with connect(server) as client:
        await client.generate("dup", messages=say(tokens=5, interval=0.03))
        await client.first_frame("dup")
        await client.generate("dup", messages=say(tokens=1))
        error = await _untagged_error(client)
        assert error.code == "duplicate_id" and not error.retryable
        result = await client.result("dup")
        assert result.content == "".join(f"tok{i} " for i in range(5))


async def test_too_many_generations(start_server, connect):
    async with start_server(max_generations=2) as handle, connect(handle) as client:
        await client.generate("a", messages=say(tokens=3, interval=0.05))
        await client.generate("b", messages=say(tokens=3, interval=0.05))
        await client.generate("c", messages=say(tokens=1))
        error = (await client.result("c")).error
        assert error is not None
        assert (error.code, error.retryable) == ("too_many_generations", True)
        await client.result("a")
        await client.result("b")
        await client.generate("c", messages=say(tokens=1))  # room again
        assert (await client.result("c")).reason == "stop"


# -- upstream failures ----------------------------------------------------------------


async def test_rate_limited_carries_retry_after_and_is_not_retried(server, connect, fake):
    async with connect(server) as client:
        before = len(fake.requests)
        await client.generate("rl", messages=say(status=429, retry_after="2"))
        error = (await client.result("rl")).error
        assert error is not None
        assert (error.code, error.retryable, error.retry_after_ms) == (
            "upstream_rate_limited",
            True,
            2000,
        )
        assert len(fake.requests) - before == 1  # LiteLLM's own retries are off


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_provider_refusals_are_upstream_rejected(server, connect, status):
    async with connect(server) as client:
        await client.generate("rj", messages=say(status=status))
        error = (await client.result("rj")).error
        assert error is not None
        assert (error.code, error.retryable) == ("upstream_rejected", False)
        assert str(status) in error.message
        # The provider's own words, without LiteLLM's wrapping.
        assert error.message.endswith(f"(HTTP {status}): fake error {status}"), error.message


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        (
            "litellm.BadRequestError: BadRequestError: OpenAIException - "
            '{"error": {"message": "The model `gpt-9` does not exist", "type": "x"}}',
            "The model `gpt-9` does not exist",
        ),
        (
            "litellm.ContextWindowExceededError: OpenAIException - context length exceeded\n"
            "LiteLLM: model group 'm' failed with the error above.",
            "context length exceeded",
        ),
        ("Incorrect API key provided: sk-proj-abcdefghijklmnop", "Incorrect API key provided: ***"),
        ("Authorization: Bearer abc.def.ghi was refused", "Authorization: *** was refused"),
        ("x" * 5000, "x" * 297 + "..."),
        ("", None),
    ],
)
def test_a_providers_message_is_passed_on_bounded_and_without_keys(raised, said):
    from tokenwire.server.engines.failures import provider_message

    assert provider_message(Exception(raised)) == said


@pytest.mark.parametrize(
    "scenario",
    [
        {"status": 500},
        {"status": 503},
        {"tokens": 6, "cut_after": 3},
        {"tokens": 6, "malformed_after": 2},
        {"tokens": 6, "error_after": 2},
    ],
    ids=["500", "503", "cut", "malformed", "in-stream-error"],
)
async def test_provider_failures_are_upstream_error(server, connect, scenario):
    async with connect(server) as client:
        await client.generate("ue", messages=say(**scenario))
        result = await client.result("ue")
        assert result.error is not None
        assert (result.error.code, result.error.retryable) == ("upstream_error", True)
        # What was streamed before the failure was relayed, numbered, and kept.
        tokens = [f for f in client.frames_of("ue") if isinstance(f, Token)]
        assert result.error.seq == len(tokens)


async def test_no_first_token_in_time_is_upstream_timeout(start_server, connect, fake):
    async with start_server(first_token_timeout=0.3) as handle, connect(handle) as client:
        mark = fake.mark()
        await client.generate("ft", messages=say(tokens=2, first_delay=5))
        record = await fake.request_after(mark, TIMEOUT)
        error = (await client.result("ft")).error
        assert error is not None
        assert (error.code, error.retryable) == ("upstream_timeout", True)
        assert "first token" in error.message
        await record.wait_ended(PROMPT_CLOSE_S)
        assert record.disconnected


async def test_a_stall_mid_stream_is_upstream_timeout(start_server, connect, fake):
    async with start_server(idle_timeout=0.3) as handle, connect(handle) as client:
        mark = fake.mark()
        await client.generate("it", messages=say(tokens=5, hang_after=2))
        record = await fake.request_after(mark, TIMEOUT)
        result = await client.result("it")
        assert result.error is not None and result.error.code == "upstream_timeout"
        assert result.content == "tok0 tok1 "
        await record.wait_ended(PROMPT_CLOSE_S)
        assert record.disconnected


async def test_repeated_chunks_are_repeated_output(start_server, connect):
    async with start_server(repeated_chunk_limit=5) as handle, connect(handle) as client:
        await client.generate("rep", messages=say(text=["again "] * 12))
        result = await client.result("rep")
        assert result.error is not None
        assert (result.error.code, result.error.retryable) == ("repeated_output", True)
        assert result.content == "again " * 5  # the sixth identical chunk is not relayed


async def test_repeats_up_to_the_limit_are_fine(start_server, connect):
    async with start_server(repeated_chunk_limit=5) as handle, connect(handle) as client:
        await client.generate("ok", messages=say(text=["again "] * 5 + ["done"]))
        assert (await client.result("ok")).reason == "stop"


def test_anything_unexpected_is_internal_and_says_nothing_of_itself():
    failure = classify(RuntimeError("secret detail at /srv/app.py"))
    assert failure.code is ErrorCode.INTERNAL and failure.code.retryable
    assert "secret" not in failure.message


def test_retryability_follows_the_contract():
    not_retryable = {c for c in ErrorCode if not c.retryable}
    assert not_retryable == {
        "bad_message",
        "unknown_model",
        "duplicate_id",
        "upstream_rejected",
        "conversation_limit",  # tokenwire's addition: the client must reset or start anew
    }


async def test_an_unknown_model_lists_the_models_offered(server, connect):
    async with connect(server) as client:
        await client.generate("g", model="gpt-4o")
        error = (await client.result("g")).error
    assert error is not None and error.code == "unknown_model"
    assert error.message == "unknown model 'gpt-4o'; this server offers demo, fake"


async def test_an_upstream_connection_failure_logs_deployment_host_and_cause():
    import structlog
    from conftest import ServerHandle
    from resume_parts import free_port

    from tokenwire.server.app import TokenwireServer
    from tokenwire.server.config import ServerSettings, parse
    from tokenwire.server.engines.upstream import Upstream

    port = free_port()  # nothing listens there
    generate_down = {
        "type": "generate",
        "id": "g",
        "model": "down",
        "messages": [{"role": "user", "content": "hi"}],
    }
    secret = "sk-never-in-a-log-77"
    for fast_path in ("auto", "off"):
        config = parse(
            {
                "model_list": [
                    {
                        "model_name": "down",
                        "litellm_params": {
                            "model": "openai/down-model",
                            "api_base": f"http://127.0.0.1:{port}/v1",
                            "api_key": secret,
                        },
                    }
                ],
                "server": {"fast_path": fast_path},
            }
        )
        server = TokenwireServer(ServerSettings(), Upstream(config, repeated_chunk_limit=100))
        with structlog.testing.capture_logs() as logs:
            async with server.listen("127.0.0.1", 0) as (host, bound):
                handle = ServerHandle(server, host, bound)
                async with websockets.connect(handle.url, open_timeout=TIMEOUT) as ws:
                    await ws.recv()
                    await ws.send(json.dumps(generate_down))
                    frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert frame["code"] == "upstream_error", frame
        (failed,) = [e for e in logs if e["event"] == "upstream failed"]
        assert failed["deployment"] == "openai/down-model", (fast_path, failed)
        assert failed["host"] == f"127.0.0.1:{port}"
        assert "refused" in failed["cause"].lower() or "connect" in failed["cause"].lower()
        assert secret not in repr(logs)
