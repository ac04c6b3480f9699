"""The providers behind one narrow interface: a model name and a request in, deltas out.

``Upstream`` owns the LiteLLM Router built from ``model_list`` and is the
only module that opens generations' streams. ``stream()`` opens one and
yields batches of normalized ``Delta``s; leaving its context (normally, by an
exception, or by cancellation) closes the upstream HTTP request at once, so a
cancelled or abandoned generation stops being generated (and billed).

Two engines sit behind it, chosen per model when the server starts:

- the native path (``native.py``) for models whose every deployment (and
  every fallback) streams plain OpenAI SSE: LiteLLM resolves and builds the
  request, tokenwire reads the stream (≈20 µs a chunk);
- LiteLLM's ``acompletion`` stream for every other provider (≈1 ms a chunk).

Both go through the Router: it picks the deployment, and its retries and
fallbacks apply alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from tokenwire.protocol import Delta, ErrorCode, Params, Usage, sanitize

from ..config import DEMO_MODEL, Config
from . import chunks, demo, guard, native
from .failures import GUARD_FAILURE, UpstreamFailure
from .litellm_adapter import (
    NATIVE_KEY,
    adopt_logging,
    make_router,
    missing_keys,
    raise_repeated_chunk_limit,
    route_problem,
    set_module_settings,
    stream_chunks,
    takes_param,
    token_counter,
)

EXACT_CHARS: Final = 32_768
"""Characters past which a token estimate is a division, not a tokenizer run."""
EXACT_MESSAGES: Final = 256
CHARS_PER_TOKEN: Final = 4
IMAGE_TOKENS: Final = 765
"""An image's estimated tokens (OpenAI's figure for a 1024×1024 image at high detail)."""
_encode_json: Final = msgspec.json.Encoder().encode
ROUTER_DEFAULTS: Final = {
    # Retries only where router_settings ask for them (contract, "Retries").
    "num_retries": 0,
    # A cooldown takes a deployment out of rotation after one 401/404/429: with
    # one deployment per model, one client's failure would fail every client's
    # generations for `cooldown_time`. Configs with several deployments may
    # turn it back on (`disable_cooldowns: false`).
    "disable_cooldowns": True,
}


class Upstream:
    """The models tokenwire offers, and the streams it opens to them."""

    def __init__(self, config: Config, *, repeated_chunk_limit: int) -> None:
        model_list = [
            self._deployment(i, e.model_name, e.litellm_params, e.model_info)
            for i, e in enumerate(config.model_list)
        ]
        if not model_list:
            model_list = [self._deployment(0, DEMO_MODEL, {"model": demo.MODEL}, None)]
        if any(
            str(d["litellm_params"]["model"]).startswith(f"{demo.PROVIDER}/") for d in model_list
        ):
            demo.register()
        set_module_settings(config.litellm_settings)
        adopt_logging()
        # tokenwire checks repeated chunks itself (repeated_output); LiteLLM's
        # own process-wide guard must not fire first with another error.
        raise_repeated_chunk_limit(repeated_chunk_limit + 2)
        for d in model_list:
            if (problem := route_problem(d["litellm_params"])) is not None:
                raise ValueError(
                    f"model {d['model_name']}: {problem}; --model demo serves the built-in model"
                )
        groups: dict[str, list[dict[str, Any]]] = {}
        """Each model's deployments, in the config's order."""
        for d in model_list:
            groups.setdefault(d["model_name"], []).append(d)
        self.keyless: dict[str, str] = {}
        """Models none of whose deployments has its provider's key: what is missing."""
        for name, deployments in groups.items():
            missing = [missing_keys(d["litellm_params"]) for d in deployments]
            if all(missing):
                self.keyless[name] = " or ".join(dict.fromkeys(k for m in missing for k in m))
        router_settings = {**ROUTER_DEFAULTS, **config.router_settings}
        self.router = make_router(model_list, router_settings)
        self.models: list[str] = list(groups)
        self._litellm_model = {
            d["model_name"]: d["litellm_params"]["model"] for d in reversed(model_list)
        }
        self.reasons: frozenset[str] = frozenset(
            name
            for name, deployments in groups.items()
            if all(takes_param(d["litellm_params"], "reasoning_effort") for d in deployments)
        )
        """Models every deployment of which takes ``reasoning_effort`` (as
        LiteLLM knows each provider and model): where a surface whose
        clients ask for thinking by habit (Claude Code) passes it on."""
        self._where: dict[str, dict[str, str]] = {}
        """Each model's deployments and hosts, for log lines (never a key)."""
        self._secrets = [
            str(key) for d in model_list if (key := d["litellm_params"].get("api_key"))
        ]
        for name, deployments in groups.items():
            params = [d["litellm_params"] for d in deployments]
            self._where[name] = {
                "deployment": ", ".join(str(p["model"]) for p in params),
                "host": ", ".join(_host(p) for p in params),
            }
        self.http = native.HttpClient()
        self.max_event_bytes = config.server.max_upstream_event_bytes
        guard.install(self.max_event_bytes)
        self._routes: dict[str, native.NativeRoute] = {}
        self.native_models: frozenset[str] = frozenset()
        self._direct: dict[str, native.NativeRoute] = {}
        if config.server.fast_path == "auto":
            self._plan_native_routes(config, groups, router_settings)

    def _plan_native_routes(
        self,
        config: Config,
        groups: dict[str, list[dict[str, Any]]],
        router_settings: dict[str, Any],
    ) -> None:
        """Which models take the native path: every deployment, and every
        model they fall back to, must have a native route."""
        off = {e.model_name for e in config.model_list if e.fast_path == "off"}
        for name, deployments in groups.items():
            for deployment in deployments:
                route = None if name in off else native.native_route(deployment["litellm_params"])
                if route is not None:
                    self._routes[deployment["model_info"]["id"]] = route
        capable = {
            name: all(d["model_info"]["id"] in self._routes for d in deployments)
            for name, deployments in groups.items()
        }
        fallbacks: dict[str, list[str]] = {}
        for entry in router_settings.get("fallbacks") or ():
            for name, targets in dict(entry).items():
                fallbacks.setdefault(name, []).extend(targets)

        def native_ok(name: str, seen: frozenset[str] = frozenset()) -> bool:
            if name in seen:
                return True
            targets = [*fallbacks.get(name, ()), *fallbacks.get("*", ())]
            return capable.get(name, False) and all(
                native_ok(t, seen | {name}) for t in targets if t != name
            )

        self.native_models = frozenset(name for name in capable if native_ok(name))
        # A model of one plain deployment, with no retries, fallbacks or rate
        # limits: the Router would choose nothing and add ≈0.5 ms to every
        # request's first token, so it is skipped.
        if not (router_settings.get("num_retries") or router_settings.get("fallbacks")):
            for name, deployments in groups.items():
                params = deployments[0]["litellm_params"]
                if (
                    name in self.native_models
                    and len(deployments) == 1
                    and not (params.get("rpm") or params.get("tpm"))
                ):
                    self._direct[name] = self._routes[deployments[0]["model_info"]["id"]]

    def describe(self, model: str) -> dict[str, str]:
        """``model``'s deployments and their hosts, for a log line."""
        return self._where.get(model, {"deployment": "?", "host": "?"})

    def cause(self, exc: BaseException) -> str:
        """The innermost cause of ``exc`` (what the OS or the HTTP client said),
        without any deployment's key."""
        root = exc
        seen = {id(root)}
        while (inner := root.__cause__ or root.__context__) is not None and id(inner) not in seen:
            seen.add(id(inner))
            root = inner
        text = f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:300]

    async def close(self) -> None:
        """Close the native path's HTTP connections."""
        await self.http.close()

    @staticmethod
    def _deployment(
        index: int, name: str, params: dict[str, Any], info: dict[str, Any] | None
    ) -> dict[str, Any]:
        # Retries happen only where router_settings ask for them (contract,
        # "Retries"): the OpenAI SDK's own two retries are switched off. The
        # id (the config's own, else its place in model_list) is how the
        # Router's attempt names the deployment to the native path.
        return {
            "model_name": name,
            "litellm_params": {"max_retries": 0, **params},
            "model_info": {"id": f"deployment-{index}", **(info or {})},
        }

    def warm_up(self) -> None:
        """Load the tokenizers the configured models count with, now rather than
        during the first cancel (≈300 ms each). Only those: gpt-4o's alone is
        ≈100 MB resident."""
        for model in set(self._litellm_model.values()):
            self.count_tokens(model, text="warm up")

    def count_tokens(
        self, model: str, *, messages: Sequence[dict[str, Any]] | None = None, text: str = ""
    ) -> int:
        """LiteLLM's count of the tokens in ``messages`` (text only) or ``text``."""
        name = self._litellm_model.get(model, model)
        try:
            if messages is not None:
                return int(token_counter(model=name, messages=list(messages)))
            return int(token_counter(model=name, text=text)) if text else 0
        except Exception:  # a tokenizer failure must not fail the generation
            return 0

    def estimate_prompt(self, model: str, messages: Sequence[dict[str, Any]]) -> int:
        """The prompt's tokens, estimated without fetching anything and at a bounded cost.

        Images count a fixed ``IMAGE_TOKENS`` (LiteLLM's counter would download
        an ``image_url`` with ``detail: high`` to size it, on the event loop);
        files and audio count nothing. Past ``EXACT_CHARS`` or
        ``EXACT_MESSAGES`` the tokenizer is not run (55,000 short messages
        took it 0.4 s, every other session stalled meanwhile): the estimate
        is then the messages' JSON size / ``CHARS_PER_TOKEN``.
        """
        size = len(_encode_json(messages))
        if size > EXACT_CHARS or len(messages) > EXACT_MESSAGES:
            return size // CHARS_PER_TOKEN
        images = 0
        plain: list[dict[str, Any]] = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                texts = []
                for part in content:
                    if not isinstance(part, dict):
                        continue
                    if part.get("type") == "text" and isinstance(part.get("text"), str):
                        texts.append(part["text"])
                    elif part.get("type") == "image_url":
                        images += 1
                message = {**message, "content": "\n".join(texts)}
            plain.append(message)
        return self.count_tokens(model, messages=plain) + images * IMAGE_TOKENS

    def estimate_text(self, model: str, text: str) -> int:
        """The tokens of generated ``text``, estimated at a bounded cost (as above)."""
        if len(text) > EXACT_CHARS:
            return len(text) // CHARS_PER_TOKEN
        return self.count_tokens(model, text=text)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        params: Params | None = None,
    ) -> AsyncIterator[AsyncIterator[Sequence[Delta]]]:
        """Open a stream of delta batches; the context closes the upstream request on exit."""
        if (key := self.keyless.get(model)) is not None:
            raise UpstreamFailure(
                ErrorCode.UPSTREAM_REJECTED, f"model {model}: {key} is not set on the server"
            )
        GUARD_FAILURE.set([])  # this generation's (its task's context)
        kwargs: dict[str, Any] = params.to_dict() if params is not None else {}
        if tools:
            kwargs["tools"] = tools
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        if model in self.native_models:
            stream = await self._open_native(model, messages, kwargs)
            try:
                yield stream.batches()
            finally:
                await stream.close()
            return
        if tools:
            # The MCP gateway only serves LiteLLM proxy tools; for plain
            # function tools it would import the optional `mcp` package.
            kwargs["_skip_mcp_handler"] = True
        # The messages are OpenAI chat messages as the client sent them; LiteLLM
        # types them as TypedDicts.
        response: Any = await self.router.acompletion(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **kwargs,
        )
        try:
            yield _deltas(response)
        finally:
            await response.aclose()

    async def _open_native(
        self, model: str, messages: list[dict[str, Any]], request: dict[str, Any]
    ) -> native.NativeStream:
        """Open ``model``'s stream on the native path, inside the Router's
        retries and fallbacks (``make_router``): each attempt the Router makes
        opens the deployment it chose with ``attempt``."""
        if (route := self._direct.get(model)) is not None:
            return await native.open_stream(
                self.http, route, messages, request, max_event_bytes=self.max_event_bytes
            )

        async def attempt(deployment_id: str) -> native.NativeStream:
            return await native.open_stream(
                self.http,
                self._routes[deployment_id],
                messages,
                request,
                max_event_bytes=self.max_event_bytes,
            )

        stream: object = await self.router.acompletion(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            **{NATIVE_KEY: attempt},
        )
        assert isinstance(stream, native.NativeStream)
        return stream


