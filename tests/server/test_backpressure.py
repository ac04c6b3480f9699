"""A client that stops reading: its text merges (invariant 8), nothing is lost,
memory stays bounded, and other sessions do not notice."""

from __future__ import annotations

import asyncio
import json

import websockets
from conftest import TIMEOUT, read_until_closed, say

from tokenwire.protocol import Codec, Encoding, ResultBuilder, Token

codec = Codec(Encoding.JSON)


async def _stalled_client(url: str, gid: str, scenario: dict[str, object]):
    """A raw client that has sent a generate and then stopped reading.

    ``max_queue=1``: the client library stops reading the socket as soon as one
    frame waits unread, so the server's writes back up into kernel buffers.
    """
    ws = await websockets.connect(url, max_queue=1, max_size=None, open_timeout=TIMEOUT)
    await ws.recv()  # ready
    message = {"type": "generate", "id": gid, "model": "fake", "messages": say(**scenario)}
    await ws.send(json.dumps(message))
    return ws


async def _read_all(ws, gid: str) -> tuple[ResultBuilder, int]:
    """Read to the generation's terminal frame; the builder checks invariants 1-4."""
    builder = ResultBuilder(gid)
    token_frames = 0
    async with asyncio.timeout(TIMEOUT):
        while not builder.done:
            frame = codec.decode_server(await ws.recv())
            builder.add(frame)  # raises ProtocolViolation on a broken invariant
            token_frames += isinstance(frame, Token)
    return builder, token_frames


async def test_a_paused_reader_gets_merged_tokens_and_loses_nothing(start_server, connect, fake):
    word = "w" * 2000
    tokens = 16_000  # 32 MB: far past the buffers of both sockets (about 10 MB here)
    async with start_server() as handle:
        mark = fake.mark()
        stalled = await _stalled_client(handle.url, "big", {"tokens": tokens, "word": word})
        record = await fake.request_after(mark, TIMEOUT)
        # While it does not read, another session streams at its pace.
        async with connect(handle) as other:
            await other.generate("fine", messages=say(tokens=20, interval=0.005))
            assert (await other.result("fine")).reason == "stop"
        # The stalled generation stopped reading its upstream once its merged
        # text reached the bound: the fake could not send everything.
        await asyncio.sleep(0.3)
        assert record.chunks_sent < tokens
        # Now it reads again, and everything arrives, in fewer frames.
        builder, token_frames = await _read_all(stalled, "big")
        result = builder.result()
        assert result.reason == "stop"
        assert result.content == "".join(f"{word}{i} " for i in range(tokens))
        assert token_frames < tokens
        await stalled.close()


async def test_frames_that_cannot_merge_are_bounded_by_max_queued_frames(start_server, fake):
    # Tool-call fragments never merge: 8,000 of 1 KB behind a stopped reader.
    call = {"name": "f", "arguments": "x" * 1000, "repeat": 8000, "fragment_chars": 1000}
    async with start_server(max_queued_frames=200, send_timeout=30) as handle:
        mark = fake.mark()
        stalled = await _stalled_client(handle.url, "calls", {"tokens": 0, "tool_calls": [call]})
        record = await fake.request_after(mark, TIMEOUT)
        # Closed for piling up frames, long before send_timeout; upstream closed.
        await record.wait_ended(TIMEOUT)
        assert record.disconnected
        assert await read_until_closed(stalled) == (4008, "slow reader")


async def test_a_generation_paused_by_its_reader_does_not_time_out(start_server, fake):
    # The generation stops reading its upstream while its held text is at the
    # bound; that wait is tokenwire's, not the provider's silence.
    word = "w" * 2000
    tokens = 16_000  # 32 MB: the held text reaches its bound
    settings = {"idle_timeout": 0.3, "send_timeout": 10}
    async with start_server(**settings) as handle:
        mark = fake.mark()
        stalled = await _stalled_client(handle.url, "big", {"tokens": tokens, "word": word})
        record = await fake.request_after(mark, TIMEOUT)
        await asyncio.sleep(1.5)  # five idle_timeouts while the reader sleeps
        assert record.chunks_sent < tokens  # the generation was paused, not finished
        builder, _ = await _read_all(stalled, "big")
        result = builder.result()
        assert result.error is None, result.error
        assert result.reason == "stop"
        assert result.content == "".join(f"{word}{i} " for i in range(tokens))
        await stalled.close()


async def test_a_reader_that_leaves_bytes_in_the_transport_is_closed(start_server, fake):
    # The last frames of an answer were written whole into the transport's
    # buffer (under its high-water mark, so no write ever blocked); the reader
    # never takes them. That counts as a blocked write.
    async with start_server(send_timeout=1) as handle:
        mark = fake.mark()
        stalled = await _stalled_client(handle.url, "g", {"tokens": 0})  # a warm-up answer
        await fake.request_after(mark, TIMEOUT)
        (session,) = handle.server.connections
        # Every write now stays under the high-water mark: none ever blocks.
        session._ws.transport.set_write_buffer_limits(high=1 << 30)
        word = "w" * 1000
        message = {"type": "generate", "id": "long", "model": "fake"}
        message["messages"] = say(tokens=12_000, word=word)  # 12 MB, past the kernel's buffers
        mark = fake.mark()
        await stalled.send(json.dumps(message))
        record = await fake.request_after(mark, TIMEOUT)
        started = asyncio.get_running_loop().time()
        # The whole answer sits in buffers; the client reads nothing, and the
        # server gives up on it (send_timeout, then the close handshake's few
        # seconds before the TCP connection is aborted).
        await record.wait_ended(TIMEOUT)
        await asyncio.wait_for(handle.server.no_sessions.wait(), TIMEOUT)
        waited = asyncio.get_running_loop().time() - started
        assert waited < 6, f"closed after {waited:.1f} s with send_timeout 1 s"
        await read_until_closed(stalled)
