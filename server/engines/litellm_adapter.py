"""Every part of LiteLLM tokenwire uses beyond its documented API, in one place.

LiteLLM ships a release every few days, and tokenwire reaches past its
public API (``litellm.acompletion``, ``litellm.Router``, ``token_counter``,
its exception classes) for the native streaming path, the guard around its
HTTP, and the demo provider: provider configurations and their request
building, the OpenAI stream handler's error extraction, the exception
mapping, underscored Router methods, module settings. Those names are
imported or reached here and nowhere else; ``INTERNALS`` lists each with the
parameters tokenwire passes, and ``tests/server/test_litellm_adapter.py``
checks every one against the installed LiteLLM, so that a release that moves
one fails there, by name, rather than somewhere in a stream.

``scripts/litellm-canary`` runs that test and the engine tests against the
newest LiteLLM in a scratch environment before the pin moves.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final

import litellm
from litellm import exceptions as errors
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.llms.base_llm.chat.transformation import BaseConfig
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler
from litellm.llms.custom_llm import CustomLLM
from litellm.llms.openai.chat.gpt_transformation import OpenAIChatCompletionStreamingHandler
from litellm.router import Router, router_arguments
from litellm.router_config import build_router_config
from litellm.router_python_host import PythonHost
from litellm.types.router import RouterRateLimitError
from litellm.types.utils import (
    Delta,
    GenericStreamingChunk,
    LlmProviders,
    ModelResponseStream,
    StreamingChoices,
)
from litellm.utils import ProviderConfigManager, custom_llm_setup, get_optional_params

__all__ = [
    "INTERNALS",
    "APIConnectionError",
    "AsyncHTTPHandler",
    "BaseConfig",
    "CustomLLM",
    "GenericStreamingChunk",
    "NativeOpener",
    "OpenAIChatCompletionStreamingHandler",
    "Router",
    "RouterRateLimitError",
    "adopt_logging",
    "errors",
    "exception_type",
    "extract_stream_error",
    "get_llm_provider",
    "get_optional_params",
    "make_router",
    "missing_keys",
    "provider_chat_config",
    "raise_repeated_chunk_limit",
    "reasoning_chunk",
    "register_custom_provider",
    "route_problem",
    "router_init",
    "set_module_settings",
    "stream_chunks",
    "takes_param",
    "token_counter",
]

APIConnectionError = errors.APIConnectionError
# LiteLLM prints (to stdout, in colour) a provider list and debugging hints
# when a call fails; tokenwire's own line says what failed.
litellm.suppress_debug_info = True
get_llm_provider = litellm.get_llm_provider
token_counter = litellm.token_counter


def provider_chat_config(model: str, provider: str) -> BaseConfig | None:
    """LiteLLM's chat configuration of ``provider`` (how it builds requests)."""
    return ProviderConfigManager.get_provider_chat_config(
        model=model, provider=LlmProviders(provider)
    )


def extract_stream_error(error: Any) -> tuple[str, int] | None:
    """The message and status of an in-stream ``{"error": ...}``, as LiteLLM's
    plain OpenAI stream handler reads them."""
    result: tuple[str, int] | None = OpenAIChatCompletionStreamingHandler._extract_error_from_chunk(
        {"error": error}
    )
    return result


NativeOpener = Callable[[str], Awaitable[object]]
"""Opens one attempt of a native request on the deployment whose id it is given."""
NATIVE_KEY: Final = "tokenwire_native"
"""The request keyword that carries a native request's opener through the Router."""


def make_router(model_list: list[dict[str, Any]], settings: dict[str, Any]) -> Router:
    """The Router of ``model_list``, whose retries, fallbacks and cooldowns
    also run around the native path.

    Since 1.110 ``litellm.Router`` is a facade over ``RustCore``, which runs
    an endpoint's retries and fallbacks itself and reaches a provider only
    through its host (``PythonHost.invoke("acompletion")``, one call an
    attempt, with the chosen deployment's params). tokenwire's host serves
    that call: a request made with ``NATIVE_KEY`` is opened by its opener on
    the attempt's deployment (``model_info.id``); any other goes to
    ``litellm.acompletion`` as before.
    """
    config = build_router_config(router_arguments(model_list=model_list, **settings))
    router: Router = Router.from_config(config, _Host())
    return router


class _Host(PythonHost):
    """LiteLLM's own host, with the native path's attempts served by their opener."""

    __slots__ = ()

    def invoke(self, op: str) -> Callable[..., Any]:
        if op == "acompletion":
            return self._acompletion
        return super().invoke(op)

    async def _acompletion(self, **kwargs: Any) -> object:
        opener: NativeOpener | None = kwargs.pop(NATIVE_KEY, None)
        if opener is None:
            return await super().invoke("acompletion")(**kwargs)
        return await opener(str(kwargs["model_info"]["id"]))


