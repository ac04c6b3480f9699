"""An OpenAI-format stream's bytes: bodies read (inflated, bounded) and
chunks decoded into deltas, for the native path (``native.py``) and the
guard around LiteLLM's HTTP (``guard.py``). No LiteLLM code runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from typing import Any, Final

import aiohttp
import msgspec
from aiohttp import hdrs

from tokenwire.protocol import Delta, ErrorCode, ToolCallDelta, sanitize
from tokenwire.protocol.validation import quote

from .failures import UpstreamFailure

# -- the stream's chunks, as msgspec decodes them (unknown fields ignored) ----


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: Any = None  # checked by tool_call_deltas, as on LiteLLM's path
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | msgspec.UnsetType | None = msgspec.UNSET
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: Any = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: Any = None


class _Usage(msgspec.Struct):
    # Any: a provider's counts may be floats, negative or past 64 bits;
    # sanitize.usage makes them counts.
    prompt_tokens: Any = 0
    completion_tokens: Any = 0
    total_tokens: Any = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None


_decode_chunk: Final = msgspec.json.Decoder(_Chunk).decode


def decode_chunk(data: bytes) -> _Chunk:
    """A chunk; msgspec refuses a lone surrogate escape (``"\\ud83d"``, half
    of a character a provider split across chunks), Python's decoder takes
    it, and the assembler joins the halves."""
    try:
        return _decode_chunk(data)
    except msgspec.DecodeError:
        try:
            return msgspec.convert(json.loads(data), _Chunk)
        except (ValueError, msgspec.ValidationError):
            pass
        raise


DONE: Final = b"[DONE]"
EMPTY: Final = Delta()
READ_BYTES: Final = 64 * 1024
"""Bytes taken from the socket (or inflated) per read; the loop gets a turn after each."""
MAX_ERROR_BODY: Final = 16 * 1024
"""Characters of an error response's body read and handed to LiteLLM's error mapping."""
MAX_INFLATE_RATIO: Final = 100
"""How many times its size a compressed answer may inflate (SSE compresses ≈10×)."""


def inflater_of(response: aiohttp.ClientResponse) -> Callable[[bytes], Iterator[bytes]] | None:
    return inflater(response.headers.get(hdrs.CONTENT_ENCODING, "identity"))


async def read_body(
    response: aiohttp.ClientResponse, inflate: Callable[[bytes], Iterator[bytes]] | None
) -> AsyncGenerator[bytes]:
    """A response's body, read by read (``READ_BYTES`` at most), inflated with
    ``inflate`` where the provider compressed it, a turn to the loop after
    each inflated piece (inflating never waits on the network)."""
    while data := await response.content.read(READ_BYTES):
        if inflate is None:
            yield data
            continue
        for piece in inflate(data):
            yield piece
            await asyncio.sleep(0)


def inflater(encoding: str) -> Callable[[bytes], Iterator[bytes]] | None:
    """For a body the provider compressed although asked not to: a function
    from each read to its inflated pieces (``READ_BYTES`` at most each),
    refusing a body that inflates more than ``MAX_INFLATE_RATIO`` times past
    its first MiB (a decompression bomb). None for an uncompressed body
    (``encoding`` is the ``Content-Encoding``)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UpstreamFailure(
            ErrorCode.UPSTREAM_ERROR, f"the provider's answer is {quote(encoding)}-encoded"
        )
    decompressor = zlib.decompressobj(wbits=47)  # gzip or zlib, by the header
    taken = 0
    made = 0

    def inflate(data: bytes) -> Iterator[bytes]:
        nonlocal taken, made
        taken += len(data)
        while data:
            piece = decompressor.decompress(data, READ_BYTES)
            data = decompressor.unconsumed_tail
            made += len(piece)
            if made > 1 << 20 and made > MAX_INFLATE_RATIO * taken:
                raise UpstreamFailure(
                    ErrorCode.UPSTREAM_ERROR,
                    f"the provider's compressed answer inflates more than {MAX_INFLATE_RATIO}×",
                )
            if piece:
                yield piece

    return inflate


async def read_bounded(
    response: aiohttp.ClientResponse, limit: int = MAX_ERROR_BODY, *, whole: bool = False
) -> str:
    """At most ``limit`` characters of a (possibly compressed) body, as text
    (``whole``: all of it, or nothing when it is longer, as LiteLLM's path
    has it through ``guard``: a body cut short carries no message).

    An error body is read only this far: LiteLLM's error mapping (its
    secret-redaction regex) is superlinear in the text's length (a 2 MB body
    took 3.7 s of the loop), and a compressed one may be a bomb.
    """
    inflate = inflater_of(response)
    body = b""
    try:
        async with contextlib.aclosing(read_body(response, inflate)) as pieces:
            async for piece in pieces:
                body += piece
                if len(body) >= limit:
                    break
    except (aiohttp.ClientError, UpstreamFailure):
        if whole:
            return ""
        # what was read is the error's text
    if whole and len(body) >= limit:
        return ""
    return body[:limit].decode("utf-8", "replace")


def to_delta(chunk: _Chunk) -> Delta:
    usage = None
    if (raw := chunk.usage) is not None:
        details = raw.prompt_tokens_details
        completion_details = raw.completion_tokens_details
        usage = sanitize.usage(
            raw.prompt_tokens,
            raw.completion_tokens,
            raw.total_tokens,
            cached=details.cached_tokens if details is not None else None,
            reasoning=completion_details.reasoning_tokens
            if completion_details is not None
            else None,
        )
    if not chunk.choices:
        return Delta(usage=usage) if usage is not None else EMPTY
    choice = chunk.choices[0]
    delta = choice.delta
    if delta is None:
        return Delta(finish_reason=choice.finish_reason, usage=usage)
    # LiteLLM's plain handler moves `reasoning` over `reasoning_content`.
    reasoning = delta.reasoning_content if delta.reasoning is msgspec.UNSET else delta.reasoning
    return Delta(
        text=delta.content or "",
        reasoning=reasoning or "",
        tool_calls=tool_call_deltas(delta.tool_calls) if delta.tool_calls else (),
        finish_reason=choice.finish_reason,
        usage=usage,
    )


def tool_call_deltas(calls: Iterable[Any]) -> tuple[ToolCallDelta, ...]:
    """OpenAI-shaped tool-call fragments (LiteLLM's models or this module's
    Structs: the same fields), normalized."""
    deltas = []
    for call in calls:
        index = call.index or 0
        if not (isinstance(index, int) and 0 <= index <= sanitize.MAX_TOOL_CALL_INDEX):
            raise UpstreamFailure(
                ErrorCode.UPSTREAM_ERROR, f"the provider sent tool call index {quote(index)}"
            )
        function = call.function
        deltas.append(
            ToolCallDelta(
                index=int(index),
                call_id=call.id,
                name=function.name if function else None,
                arguments=(function.arguments or "") if function else "",
            )
        )
    return tuple(deltas)
