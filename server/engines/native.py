"""The native streaming path: LiteLLM builds the request, tokenwire reads the stream.

LiteLLM's ``acompletion`` stream costs about 1 ms of CPU per chunk (it
rebuilds every chunk as pydantic models and keeps them all until the end);
reading an SSE stream and decoding each line with msgspec costs about 20 µs.
So for a deployment whose provider streams plain OpenAI-format SSE — the
providers whose LiteLLM stream iterator is LiteLLM's plain OpenAI handler
(``openai``, ``hosted_vllm``, ``vllm``, ``deepseek``, ``together_ai``,
``cerebras``, ``lm_studio``, ...) — tokenwire asks LiteLLM for everything
that is provider knowledge (provider and model resolution, parameter mapping,
authentication headers, URL, request body, request signing, error classes
and their mapping) and then streams the response itself, on one shared
aiohttp session per process. No LiteLLM code runs per chunk.

It keeps the behaviours of LiteLLM's plain handler: ``delta.reasoning`` is
reasoning (and wins over ``reasoning_content``, as there), an in-stream
``{"error": ...}`` fails the generation with the error's code, and a usage
chunk is read whatever its ``choices``.

A deployment whose provider or ``litellm_params`` this module does not know
stays on LiteLLM's own path (``native_route`` returns None).
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import msgspec
from aiohttp import hdrs

from tokenwire.protocol import Delta, ErrorCode
from tokenwire.protocol.sse import EventTooLarge, SseParser
from tokenwire.protocol.validation import quote

from ..sessions.builder import BUILDER
from .chunks import (
    DONE,
    EMPTY,
    decode_chunk,
    inflater_of,
    read_body,
    read_bounded,
    to_delta,
)
from .failures import UpstreamFailure
from .litellm_adapter import (
    APIConnectionError,
    BaseConfig,
    OpenAIChatCompletionStreamingHandler,
    exception_type,
    extract_stream_error,
    get_llm_provider,
    get_optional_params,
    provider_chat_config,
)

# Deployment `litellm_params` the native path understands. A deployment with
# any other key (a provider-specific option, a custom pricing table, a
# pre-call hook...) keeps LiteLLM's full path, which knows what it means.
# `timeout` and `stream_timeout` bound LiteLLM's HTTP client; on the native
# path tokenwire's own first_token_timeout and idle_timeout bound the stream.
_ROUTING_KEYS: Final = frozenset(
    {
        "model",
        "api_key",
        "api_base",
        "custom_llm_provider",
        "max_retries",
        "timeout",
        "stream_timeout",
        "rpm",
        "tpm",
        "extra_headers",
    }
)
_SAMPLING_KEYS: Final = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "reasoning_effort",
        "n",
        "user",
        "logit_bias",
        "parallel_tool_calls",
    }
)
_DEPLOYMENT_KEYS: Final = _ROUTING_KEYS | _SAMPLING_KEYS


LARGE_BODY: Final = 1 << 20
THREAD_MESSAGES: Final = 2_000
"""Messages past which a request's body is built off the event loop."""
SSE_TYPES: Final = ("text/event-stream",)


@dataclass(frozen=True, slots=True)
class NativeRoute:
    """How to reach one deployment natively: LiteLLM's resolution of it."""

    model: str
    """The provider's own model name (``gpt-4o`` for ``openai/gpt-4o``)."""
    provider: str
    config: BaseConfig
    api_key: str | None = field(repr=False)  # never in a log line
    api_base: str | None
    extra_headers: Mapping[str, str] = field(repr=False)
    defaults: Mapping[str, Any]
    """Sampling parameters the deployment sets; a request's own win."""
    params_cache: dict[bytes, dict[str, Any]] = field(default_factory=dict, compare=False)


def native_route(litellm_params: Mapping[str, Any]) -> NativeRoute | None:
    """The native route to a deployment, or None when it must use LiteLLM's path.

    Keys left unset (None, False: the Router fills in several such defaults)
    do not count; any other key the native path does not know keeps the
    deployment on LiteLLM's path.
    """
    if not {k for k, v in litellm_params.items() if v is not None and v is not False} <= (
        _DEPLOYMENT_KEYS
    ):
        return None
    if litellm_params.get("max_retries"):  # the OpenAI SDK's own retries: LiteLLM's path
        return None
    try:
        model, provider, dynamic_key, api_base = get_llm_provider(
            model=str(litellm_params["model"]),
            custom_llm_provider=litellm_params.get("custom_llm_provider"),
            api_base=litellm_params.get("api_base"),
            api_key=litellm_params.get("api_key"),
        )
        config = provider_chat_config(model, provider)
        if config is None:
            return None
        iterator = config.get_model_response_iterator(
            streaming_response=iter(()), sync_stream=False, json_mode=False
        )
    except Exception:  # a provider LiteLLM resolves differently: its own path decides
        return None
    if type(iterator) is not OpenAIChatCompletionStreamingHandler:
        return None
    api_key = litellm_params.get("api_key") or dynamic_key
    get_api_key = getattr(config, "get_api_key", None)
    if callable(get_api_key):
        api_key = get_api_key(api_key)
    get_api_base = getattr(config, "get_api_base", None)
    if callable(get_api_base):
        api_base = get_api_base(api_base)
    return NativeRoute(
        model=model,
        provider=provider,
        config=config,
        api_key=api_key,
        api_base=api_base,
        extra_headers=dict(litellm_params.get("extra_headers") or {}),
        defaults={k: v for k, v in litellm_params.items() if k in _SAMPLING_KEYS},
    )


