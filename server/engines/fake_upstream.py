"""A fake OpenAI-compatible upstream: ``POST /v1/chat/completions`` streaming SSE.

For tests and benchmarks: LiteLLM talks real HTTP to it. Each request is
scripted by its last user message: ``fake:`` followed by a JSON ``Scenario``
(``fake:{"tokens": 5, "interval": 0.01}``); any other message gets the
server's default scenario. Every request is recorded (``requests``): when it
opened, when its handler ended, and whether the client went away before the
response was complete — which is how the tests see that a cancel closed the
upstream request.

Run it alone with ``tokenwire fake-upstream --port 9000``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from aiohttp import web

SCENARIO_PREFIX: Final = "fake:"
IN_STREAM_ERROR: Final = (
    b'data: {"error": {"message": "fake in-stream error", "type": "server_error", "code": 500}}\n\n'
)


class FakeToolCall(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    arguments: str = "{}"
    fragment_chars: int = 8
    repeat: int = 1
    """The arguments are ``arguments`` this many times over (large calls, small requests)."""


class Scenario(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the fake answers one request. Counts are chunks; times are seconds."""

    tokens: int = 8
    """Content chunks, ``"{word}{i} "`` each, unless ``text`` is given."""
    word: str = "tok"
    text: list[str] | None = None
    """Explicit content chunks, instead of ``tokens``."""
    echo_roles: bool = False
    """The content is the roles of the request's messages, a chunk each
    (``"user "``, ``"assistant "``, ...): what history a request carried,
    seen from another process."""
    reasoning: int = 0
    """Reasoning chunks (``delta.reasoning_content``) before the content."""
    reasoning_field: str = "reasoning_content"
    """The delta field reasoning comes in (vLLM and others: ``reasoning``)."""
    tool_calls: list[FakeToolCall] = []
    after_tool: list[str] | None = None
    """The answer (content chunks, no tool calls) to a request whose last
    message is a tool's result: a tool loop's next turn (an agent runs the
    call, sends its result, and gets this)."""
    interval: float = 0.0
    """Pause between chunks."""
    first_delay: float = 0.0
    """Pause after the response headers, before the first chunk."""
    usage: bool = True
    """Send a usage chunk when the request asks for one (``stream_options``)."""
    usage_in_finish: bool = False
    """Put the usage in the finish chunk (``choices`` not empty) instead of a chunk of its own."""
    finish_reason: str | None = None
    """Default: ``tool_calls`` when there are tool calls, else ``stop``."""
    status: int = 200
    """An HTTP error status instead of a stream."""
    status_model: str | None = None
    """Answer ``status`` only to requests for this model (others stream): fallbacks."""
    retry_after: str | None = None
    """``Retry-After`` header of an error response."""
    cut_after: int | None = None
    """Abort the TCP connection after this many chunks."""
    hang_after: int | None = None
    """Send nothing more after this many chunks (the connection stays open)."""
    malformed_after: int | None = None
    """Send a line that is not JSON after this many chunks."""
    error_after: int | None = None
    """Send an in-stream ``{"error": ...}`` after this many chunks."""
    # -- a hostile upstream: the body is whatever these say ----------------
    raw: list[str] | None = None
    """Write these pieces verbatim as the body (one write each, ``interval``
    apart), nothing else: exact SSE framing, lone surrogate escapes, odd
    usage. Encoded as UTF-8 (``surrogatepass``)."""
    content_type: str = "text/event-stream"
    gzip: bool = False
    """Send the body gzip-compressed (``Content-Encoding: gzip``), whatever
    the request's ``Accept-Encoding`` says."""
    bomb: int = 0
    """A gzip body that inflates to this many bytes of ``a`` (no newline),
    with ``status``: a decompression bomb."""
    long_line: int = 0
    """Stream one line of this many bytes, without a newline."""
    error_body: int = 0
    """An error response (``status``) whose body is this many bytes."""
    abort: bool = False
    """After ``raw``, abort the TCP connection instead of ending the body."""


