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
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import litellm
import msgspec
from litellm.exceptions import APIConnectionError
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.llms.base_llm.chat.transformation import BaseConfig
from litellm.llms.openai.chat.gpt_transformation import OpenAIChatCompletionStreamingHandler
from litellm.types.utils import LlmProviders
from litellm.utils import ProviderConfigManager, get_optional_params

from tokenwire.protocol import Delta, ToolCallDelta, Usage

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


# -- the stream's chunks, as msgspec decodes them (unknown fields ignored) ----


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: int | None = None
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


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None


_decode_chunk: Final = msgspec.json.Decoder(_Chunk).decode
_DONE: Final = b"[DONE]"
_EMPTY: Final = Delta()


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
        model, provider, dynamic_key, api_base = litellm.get_llm_provider(
            model=str(litellm_params["model"]),
            custom_llm_provider=litellm_params.get("custom_llm_provider"),
            api_base=litellm_params.get("api_base"),
            api_key=litellm_params.get("api_key"),
        )
        config = ProviderConfigManager.get_provider_chat_config(
            model=model, provider=LlmProviders(provider)
        )
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
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class NativeStream:
    """An open upstream response: batches of deltas, one batch per network read."""

    def __init__(self, route: NativeRoute, response: aiohttp.ClientResponse) -> None:
        self.route = route
        self.response = response

    async def batches(self) -> AsyncIterator[list[Delta]]:
        """The stream's deltas, a batch per network read, until ``[DONE]`` or EOF.

        Each read takes everything aiohttp holds, so the next one waits for
        the loop to receive more: a fast stream gives the loop a turn per
        read (≤ 64 KiB) and cannot starve other sessions (TRAPS.md).
        """
        read = aiter(self.response.content.iter_any())
        rest = b""
        while True:
            try:
                data = await anext(read)
            except StopAsyncIteration:
                if not rest.strip():
                    return
                data = b"\n"  # a last line without its newline
            except aiohttp.ClientError as exc:  # cut mid-stream
                raise self._mid_stream(exc) from exc
            lines = (rest + data).split(b"\n") if rest else data.split(b"\n")
            rest = lines.pop()
            batch: list[Delta] = []
            try:
                for line in lines:
                    delta = self._parse(line)
                    if delta is None:  # [DONE]
                        if batch:
                            yield batch
                        return
                    if delta is not _EMPTY:
                        batch.append(delta)
            except Exception as exc:
                if batch:  # what came before the bad line goes out first
                    yield batch
                raise self._mid_stream(exc) from exc
            if batch:
                yield batch

    def _parse(self, line: bytes) -> Delta | None:
        """One SSE line: a Delta, ``_EMPTY`` for a line without one, None at ``[DONE]``."""
        if not line.startswith(b"data:"):
            return _EMPTY  # blank separators, comments, `event:` and `id:` lines
        payload = line[5:].strip()
        if payload == _DONE:
            return None
        if not payload:
            return _EMPTY
        chunk = _decode_chunk(payload)  # a malformed line raises: see _mid_stream
        if chunk.error:
            raise _in_stream_error(self.route, chunk.error)
        return _to_delta(chunk)

    def _mid_stream(self, exc: Exception) -> Exception:
        """A failure after the response began, raised as LiteLLM's stream raises
        it: an ``APIConnectionError`` (a cut, a malformed line, an in-stream error)."""
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


def _to_delta(chunk: _Chunk) -> Delta:
    usage = None
    if (raw := chunk.usage) is not None:
        usage = Usage(
            prompt_tokens=raw.prompt_tokens or 0,
            completion_tokens=raw.completion_tokens or 0,
            total_tokens=raw.total_tokens or 0,
            estimated=False,
        )
    if not chunk.choices:
        return Delta(usage=usage) if usage is not None else _EMPTY
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
    return tuple(
        ToolCallDelta(
            index=int(call.index or 0),
            call_id=call.id,
            name=call.function.name if call.function else None,
            arguments=(call.function.arguments or "") if call.function else "",
        )
        for call in calls
    )


def _in_stream_error(route: NativeRoute, error: Any) -> Exception:
    """An in-stream ``{"error": ...}``, raised as LiteLLM's plain handler raises it."""
    extract = OpenAIChatCompletionStreamingHandler._extract_error_from_chunk
    message, status = extract({"error": error}) or ("upstream error", 500)
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
) -> NativeStream:
    """Send the request and wait for the response's status.

    ``request`` holds the OpenAI parameters (``tools``, ``tool_choice``,
    sampling params). An error status raises LiteLLM's exception for it, so
    the Router's retries and fallbacks and tokenwire's error codes treat it
    as they treat LiteLLM's path.
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
    body = config.transform_request(
        model=route.model,
        messages=messages,  # type: ignore[arg-type]
        optional_params=optional_params,
        litellm_params=litellm_params,
        headers=headers,
    )
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
    data = signed if signed is not None else msgspec.json.encode(body)
    try:
        response = await http.session().post(url, data=data, headers=headers)
    except aiohttp.ClientError as exc:
        error = APIConnectionError(str(exc), route.provider, route.model)
        raise _mapped(route, error) from exc
    if response.status >= 400:
        with contextlib.closing(response):
            text = await response.text(errors="replace")
        raise _mapped(route, config.get_error_class(text, response.status, dict(response.headers)))
    return NativeStream(route, response)