class HttpClient:
    """The process's one aiohttp session for upstream streams, opened on first use."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No connection cap of the client's own (aiohttp's default is 100):
            # the streams are already bounded by max_sessions × max_generations.
            # No total timeout either: first_token_timeout and idle_timeout
            # bound a stream.
            # No automatic decompression: requests ask for `identity`, and a
            # provider that compresses anyway is inflated within bounds, a
            # read at a time (see _inflater); aiohttp's own decoder refills
            # its buffer by itself, never yielding, and has no bound.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class NativeStream:
    """An open upstream response: batches of deltas, one batch per network read."""

    def __init__(
        self, route: NativeRoute, response: aiohttp.ClientResponse, *, max_event_bytes: int
    ) -> None:
        self.route = route
        self.response = response
        self.max_event_bytes = max_event_bytes

    async def batches(self) -> AsyncIterator[list[Delta]]:
        """The stream's deltas, a batch per network read, until ``[DONE]`` or EOF.

        Each read takes what aiohttp holds (at most ``READ_BYTES``), so the
        next one waits for the loop to receive more: a fast stream gives the
        loop a turn per read and cannot starve other sessions (docs/traps.md).
        aiohttp's buffer is bounded by its flow control; a stream the
        provider compressed anyway is inflated ``READ_BYTES`` at a time, with
        a turn after each piece (inflating never waits on the network). A
        stream that ends with neither ``[DONE]`` nor a finish reason was cut:
        it fails, so a truncated answer never looks complete.
        """
        parser = SseParser(self.max_event_bytes)
        finished = False
        async for data in self._reads():
            batch: list[Delta] = []
            try:
                for event in parser.feed(data) if data else parser.close():
                    delta = self._parse(event)
                    if delta is None:  # [DONE]
                        if batch:
                            yield batch
                        return
                    if delta is not EMPTY:
                        finished = finished or delta.finish_reason is not None
                        batch.append(delta)
            except Exception as exc:
                if batch:  # what came before the bad event goes out first
                    yield batch
                raise self._mid_stream(exc) from exc
            if batch:
                yield batch
        if not finished:
            raise UpstreamFailure(
                ErrorCode.UPSTREAM_ERROR,
                "the provider's stream ended without [DONE] or a finish reason (cut short)",
            )

    async def _reads(self) -> AsyncIterator[bytes]:
        """The body's bytes, read by read and inflated within bounds; ``b""`` at its end."""
        inflate = inflater_of(self.response)
        try:
            async for data in read_body(self.response, inflate):
                yield data
        except aiohttp.ClientError as exc:  # cut mid-stream
            raise self._mid_stream(exc) from exc
        yield b""

    def _parse(self, data: bytes) -> Delta | None:
        """One event's data: a Delta, ``EMPTY`` for an event without one, None at ``[DONE]``."""
        if data == DONE:
            return None
        if not data.strip():
            return EMPTY
        chunk = decode_chunk(data)  # a malformed event raises: see _mid_stream
        if chunk.error:
            raise _in_stream_error(self.route, chunk.error)
        return to_delta(chunk)

    def _mid_stream(self, exc: Exception) -> Exception:
        """A failure after the response began, raised as LiteLLM's stream raises
        it: an ``APIConnectionError`` (a cut, a malformed line, an in-stream
        error); one tokenwire can name (an event too large) as it is."""
        if isinstance(exc, UpstreamFailure):
            return exc
        if isinstance(exc, EventTooLarge):
            return UpstreamFailure(
                ErrorCode.UPSTREAM_ERROR,
                f"the provider sent an event longer than {exc.limit} bytes "
                "(server.max_upstream_event_bytes)",
            )
        route = self.route
        return APIConnectionError(
            message=f"{type(exc).__name__}: {exc}", llm_provider=route.provider, model=route.model
        )

    async def close(self) -> None:
        """Release a completely read response to the pool; close any other."""
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()


def _in_stream_error(route: NativeRoute, error: Any) -> Exception:
    """An in-stream ``{"error": ...}``, raised as LiteLLM's plain handler raises it."""
    message, status = extract_stream_error(error) or ("upstream error", 500)
    return _mapped(route, route.config.get_error_class(message, status, {}))