def router_init() -> Callable[..., None]:
    """The function whose parameters are ``Router``'s keyword arguments
    (``Router.__init__`` itself takes ``*args, **kwargs`` since 1.110)."""
    init: Callable[..., None] = sys.modules[Router.__module__]._router_init
    return init


LOGGERS: Final = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
_NOISE: Final = ("surrogates not allowed", "stream_chunk_builder raised at end-of-stream")


class _UpstreamTextNoise(logging.Filter):
    """Drops LiteLLM's tracebacks about a provider's text its own logging
    cannot serialize (since 1.109: a surrogate pair split between two chunks
    of a tool call's arguments, ``PydanticSerializationError``, then a warning
    that it logged usage best-effort). The stream itself is right, tokenwire
    joins the pair; the lines were four tracebacks for an upstream's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format: keep it
            return True
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        return not any(noise in text for noise in _NOISE)


_noise_filter: Final = _UpstreamTextNoise()


def adopt_logging() -> None:
    """LiteLLM's loggers without LiteLLM's own plain-text handler: their lines
    go to the root logger, which ``server.logs`` renders as JSON, minus the
    noise above."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        if _noise_filter not in logger.filters:
            logger.addFilter(_noise_filter)


COMMON_PROVIDERS: Final = (
    "openai",
    "anthropic",
    "gemini",
    "vertex_ai",
    "bedrock",
    "azure",
    "ollama",
)


def route_problem(params: dict[str, Any]) -> str | None:
    """Why LiteLLM cannot route a deployment (``litellm_params``), or None.

    ``get_llm_provider`` raises for a model name without a known provider
    (``demo``, ``llama3``); LiteLLM would raise the same on every request.
    """
    model = str(params.get("model", ""))
    try:
        get_llm_provider(
            model=model,
            custom_llm_provider=params.get("custom_llm_provider"),
            api_base=params.get("api_base"),
        )
    except Exception:
        known = ", ".join(f"{p}/" for p in COMMON_PROVIDERS)
        return (
            f"LiteLLM cannot route {model!r}: name its provider as a prefix, e.g. openai/{model} "
            f"({known} ...: {len(litellm.provider_list)} providers)"
        )
    return None


def takes_param(params: dict[str, Any], name: str) -> bool:
    """Whether a deployment (``litellm_params``) takes the OpenAI parameter
    ``name``, as LiteLLM knows its provider and model: LiteLLM refuses a
    parameter outside this list (``UnsupportedParamsError``)."""
    model = str(params.get("model", ""))
    try:
        model, provider, _, _ = get_llm_provider(
            model=model,
            custom_llm_provider=params.get("custom_llm_provider"),
            api_base=params.get("api_base"),
        )
        supported = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception:  # a provider LiteLLM cannot check: nothing is known to be taken
        return False
    return name in (supported or ())


def missing_keys(params: dict[str, Any]) -> list[str]:
    """The environment variables a deployment's provider needs for its key
    and does not find (``OPENAI_API_KEY``). A deployment with its own
    ``api_key``, or with an ``api_base`` (a server of one's own, which may
    need none), needs none; an ``*_API_BASE`` with a default is not a key."""
    if params.get("api_key") or params.get("api_base"):
        return []
    try:
        found = litellm.validate_environment(model=str(params.get("model", "")))
    except Exception:  # a provider LiteLLM cannot check: it will say so itself
        return []
    keys = found.get("missing_keys") or []
    return [str(k) for k in keys if not str(k).endswith(("_API_BASE", "_BASE_URL"))]


def stream_chunks(response: Any) -> list[Any]:
    """The chunks LiteLLM's stream wrapper kept: they hold the provider's own usage."""
    return list(getattr(response, "chunks", ()))


def set_module_settings(settings: dict[str, Any]) -> None:
    """``litellm_settings`` of the config: set on the ``litellm`` module, as
    LiteLLM's proxy does."""
    for key, value in settings.items():
        setattr(litellm, key, value)


def raise_repeated_chunk_limit(limit: int) -> None:
    """LiteLLM's own process-wide repeated-chunk guard, kept above ``limit``,
    so tokenwire's ``repeated_output`` check fires first."""
    name = "REPEATED_STREAMING_CHUNK_LIMIT"
    setattr(litellm, name, max(getattr(litellm, name), limit))


