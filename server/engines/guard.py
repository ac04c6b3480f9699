"""LiteLLM's HTTP, guarded against a hostile upstream.

On the native path tokenwire reads the provider's bytes itself
(``native.py``); on LiteLLM's path they go through httpx and the provider's
SDK. This module puts one httpx transport around every transport LiteLLM
makes, so that LiteLLM's path holds the same bounds:

- requests ask for ``Accept-Encoding: identity``; a provider that compresses
  anyway is inflated here, a bounded piece at a time, and a body that
  inflates more than ``chunks.MAX_INFLATE_RATIO`` times is refused (httpx would
  inflate a gzip bomb whole: 1 GiB held, the loop blocked for seconds);
- an error body is cut at ``MAX_ERROR_BODY`` (LiteLLM's secret-redaction
  regex on the error text is superlinear: a 2 MB body held the loop 3.7 s);
- a line longer than ``max_event_bytes`` ends the stream (a 200 MB line held
  the loop 17 s in the SDK's line decoder);
- the loop gets a turn after every piece;
- an OpenAI-format chat stream (``…/chat/completions`` with ``stream: true``)
  must be an event stream (an HTML page or a JSON body is named in the
  error), and must end with ``[DONE]`` or a finish reason: LiteLLM's path
  otherwise reports an empty or truncated answer as a complete ``stop``.

A failure raised here carries its ``UpstreamFailure`` (``GuardError``), which
``failures.classify`` finds through LiteLLM's wrapping.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import msgspec

from tokenwire.protocol import ErrorCode
from tokenwire.protocol.validation import quote

from .chunks import MAX_ERROR_BODY, inflater
from .failures import GUARD_FAILURE, UpstreamFailure

_FINISHED: Final = re.compile(rb'\[DONE\]|"finish_reason"\s*:\s*"')
_TAIL: Final = 64
"""Bytes of one piece kept to find a marker split across two pieces."""


class GuardError(httpx.TransportError):
    """A bound of this module was hit; ``failure`` is what the client is told
    (also left in ``failures.GUARD_FAILURE``: LiteLLM does not always chain
    this exception to the one it raises)."""

    def __init__(self, failure: UpstreamFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure
        if (box := GUARD_FAILURE.get()) is not None:
            box.append(failure)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport around another, holding this module's bounds."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, max_event_bytes: int) -> None:
        self._inner = inner
        self._max_event_bytes = max_event_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = await self._inner.handle_async_request(request)
        headers = httpx.Headers(response.headers)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        inflate = None
        if encoding not in ("", "identity"):
            try:
                inflate = inflater(encoding)
            except UpstreamFailure as failure:
                await response.aclose()
                raise GuardError(failure) from None
            del headers["content-encoding"]
            headers.pop("content-length", None)
        chat_stream = response.status_code < 400 and _is_chat_stream(request)
        if chat_stream:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "text/event-stream":
                first = b""
                async for piece in _pieces(response, inflate, self._max_event_bytes, 64):
                    first += piece
                    if len(first) >= 64:
                        break
                await response.aclose()
                raise GuardError(
                    UpstreamFailure(
                        ErrorCode.UPSTREAM_ERROR,
                        f"the provider answered {quote(content_type)} instead of an event stream "
                        f"(HTTP {response.status_code}, starting "
                        f"{quote(first[:64].decode('utf-8', 'replace'), 48)})",
                    )
                )
        limit = MAX_ERROR_BODY if response.status_code >= 400 else None
        stream = _GuardedStream(
            response, inflate, self._max_event_bytes, limit, check_end=chat_stream
        )
        return httpx.Response(
            status_code=response.status_code,
            headers=headers,
            stream=stream,
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_chat_stream(request: httpx.Request) -> bool:
    if request.method != "POST" or not request.url.path.endswith("/chat/completions"):
        return False
    try:
        body = msgspec.json.decode(request.content)
    except (msgspec.DecodeError, httpx.RequestNotRead):
        return False
    return isinstance(body, dict) and body.get("stream") is True


async def _pieces(
    response: httpx.Response, inflate: Any, max_line: int, limit: int | None
) -> AsyncIterator[bytes]:
    """The body, inflated within bounds, a turn to the loop after each piece;
    at most ``limit`` bytes; no line longer than ``max_line``."""
    line = 0
    total = 0
    async for data in response.aiter_raw():
        for piece in inflate(data) if inflate is not None else (data,):
            if limit is not None and total + len(piece) >= limit:
                yield piece[: limit - total]
                return
            total += len(piece)
            newline = max(piece.rfind(b"\n"), piece.rfind(b"\r"))
            line = len(piece) - newline - 1 if newline >= 0 else line + len(piece)
            if line > max_line:
                raise GuardError(
                    UpstreamFailure(
                        ErrorCode.UPSTREAM_ERROR,
                        f"the provider sent an event longer than {max_line} bytes "
                        "(server.max_upstream_event_bytes)",
                    )
                )
            yield piece
            await asyncio.sleep(0)


class _GuardedStream(httpx.AsyncByteStream):
    def __init__(
        self,
        response: httpx.Response,
        inflate: Any,
        max_line: int,
        limit: int | None,
        *,
        check_end: bool,
    ) -> None:
        self._response = response
        self._inflate = inflate
        self._max_line = max_line
        self._limit = limit
        self._check_end = check_end

    async def __aiter__(self) -> AsyncIterator[bytes]:
        finished = not self._check_end
        tail = b""
        async for piece in _pieces(self._response, self._inflate, self._max_line, self._limit):
            if not finished:
                finished = _FINISHED.search(tail + piece) is not None
                tail = piece[-_TAIL:]
            yield piece
        if not finished:
            raise GuardError(
                UpstreamFailure(
                    ErrorCode.UPSTREAM_ERROR,
                    "the provider's stream ended without [DONE] or a finish reason (cut short)",
                )
            )

    async def aclose(self) -> None:
        await self._response.aclose()


def install(max_event_bytes: int) -> None:
    """Guard every httpx transport LiteLLM makes from now on (the OpenAI
    SDK's clients and LiteLLM's own handlers alike)."""
    from .litellm_adapter import AsyncHTTPHandler

    original = getattr(AsyncHTTPHandler.create_async_transport, "__wrapped__", None)
    if original is None:
        original = AsyncHTTPHandler.create_async_transport

    def create_async_transport(*args: Any, **kwargs: Any) -> httpx.AsyncBaseTransport:
        inner = original(*args, **kwargs) or httpx.AsyncHTTPTransport()
        return GuardedTransport(inner, max_event_bytes=max_event_bytes)

    create_async_transport.__wrapped__ = original  # type: ignore[attr-defined]
    AsyncHTTPHandler.create_async_transport = staticmethod(create_async_transport)  # type: ignore[method-assign,assignment]