def _mapped(route: NativeRoute, error: Exception) -> Exception:
    """LiteLLM's own exception for a provider error, as its path would raise it."""
    try:
        exception_type(  # type: ignore[no-untyped-call]
            model=route.model, original_exception=error, custom_llm_provider=route.provider
        )
    except Exception as mapped:
        return mapped
    return error  # pragma: no cover - exception_type always raises


_PARAMS_CACHE_SIZE: Final = 1024
_encode_key: Final = msgspec.json.Encoder(order="sorted").encode


def _optional_params(
    route: NativeRoute, messages: list[dict[str, Any]], request: Mapping[str, Any]
) -> dict[str, Any]:
    """LiteLLM's mapping of the request's parameters for the provider.

    ``get_optional_params`` costs ≈0.2 ms, most of a request's set-up, and
    for these providers depends only on the parameters (not on the
    messages), which clients mostly repeat: its answers are kept, per route,
    for the last ``_PARAMS_CACHE_SIZE`` distinct parameter sets.
    """
    key = _encode_key(request)
    cached = route.params_cache.get(key)
    if cached is None:
        if len(route.params_cache) >= _PARAMS_CACHE_SIZE:
            route.params_cache.clear()
        cached = route.params_cache[key] = get_optional_params(
            model=route.model,
            custom_llm_provider=route.provider,
            stream=True,
            stream_options={"include_usage": True},
            messages=messages,  # type: ignore[arg-type]
            **{**route.defaults, **request},
        )
    # transform_request pops and sets top-level keys: each request gets its
    # own dict (the nested values are only read).
    return dict(cached)


async def open_stream(
    http: HttpClient,
    route: NativeRoute,
    messages: list[dict[str, Any]],
    request: Mapping[str, Any],
    *,
    max_event_bytes: int,
) -> NativeStream:
    """Send the request and wait for the response's status.

    ``request`` holds the OpenAI parameters (``tools``, ``tool_choice``,
    sampling params). An error status raises LiteLLM's exception for it, so
    the Router's retries and fallbacks and tokenwire's error codes treat it
    as they treat LiteLLM's path; its body is read up to ``MAX_ERROR_BODY``.
    A success that is not an event stream (an HTML page, a JSON body) fails
    with ``upstream_error`` naming what came instead.
    """
    config = route.config
    optional_params = _optional_params(route, messages, request)
    litellm_params = {"custom_llm_provider": route.provider, "api_base": route.api_base}
    headers = config.validate_environment(
        headers=dict(route.extra_headers),
        model=route.model,
        messages=messages,  # type: ignore[arg-type]
        optional_params=optional_params,
        litellm_params=litellm_params,
        api_key=route.api_key,
        api_base=route.api_base,
    )
    url = config.get_complete_url(
        api_base=route.api_base,
        api_key=route.api_key,
        model=route.model,
        optional_params=optional_params,
        litellm_params=litellm_params,
        stream=True,
    )
    transform = functools.partial(
        config.transform_request,
        model=route.model,
        messages=messages,  # type: ignore[arg-type]
        optional_params=optional_params,
        litellm_params=litellm_params,
        headers=headers,
    )
    # LiteLLM's transformation copies every message (≈1.7 µs each: 55,000
    # messages held the loop 90 ms); a long prompt's is built on the one
    # builder thread (builder.py), which the loop preempts every few ms.
    if len(messages) > THREAD_MESSAGES:
        body = await BUILDER.run(transform)
    else:
        body = transform()
    # The OpenAI SDK (LiteLLM's path) merges `extra_body` into the body.
    body.update(body.pop("extra_body", None) or {})
    body["stream"] = True
    headers, signed = config.sign_request(
        headers=headers,
        optional_params=optional_params,
        request_data=body,
        api_base=url,
        api_key=route.api_key,
        model=route.model,
        stream=True,
    )
    encoded = signed if signed is not None else msgspec.json.encode(body)
    # aiohttp writes a large bytes body in one piece (and warns); a file-like it streams.
    data = io.BytesIO(encoded) if len(encoded) > LARGE_BODY else encoded
    headers = {**headers, hdrs.ACCEPT_ENCODING: "identity"}
    try:
        response = await http.session().post(url, data=data, headers=headers)
    except aiohttp.ClientError as exc:
        error = APIConnectionError(str(exc), route.provider, route.model)
        raise _mapped(route, error) from exc
    if response.status >= 400:
        with contextlib.closing(response):
            text = await read_bounded(response, whole=True)
        raise _mapped(route, config.get_error_class(text, response.status, dict(response.headers)))
    if response.content_type not in SSE_TYPES:
        with contextlib.closing(response):
            first = await read_bounded(response, 64)
        raise UpstreamFailure(
            ErrorCode.UPSTREAM_ERROR,
            f"the provider answered {quote(response.content_type)} instead of an event stream "
            f"(HTTP {response.status}, starting {quote(first, 48)})",
        )
    return NativeStream(route, response, max_event_bytes=max_event_bytes)