@dataclass
class RequestRecord:
    """What the fake saw of one request."""

    number: int
    body: dict[str, Any]
    scenario: Scenario
    opened_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    chunks_sent: int = 0
    disconnected: bool = False
    """The client closed the connection before the response was complete."""
    accept_encoding: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_ended(self, timeout: float) -> float:
        """Seconds from now until the handler ended (raises TimeoutError)."""
        async with asyncio.timeout(timeout):
            await self.ended.wait()
        assert self.ended_at is not None
        return self.ended_at


_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class FakeUpstream:
    """The fake server; ``async with FakeUpstream() as fake: fake.base_url``."""

    def __init__(self, default: Scenario | None = None) -> None:
        self.default = default or Scenario()
        self.requests: list[RequestRecord] = []
        self._numbers = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._new_request = asyncio.Condition()
        self.base_url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=64 << 20)  # large prompts, as providers take
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/chat/completions", self._completions)
        # Cancel a handler when its client goes away: that is the moment a
        # cancel reached the upstream, and the moment the fake records.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        bound_port = sockets[0].getsockname()[1]
        self.base_url = f"http://{host}:{bound_port}/v1"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def mark(self) -> int:
        """Where the record stands now: take it *before* triggering a request,
        then ``await request_after(mark, timeout)`` (a request can arrive
        before the line after the trigger runs)."""
        return len(self.requests)

    async def request_after(self, mark: int, timeout: float) -> RequestRecord:
        """The first request to arrive after ``mark``."""
        async with asyncio.timeout(timeout), self._new_request:
            await self._new_request.wait_for(lambda: len(self.requests) > mark)
        return self.requests[mark]

    def scenario_for(self, body: dict[str, Any]) -> Scenario:
        for message in reversed(body.get("messages") or []):
            if message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, list):  # content parts: the last text part scripts
                texts = [p.get("text") for p in content if isinstance(p, dict)]
                content = next((t for t in reversed(texts) if isinstance(t, str)), None)
            if isinstance(content, str) and content.startswith(SCENARIO_PREFIX):
                scenario = msgspec.json.decode(content[len(SCENARIO_PREFIX) :], type=Scenario)
                if scenario.echo_roles:
                    roles = [f"{m.get('role')} " for m in body.get("messages") or []]
                    scenario = msgspec.structs.replace(scenario, text=roles)
                last = (body.get("messages") or [{}])[-1]
                if scenario.after_tool is not None and last.get("role") == "tool":
                    scenario = msgspec.structs.replace(
                        scenario, text=scenario.after_tool, tool_calls=[]
                    )
                return scenario
            break
        return self.default

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = _decoder.decode(await request.read())
            scenario = self.scenario_for(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return web.json_response(
                {"error": {"message": str(exc), "type": "invalid_request"}}, status=400
            )
        record = RequestRecord(
            number=next(self._numbers),
            body=body,
            scenario=scenario,
            accept_encoding=request.headers.get("Accept-Encoding"),
        )
        self.requests.append(record)
        async with self._new_request:
            self._new_request.notify_all()
        try:
            return await self._respond(request, record)
        except (asyncio.CancelledError, ConnectionResetError):
            record.disconnected = True
            raise
        finally:
            record.ended_at = time.monotonic()
            record.ended.set()

    async def _respond(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        scenario = record.scenario
        if scenario.raw is not None or scenario.bomb or scenario.long_line or scenario.error_body:
            return await _hostile(request, record)
        failing = scenario.status_model in (None, record.body.get("model"))
        if scenario.status != 200 and failing:
            headers = {"Retry-After": scenario.retry_after} if scenario.retry_after else None
            return web.json_response(
                {
                    "error": {
                        "message": f"fake error {scenario.status}",
                        "type": "fake",
                        "code": None,
                    }
                },
                status=scenario.status,
                headers=headers,
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if scenario.first_delay:
            await asyncio.sleep(scenario.first_delay)
        model = str(record.body.get("model", "fake"))
        stream_options = record.body.get("stream_options") or {}
        events = _events(scenario, model, want_usage=bool(stream_options.get("include_usage")))
        for n, data in enumerate(events):
            if n and scenario.interval:
                await asyncio.sleep(scenario.interval)
            if scenario.cut_after is not None and n == scenario.cut_after:
                assert request.transport is not None
                request.transport.abort()
                record.disconnected = False
                return response
            if scenario.hang_after is not None and n == scenario.hang_after:
                await asyncio.Event().wait()  # until the client goes away
            if scenario.malformed_after is not None and n == scenario.malformed_after:
                await response.write(b"data: {this is not json\n\n")
                continue
            if scenario.error_after is not None and n == scenario.error_after:
                await response.write(IN_STREAM_ERROR)
                break
            await response.write(data)
            record.chunks_sent += 1
        else:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _hostile(request: web.Request, record: RequestRecord) -> web.StreamResponse:
    """The answers of a hostile upstream (``raw``, ``bomb``, ``long_line``, ``error_body``)."""
    scenario = record.scenario
    headers = {"Content-Type": scenario.content_type}
    if scenario.gzip or scenario.bomb:
        headers["Content-Encoding"] = "gzip"
    status = scenario.status if scenario.error_body or scenario.bomb else 200
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    compressor = zlib.compressobj(9, wbits=31) if "Content-Encoding" in headers else None

    async def write(data: bytes) -> None:
        if compressor is not None:
            data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        await response.write(data)

    if scenario.bomb:
        block = b"a" * (1 << 20)
        for _ in range(scenario.bomb >> 20):
            await write(block)
    elif scenario.long_line:
        block = b"x" * (1 << 16)
        await write(b"data: ")
        for _ in range(scenario.long_line >> 16):
            await write(block)
    elif scenario.error_body:
        await write(b'{"error": {"message": "' + b"e" * scenario.error_body + b'"}}')
    else:
        for n, piece in enumerate(scenario.raw or ()):
            if n and scenario.interval:
                await asyncio.sleep(scenario.interval)
            await write(piece.encode("utf-8", "surrogatepass"))
            record.chunks_sent += 1
        if scenario.abort:
            assert request.transport is not None
            request.transport.abort()
            return response
    if compressor is not None:
        await response.write(compressor.flush())
    await response.write_eof()
    return response


def _events(scenario: Scenario, model: str, *, want_usage: bool) -> Iterator[bytes]:
    """The stream's SSE events, in order (without ``[DONE]``), made as they are sent.

    Content chunks, the bulk of any stream, are spliced from pre-encoded
    pieces: the fake must outrun every gateway it is used to measure.
    """
    head = b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,"model":'
    head += _encoder.encode(model) + b',"choices":[{"index":0,"delta":'
    tail = b',"finish_reason":null}]}\n\n'
    content = head + b'{"role":"assistant","content":'

    def event(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + _encoder.encode(chunk) + b"\n\n"

    for i in range(scenario.reasoning):
        yield event({"role": "assistant", scenario.reasoning_field: f"think{i} "})
    if scenario.text is not None:
        texts: Iterable[str] = scenario.text
    else:
        texts = (f"{scenario.word}{i} " for i in range(scenario.tokens))
    for text in texts:
        yield content + _encoder.encode(text) + b"}" + tail
    for index, call in enumerate(scenario.tool_calls):
        size = max(call.fragment_chars, 1)
        arguments = call.arguments * call.repeat
        pieces = [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
        for j, piece in enumerate(pieces):
            fragment: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
            if j == 0:
                fragment["id"] = f"call_fake_{index}"
                fragment["type"] = "function"
                fragment["function"]["name"] = call.name
            yield event({"role": "assistant", "tool_calls": [fragment]})
    finish = scenario.finish_reason or ("tool_calls" if scenario.tool_calls else "stop")
    usage = None
    if scenario.usage and want_usage:
        text_chunks = len(scenario.text) if scenario.text is not None else scenario.tokens
        completion = text_chunks + scenario.reasoning + len(scenario.tool_calls)
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": completion,
            "total_tokens": 7 + completion,
        }
    if scenario.usage_in_finish:
        yield event({}, finish, usage)
        return
    yield event({}, finish)
    if usage is not None:
        yield event(None, usage=usage)


async def serve(host: str, port: int, default: Scenario) -> None:
    """Run until cancelled (the ``tokenwire fake-upstream`` command)."""
    fake = FakeUpstream(default)
    url = await fake.start(host, port)
    print(f"fake upstream listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()