def reasoning_chunk(text: str) -> ModelResponseStream:
    """A custom provider's stream chunk carrying reasoning: LiteLLM's
    ``GenericStreamingChunk`` has no field for it, a ``ModelResponseStream``
    does (LiteLLM passes it on as it is)."""
    return ModelResponseStream(
        choices=[StreamingChoices(index=0, delta=Delta(reasoning_content=text))]
    )


def register_custom_provider(provider: str, handler: CustomLLM) -> None:
    """Add a custom provider to LiteLLM's map (idempotent) and load it."""
    if not any(p.get("provider") == provider for p in litellm.custom_provider_map):
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": provider, "custom_handler": handler},
        ]
        custom_llm_setup()  # type: ignore[no-untyped-call]


# What tokenwire calls, and the parameters it passes by name: the adapter test
# looks each up (so one that moved is named, not an import failing) and checks
# that it accepts them (``*``: its presence alone is checked).
_utils = sys.modules[get_optional_params.__module__]
_mapping = sys.modules[exception_type.__module__]
_router = sys.modules[Router.__module__]
_router_config = sys.modules[build_router_config.__module__]
INTERNALS: Final[dict[str, tuple[object, str, tuple[str, ...]]]] = {
    "litellm.get_llm_provider": (
        litellm,
        "get_llm_provider",
        ("model", "custom_llm_provider", "api_base", "api_key"),
    ),
    "litellm.token_counter": (litellm, "token_counter", ("model", "messages", "text")),
    "litellm.get_supported_openai_params": (
        litellm,
        "get_supported_openai_params",
        ("model", "custom_llm_provider"),
    ),
    "litellm.utils.get_optional_params": (
        _utils,
        "get_optional_params",
        ("model", "custom_llm_provider", "stream", "stream_options", "messages"),
    ),
    "litellm.utils.custom_llm_setup": (_utils, "custom_llm_setup", ()),
    "ProviderConfigManager.get_provider_chat_config": (
        ProviderConfigManager,
        "get_provider_chat_config",
        ("model", "provider"),
    ),
    "BaseConfig.validate_environment": (
        BaseConfig,
        "validate_environment",
        (
            "headers",
            "model",
            "messages",
            "optional_params",
            "litellm_params",
            "api_key",
            "api_base",
        ),
    ),
    "BaseConfig.get_complete_url": (
        BaseConfig,
        "get_complete_url",
        ("api_base", "api_key", "model", "optional_params", "litellm_params", "stream"),
    ),
    "BaseConfig.transform_request": (
        BaseConfig,
        "transform_request",
        ("model", "messages", "optional_params", "litellm_params", "headers"),
    ),
    "BaseConfig.sign_request": (
        BaseConfig,
        "sign_request",
        ("headers", "optional_params", "request_data", "api_base", "api_key", "model", "stream"),
    ),
    "BaseConfig.get_error_class": (
        BaseConfig,
        "get_error_class",
        ("error_message", "status_code", "headers"),
    ),
    "BaseConfig.get_model_response_iterator": (
        BaseConfig,
        "get_model_response_iterator",
        ("streaming_response", "sync_stream", "json_mode"),
    ),
    "OpenAIChatCompletionStreamingHandler._extract_error_from_chunk": (
        OpenAIChatCompletionStreamingHandler,
        "_extract_error_from_chunk",
        ("chunk",),
    ),
    "exception_mapping_utils.exception_type": (
        _mapping,
        "exception_type",
        ("model", "original_exception", "custom_llm_provider"),
    ),
    "Router.from_config": (Router, "from_config", ("config", "host")),
    "litellm.router.router_arguments": (_router, "router_arguments", ("*",)),
    "litellm.router._router_init": (_router, "_router_init", ("model_list", "num_retries")),
    "litellm.router_config.build_router_config": (
        _router_config,
        "build_router_config",
        ("arguments",),
    ),
    "PythonHost.invoke": (PythonHost, "invoke", ("op",)),
    "AsyncHTTPHandler.create_async_transport": (AsyncHTTPHandler, "create_async_transport", ()),
    "litellm.custom_provider_map": (litellm, "custom_provider_map", ("*",)),
    "litellm.validate_environment": (litellm, "validate_environment", ("model",)),
    "litellm.provider_list": (litellm, "provider_list", ("*",)),
    "litellm.suppress_debug_info": (litellm, "suppress_debug_info", ("*",)),
    "litellm.REPEATED_STREAMING_CHUNK_LIMIT": (litellm, "REPEATED_STREAMING_CHUNK_LIMIT", ("*",)),
    "CustomLLM.astreaming": (CustomLLM, "astreaming", ()),
    "litellm.exceptions.MidStreamFallbackError": (errors, "MidStreamFallbackError", ("*",)),
}
