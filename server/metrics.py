"""Prometheus metrics of one server, in a registry of its own.

A registry per server (not prometheus-client's global one) keeps several
servers in one process, as the tests run them, from counting into each other.

With ``serve --workers N`` every worker process counts into memory-mapped
files under ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess
mode, which the command switches on before the first import), and
``/metrics``, whichever worker answers it, sums them all.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._multiprocess_dir = os.environ.get(MULTIPROCESS_ENV)
        self.sessions = Gauge(
            "tokenwire_sessions",
            "Sessions, by state: attached (a connection serves it) or detached (its"
            " connection dropped; it waits for a resume).",
            ["state"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.attached = self.sessions.labels("attached")
        self.detached = self.sessions.labels("detached")
        self.attached.set(0)
        self.detached.set(0)
        self.sessions_evicted = Counter(
            "tokenwire_sessions_evicted",
            "Detached sessions forgotten to make room for a new one at max_sessions.",
            registry=registry,
        )
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
            "tokenwire_generations_active",
            "Generations streaming now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.generations = Counter(
            "tokenwire_generations",
            "Generations ended, by outcome (finish reason or error code).",
            ["outcome"],
            registry=registry,
        )
        self.requests = Counter(
            "tokenwire_requests",
            "Generations ended or refused, by surface (ws, responses, chat_completions)"
            " and outcome (finish reason or error code).",
            ["surface", "outcome"],
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
        self.resumes = Counter(
            "tokenwire_resumes",
            "Resume messages, by outcome (resumed, unknown, expired).",
            ["outcome"],
            registry=registry,
        )
        self.resume_failures = Counter(
            "tokenwire_resume_failures",
            "Resumes not taken, per generation (and the session itself), by the reason the"
            " client is told (unknown, expired, gap) and its cause (resume_generation_bytes,"
            " store_unreachable, data_gone, not_started, ...).",
            ["reason", "cause"],
            registry=registry,
        )
        self.store_outages = Counter(
            "tokenwire_resume_store_outages",
            "Times the resume store (Redis) became unreachable.",
            registry=registry,
        )
        self.store_refusals = Counter(
            "tokenwire_resume_store_refusals",
            "Times the resume store (Redis) began refusing writes (full: OOM; read-only).",
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "tokenwire_time_to_first_token_seconds",
            "From generate read to the first output chunk relayed.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
