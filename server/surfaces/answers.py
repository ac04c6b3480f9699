"""HTTP answers in OpenAI's error shape, for every HTTP surface."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web

from tokenwire.protocol import Error
from tokenwire.protocol.openai_common import OpenAIErrorKind, error_body, error_kind

JSON_HEADERS: Final = {"Content-Type": "application/json; charset=utf-8"}


def _dumps(value: Any) -> str:
    """aiohttp's ``json_response`` encoder: msgspec's."""
    return msgspec.json.encode(value).decode()


def json_error(
    kind: OpenAIErrorKind,
    message: str,
    code: str | None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        error_body(message, kind, code, param),
        status=kind.status,
        headers=headers,
        dumps=_dumps,
    )


def error_response(frame: Error) -> web.Response:
    """A generation's ``error`` frame as an HTTP error (a 429 or 503 with ``Retry-After``)."""
    headers = None
    if frame.retry_after_ms is not None:
        headers = {"Retry-After": str(max(1, -(-frame.retry_after_ms // 1000)))}
    return json_error(error_kind(frame.code), frame.message, frame.code, headers=headers)
