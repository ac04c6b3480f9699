"""Prometheus metrics of one server, in a registry of its own.

A registry per server (not prometheus-client's global one) keeps several
servers in one process, as the tests run them, from counting into each other.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.sessions = Gauge("tokenwire_sessions", "Open WebSocket sessions.", registry=registry)
        self.sessions_opened = Counter(
            "tokenwire_sessions_opened", "WebSocket sessions opened.", registry=registry
        )
        self.handshakes_rejected = Counter(
            "tokenwire_handshakes_rejected",
            "Handshakes refused, by HTTP status.",
            ["status"],
            registry=registry,
        )
        self.generations_active = Gauge(
            "tokenwire_generations_active", "Generations streaming now.", registry=registry
        )
        self.generations = Counter(
            "tokenwire_generations",
            "Generations ended, by outcome (finish reason or error code).",
            ["outcome"],
            registry=registry,
        )
        self.frames_sent = Counter(
            "tokenwire_frames_sent", "Frames written to clients.", registry=registry
        )
        self.tokens_sent = Counter(
            "tokenwire_tokens_sent",
            "Upstream chunks carrying text, reasoning or tool-call fragments relayed.",
            registry=registry,
        )
        self.errors = Counter(
            "tokenwire_errors", "Error frames sent, by code.", ["code"], registry=registry
        )
        self.time_to_first_token = Histogram(
            "tokenwire_time_to_first_token_seconds",
            "From generate read to the first output chunk relayed.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
