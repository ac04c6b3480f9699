"""Foreign exceptions translated, once, into the contract's error codes.

Everything LiteLLM, httpx or aiohttp raises for a generation passes through
``classify`` at the boundary of the relay; what comes out is an
``UpstreamFailure`` carrying a code, a message safe to show a client (no
internals, no keys, no URLs) and, for 429s, when to retry.
"""

from __future__ import annotations

import contextvars
import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import httpx
import openai

from tokenwire.protocol import ErrorCode

from ..errors import ServerError
from .litellm_adapter import RouterRateLimitError
from .litellm_adapter import errors as llm

_REPEATED_MARK: Final = "repeating the same chunk"
STREAM_FAILED: Final = "the provider failed or the connection to it was cut"


class UpstreamFailure(ServerError):
    """A generation's failure, already in the contract's terms."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


def classify(exc: BaseException) -> UpstreamFailure:
    """The contract's code for an exception raised while calling or streaming a provider."""
    if isinstance(exc, UpstreamFailure):
        return exc
    if (guarded := _guard_failure(exc)) is not None:
        return guarded
    if _REPEATED_MARK in str(exc):
        return UpstreamFailure(ErrorCode.REPEATED_OUTPUT, "the model kept repeating the same chunk")
    if isinstance(exc, llm.MidStreamFallbackError) and exc.original_exception is not None:
        return classify(exc.original_exception)
    if isinstance(
        exc, llm.Timeout | openai.APITimeoutError | httpx.TimeoutException | TimeoutError
    ):
        return UpstreamFailure(ErrorCode.UPSTREAM_TIMEOUT, "the provider did not answer in time")
    if isinstance(exc, llm.APIConnectionError):
        # LiteLLM raises it (with status 500) for a connection that failed, a
        # stream cut or malformed mid-way, and an in-stream error.
        return UpstreamFailure(ErrorCode.UPSTREAM_ERROR, STREAM_FAILED)
    status = _status_of(exc)
    if isinstance(exc, llm.RateLimitError) or status == 429:
        return UpstreamFailure(
            ErrorCode.UPSTREAM_RATE_LIMITED,
            "the provider is rate limiting requests (HTTP 429)",
            retry_after_ms=retry_after_ms(exc),
        )
    if _is_router_cooldown(exc):
        return UpstreamFailure(
            ErrorCode.UPSTREAM_RATE_LIMITED, "every deployment of this model is cooling down"
        )
    if isinstance(exc, llm.ContextWindowExceededError):
        refused = "the provider refused the request: context too long"
        if (said := provider_message(exc)) is not None:
            refused = f"{refused}: {said}"
        return UpstreamFailure(ErrorCode.UPSTREAM_REJECTED, refused)
    if status is not None and 400 <= status < 500 and status != 408:
        refused = f"the provider refused the request (HTTP {status})"
        if (said := provider_message(exc)) is not None:
            refused = f"{refused}: {said}"
        return UpstreamFailure(ErrorCode.UPSTREAM_REJECTED, refused)
    if status == 408:
        return UpstreamFailure(ErrorCode.UPSTREAM_TIMEOUT, "the provider timed out (HTTP 408)")
    if status is not None and status >= 500:
        return UpstreamFailure(ErrorCode.UPSTREAM_ERROR, f"the provider failed (HTTP {status})")
    if isinstance(
        exc,
        llm.APIConnectionError
        | llm.APIError
        | openai.APIError
        | httpx.HTTPError
        | aiohttp.ClientError
        | ConnectionError,
    ):
        return UpstreamFailure(ErrorCode.UPSTREAM_ERROR, STREAM_FAILED)
    return UpstreamFailure(ErrorCode.INTERNAL, "internal error")