_UNSET: Final = object()


def _host(params: dict[str, Any]) -> str:
    """Where a deployment's requests go: its ``api_base``'s host, or its provider's default."""
    base = params.get("api_base") or params.get("base_url")
    if base:
        return urlsplit(str(base)).netloc or str(base)
    provider = str(params.get("model", "")).partition("/")[0]
    return f"{provider} default" if provider else "default"


def _usage(raw: Any) -> Usage:
    """A usage object of LiteLLM's (or a plain dict), as the provider counted it."""

    def get(source: Any, name: str) -> Any:
        if isinstance(source, dict):
            return source.get(name)
        return getattr(source, name, None)

    return sanitize.usage(
        get(raw, "prompt_tokens"),
        get(raw, "completion_tokens"),
        get(raw, "total_tokens"),
        cached=get(get(raw, "prompt_tokens_details"), "cached_tokens"),
        reasoning=get(get(raw, "completion_tokens_details"), "reasoning_tokens"),
    )


async def _deltas(response: Any) -> AsyncIterator[Sequence[Delta]]:
    async for chunk in response:
        if chunk is None:  # the Router's stand-in for a non-streaming fallback answer
            continue
        if getattr(chunk, "usage", None) is not None:
            delta = to_delta(chunk, provider_usage=_provider_usage(response))
        else:
            delta = to_delta(chunk)
        yield (delta,)
        # LiteLLM's iterator does not give the loop a turn while its HTTP
        # client holds data (docs/traps.md): a fast stream would starve every
        # other session and timer. One turn per chunk.
        await asyncio.sleep(0)


