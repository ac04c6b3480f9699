"""What tokenwire's two OpenAI surfaces share: error mapping and field checks.

tokenwire speaks OpenAI's Chat Completions (``POST /v1/chat/completions``)
and Responses WebSocket mode (``/v1/responses``) as translations of its own
protocol: a request becomes a ``Generate``, and the generation's frames
become OpenAI's chunks or events (``openai_chat``, ``openai_responses``).
Both surfaces report tokenwire's error codes as OpenAI's error bodies: the
HTTP status and ``type`` below, with tokenwire's code as ``code``.

Pure code: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

from .errors import BadMessage, ErrorCode
from .validation import check_json_values, quote


class OpenAIErrorKind(NamedTuple):
    status: int
    type: str


ERROR_KINDS: Final[Mapping[str, OpenAIErrorKind]] = {
    ErrorCode.BAD_MESSAGE: OpenAIErrorKind(400, "invalid_request_error"),
    ErrorCode.UNKNOWN_MODEL: OpenAIErrorKind(404, "invalid_request_error"),
    ErrorCode.DUPLICATE_ID: OpenAIErrorKind(400, "invalid_request_error"),
    ErrorCode.TOO_MANY_GENERATIONS: OpenAIErrorKind(429, "rate_limit_error"),
    ErrorCode.CONVERSATION_BUSY: OpenAIErrorKind(409, "invalid_request_error"),
    ErrorCode.CONVERSATION_LIMIT: OpenAIErrorKind(400, "invalid_request_error"),
    ErrorCode.UPSTREAM_RATE_LIMITED: OpenAIErrorKind(429, "rate_limit_error"),
    ErrorCode.UPSTREAM_TIMEOUT: OpenAIErrorKind(504, "server_error"),
    ErrorCode.UPSTREAM_ERROR: OpenAIErrorKind(502, "server_error"),
    ErrorCode.UPSTREAM_REJECTED: OpenAIErrorKind(400, "invalid_request_error"),
    ErrorCode.REPEATED_OUTPUT: OpenAIErrorKind(502, "server_error"),
    ErrorCode.SHUTTING_DOWN: OpenAIErrorKind(503, "server_error"),
    ErrorCode.OVERLOADED: OpenAIErrorKind(503, "server_error"),
    ErrorCode.INTERNAL: OpenAIErrorKind(500, "server_error"),
}
"""tokenwire's error codes as OpenAI's HTTP statuses and error types."""

# Errors of the OpenAI surfaces themselves (not generation codes).
UNAUTHORIZED: Final = OpenAIErrorKind(401, "authentication_error")
NOT_FOUND: Final = OpenAIErrorKind(404, "invalid_request_error")
METHOD_NOT_ALLOWED: Final = OpenAIErrorKind(405, "invalid_request_error")
PAYLOAD_TOO_LARGE: Final = OpenAIErrorKind(413, "invalid_request_error")


def error_kind(code: str) -> OpenAIErrorKind:
    return ERROR_KINDS.get(code, ERROR_KINDS[ErrorCode.INTERNAL])


def error_body(
    message: str, kind: OpenAIErrorKind, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": kind.type, "param": param, "code": code}}


def reject_unknown(
    body: Mapping[str, Any],
    supported: Iterable[str],
    where: str = "$",
    defaults: Mapping[str, tuple[Any, ...]] | None = None,
) -> None:
    """Raise ``BadMessage`` naming every field of ``body`` tokenwire does not
    support: a field it cannot honour is refused, never ignored. A field set
    to one of its ``defaults`` (what the API does without it: ``logprobs:
    false``) asks for nothing, and passes."""
    known = set(supported)
    defaults = defaults or {}
    unknown = sorted(
        k
        for k, v in body.items()
        if k not in known and not (k in defaults and any(v == d for d in defaults[k]))
    )
    if unknown:
        names = ", ".join(f"`{quote(k, 40)[1:-1]}`" for k in unknown[:8])
        more = f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""
        raise BadMessage(
            f"unsupported field{'s' if len(unknown) > 1 else ''}: {names}{more}",
            path=f"{where}.{unknown[0][:40]}",
        )


def expect(value: Any, kind: type | tuple[type, ...], path: str, what: str) -> Any:
    """``value`` if it is of ``kind``, else ``BadMessage`` at ``path``."""
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise BadMessage(f"expected {what}, got a boolean", path=path)
    if not isinstance(value, kind):
        raise BadMessage(f"expected {what}, got {type(value).__name__}", path=path)
    return value


def plain_json(value: Any, path: str) -> Any:
    """``value`` if it is plain, finite JSON (else ``BadMessage``)."""
    check_json_values(value, path)
    return value