MAX_PROVIDER_MESSAGE: Final = 300
"""Characters of a provider's own error message passed on to the client."""
_LITELLM_PREFIX: Final = re.compile(
    r"^(?:(?:litellm\.)?\w+Error:\s*|\w+Exception\s*-\s*|Error code: \d+(?:\s*-\s*|$))+"
)
_MESSAGE_FIELD: Final = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)')
"""A JSON body's ``message``, read even from a body cut short (bodies are
read to 16 KiB)."""
_LITELLM_SUFFIX: Final = re.compile(
    r"\s*(?:LiteLLM: model group|Received Model Group|LiteLLM Retried|Available Model Group)"
    r"[\s\S]*$"
)
_SECRET: Final = re.compile(
    r"(?:\b(?:sk|pk|rk|key|api[-_]?key)[-_][A-Za-z0-9_\-]{6,}|Bearer\s+\S+|AIza[0-9A-Za-z_\-]{20,})",
    re.IGNORECASE,
)


def provider_message(exc: BaseException) -> str | None:
    """What the provider itself said of a request it refused ("model not
    found", "context length exceeded"): the ``error.message`` of its body,
    without LiteLLM's prefixes, on one line, at most ``MAX_PROVIDER_MESSAGE``
    characters, anything shaped like a key replaced by ``***``."""
    text = getattr(exc, "message", None)
    if not isinstance(text, str):
        text = str(exc)
    text = _LITELLM_PREFIX.sub("", _LITELLM_SUFFIX.sub("", text.strip()))
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            field = _MESSAGE_FIELD.search(text)
            text = field.group(1) if field is not None else text
        else:
            error = body.get("error") if isinstance(body, dict) else None
            inner = error.get("message") if isinstance(error, dict) else error
            if isinstance(inner, str):
                text = inner
    text = _SECRET.sub("***", " ".join(text.split()))
    if not text:
        return None
    if len(text) > MAX_PROVIDER_MESSAGE:
        text = text[: MAX_PROVIDER_MESSAGE - 3].rstrip() + "..."
    return text


GUARD_FAILURE: Final[contextvars.ContextVar[list[UpstreamFailure] | None]] = contextvars.ContextVar(
    "tokenwire_guard_failure", default=None
)
"""Where a bound of ``guard`` leaves its failure for this generation.

LiteLLM and the provider SDKs re-raise a transport's exception as their own,
not always chained to it; the guard appends its failure to the list this
variable holds (``Upstream.stream`` sets one per generation: tasks it starts
share the list, as they copy the context), for ``classify`` to find."""


def _guard_failure(exc: BaseException) -> UpstreamFailure | None:
    """The failure a bound of ``guard`` raised, through LiteLLM's and the SDK's wrapping."""
    cause: BaseException | None = exc
    for _ in range(16):
        if cause is None:
            break
        failure = getattr(cause, "failure", None)
        if isinstance(failure, UpstreamFailure):
            return failure
        cause = cause.__cause__ or cause.__context__
    box = GUARD_FAILURE.get()
    return box[-1] if box else None


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 100 <= status < 600:
        return status
    return None


def _is_router_cooldown(exc: BaseException) -> bool:
    return isinstance(exc, RouterRateLimitError)


def retry_after_ms(exc: BaseException, *, now: float | None = None) -> int | None:
    """``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``, in ms.

    LiteLLM 1.106 leaves ``exc.response.headers`` empty and keeps the
    provider's headers in ``exc.litellm_response_headers``.
    """
    for source in (
        getattr(exc, "litellm_response_headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        headers = _lower_headers(source)
        if (ms := headers.get("retry-after-ms")) is not None:
            try:
                return _sane_ms(float(ms))
            except ValueError:
                pass
        if (value := headers.get("retry-after")) is not None:
            try:
                return _sane_ms(float(value) * 1000)
            except ValueError:
                pass
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is not None:
                seconds = when.timestamp() - (time.time() if now is None else now)
                return _sane_ms(seconds * 1000)
    return None


MAX_RETRY_AFTER_MS: Final = 86_400_000
"""A provider's ``Retry-After`` is passed on up to a day; past it (``1e30``), a day."""


def _sane_ms(ms: float) -> int | None:
    """Milliseconds within ``0..MAX_RETRY_AFTER_MS``; None for NaN."""
    if math.isnan(ms):
        return None
    return round(min(max(ms, 0.0), MAX_RETRY_AFTER_MS))


def _lower_headers(headers: Any) -> Mapping[str, str]:
    if headers is None:
        return {}
    try:
        return {str(k).lower(): str(v) for k, v in headers.items()}
    except (AttributeError, TypeError):
        return {}