def _provider_usage(response: Any) -> Any:
    """The usage the provider itself reported last in this stream, or None.

    LiteLLM yields a usage chunk at the end whether or not the provider sent
    one: when it did not, LiteLLM counted the tokens itself (tokenwire
    estimates instead, the same way on both engines); when it did, LiteLLM
    recomputes the total as prompt + completion (xAI counts reasoning tokens
    only in the total: 354 became 14). The chunks it kept hold the
    provider's own figures.
    """
    for chunk in reversed(stream_chunks(response)):
        if (usage := getattr(chunk, "usage", None)) is not None:
            return usage
    return None


def to_delta(chunk: Any, *, provider_usage: Any = _UNSET) -> Delta:
    """A LiteLLM ``ModelResponseStream`` chunk, normalized.

    For a usage chunk, ``provider_usage`` is what the provider sent (None:
    nothing, the chunk's usage is LiteLLM's count and is dropped).
    """
    usage = None
    raw_usage = getattr(chunk, "usage", None)
    if provider_usage is not _UNSET:
        raw_usage = provider_usage
    if raw_usage is not None:
        usage = _usage(raw_usage)
    choices = chunk.choices
    if not choices:
        return Delta(usage=usage)
    choice = choices[0]
    delta = choice.delta
    return Delta(
        text=delta.content or "",
        reasoning=getattr(delta, "reasoning_content", None) or "",
        tool_calls=chunks.tool_call_deltas(delta.tool_calls) if delta.tool_calls else (),
        finish_reason=choice.finish_reason,
        usage=usage,
    )
