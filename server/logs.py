"""structlog, configured once at start-up.

JSON lines (or a console renderer when stderr is a terminal). ``session`` and
``gen`` are bound through contextvars by the session and generation tasks, so
every line says which one it is about. Nothing here logs prompt text or keys;
callers keep it that way at INFO.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

_encoder = msgspec.json.Encoder(enc_hook=str)


def _serialize(event: Any, **_: Any) -> str:
    # JSONRenderer passes `default=`; msgspec's encoder takes no such argument.
    return _encoder.encode(event).decode()


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Set up structlog and quiet the libraries' own loggers."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_serialize)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # The libraries' own log lines (LiteLLM, aiohttp, websockets, asyncio) go
    # out in the same format: one JSON object a line, a traceback as a field.
    foreign = [structlog.stdlib.add_logger_name, *shared[1:]]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=foreign,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # websockets logs handshake details (headers carry keys) at DEBUG, and
    # LiteLLM is chatty at INFO: both speak only for warnings and worse.
    for name in ("websockets", "LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "aiohttp"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
