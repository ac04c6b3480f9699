"""What ``tokenwire loadtest`` measures, and how it tells it.

``Options`` is one run's settings; ``Samples`` what one client process
measured (merged across processes); ``report`` makes the JSON object
(``clients/python/README.md``, "Load tests"), ``check_thresholds`` the
pass/fail of each threshold, ``format_report`` the text a terminal shows.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ._common import EncodingName

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper."


@dataclass
class Options:
    url: str
    model: str
    sessions: int
    generations: int
    concurrent: int = 1
    prompt: str = DEFAULT_PROMPT
    max_tokens: int | None = None
    encoding: EncodingName = "json"
    api_key: str | None = None
    deadline: float | None = None
    """Seconds after which unfinished sessions are abandoned (counted as `deadline`)."""
    ramp: float = 0.0
    """Seconds over which the sessions' first generations start, evenly (after
    the barrier); 0: all at once."""
    barrier: int = 0
    """Sessions (over all processes) whose handshake must be over before any
    generation starts, so time to first token is not measured behind other
    sessions' handshakes; 0: no barrier."""
    disconnect_rate: float = 0.0
    """Times a second, on average, each session's connection is cut (the
    client resumes it); 0: never."""
    t0: float = 0.0
    """Wall-clock start of the run (``time.time()``), the origin of the per-second series."""
    slot: int = 0
    """This process's index in the live token counts."""


@dataclass
class Samples:
    """What one client process measured; merged across processes."""

    sessions_opened: int = 0
    sessions_failed: int = 0
    generations_completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    frames: int = 0
    violations: int = 0
    violation_examples: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    handshakes: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    disconnects: int = 0
    resumes: int = 0
    session_failures: Counter[str] = field(default_factory=Counter)
    """Sessions that did not open, by cause."""
    resume_failures: Counter[str] = field(default_factory=Counter)
    """Generations the server could not resume, by its reason (``gap``, ``unknown``, ...)."""
    failure_hints: dict[str, str] = field(default_factory=dict)
    """What the client said of each cause, the first time (it says what to do)."""
    live_tokens: int = 0
    """Tokens received so far (each as it arrives)."""
    series: dict[int, list[int]] = field(default_factory=dict)
    """Second of the run → [tokens, generations completed, generations failed]."""

    def tick(self, column: int, t0: float, n: int = 1) -> None:
        second = int(time.time() - t0)
        row = self.series.get(second)
        if row is None:
            row = self.series[second] = [0, 0, 0]
        row[column] += n

    def merge(self, other: Samples) -> None:
        for name in (
            "sessions_opened",
            "sessions_failed",
            "generations_completed",
            "tokens",
            "frames",
            "violations",
            "disconnects",
            "resumes",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.update(other.errors)
        self.session_failures.update(other.session_failures)
        self.resume_failures.update(other.resume_failures)
        for cause, hint in other.failure_hints.items():
            self.failure_hints.setdefault(cause, hint)
        for second, row in other.series.items():
            mine = self.series.setdefault(second, [0, 0, 0])
            for i, n in enumerate(row):
                mine[i] += n
        self.violation_examples.extend(other.violation_examples[: 5 - len(self.violation_examples)])
        self.ttft.extend(other.ttft)
        self.gaps.extend(other.gaps)
        self.handshakes.extend(other.handshakes)
        self.cpu_s += other.cpu_s

    def violation(self, what: str) -> None:
        self.violations += 1
        if len(self.violation_examples) < 5:
            self.violation_examples.append(what)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and max of durations in seconds, in milliseconds."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1] * 1000, 3)}


def report(samples: Samples, wall: float, options: Options, processes: int) -> dict[str, Any]:
    attempted = options.sessions * options.generations
    failed = sum(samples.errors.values()) + samples.sessions_failed * options.generations
    series = []
    for second in range(max(samples.series, default=-1) + 1):
        tokens, completed, failed_then = samples.series.get(second, (0, 0, 0))
        series.append(
            {"t": second, "tokens": tokens, "completed": completed, "failed": failed_then}
        )
    return {
        "url": options.url,
        "model": options.model,
        "processes": processes,
        "sessions_opened": samples.sessions_opened,
        "sessions_failed": samples.sessions_failed,
        "sessions_failed_by_cause": dict(sorted(samples.session_failures.items())),
        "session_failure_messages": dict(sorted(samples.failure_hints.items())),
        "error_rate": round(min(failed, attempted) / attempted, 4) if attempted else 0.0,
        "generations_attempted": attempted,
        "generations_completed": samples.generations_completed,
        "generations_failed": dict(sorted(samples.errors.items())),
        "generations_not_started": max(
            0, attempted - samples.generations_completed - sum(samples.errors.values())
        ),
        "tokens": samples.tokens,
        "frames": samples.frames,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(samples.tokens / wall, 1) if wall else 0.0,
        "ttft_ms": percentiles(samples.ttft),
        "inter_token_ms": percentiles(samples.gaps),
        "handshake_ms": percentiles(samples.handshakes),
        "client_cpu_s": round(samples.cpu_s, 3),
        "disconnects": samples.disconnects,
        "resumes": samples.resumes,
        "resume_failures": dict(sorted(samples.resume_failures.items())),
        "violations": samples.violations,
        "violation_examples": samples.violation_examples,
        "series": series,
    }


def check_thresholds(
    data: dict[str, Any],
    *,
    max_error_rate: float = 0.0,
    max_ttft_p99_ms: float | None = None,
    max_gap_p99_ms: float | None = None,
) -> list[dict[str, Any]]:
    """Each threshold, its limit, the measured value and whether it passed."""
    checks = [("error_rate", max_error_rate, data["error_rate"])]
    if max_ttft_p99_ms is not None:
        checks.append(("ttft_p99_ms", max_ttft_p99_ms, data["ttft_ms"]["p99"]))
    if max_gap_p99_ms is not None:
        checks.append(("inter_token_p99_ms", max_gap_p99_ms, data["inter_token_ms"]["p99"]))
    out = []
    for name, limit, value in checks:
        # A latency never measured (no token came) does not pass.
        passed = value is not None and value <= limit
        out.append({"name": name, "limit": limit, "value": value, "passed": passed})
    return out


def format_report(data: dict[str, Any]) -> str:
    def pct(name: str) -> str:
        p = data[name]
        if p["p50"] is None:
            return "—"
        return f"p50 {p['p50']:.1f}  p90 {p['p90']:.1f}  p99 {p['p99']:.1f}  max {p['max']:.1f} ms"

    failed = ", ".join(f"{k} {v}" for k, v in data["generations_failed"].items()) or "none"
    unstarted = data.get("generations_not_started", 0)
    if unstarted:
        failed += f"; not started: {unstarted} (their session failed, or the deadline came)"
    causes = ", ".join(f"{k} {v}" for k, v in data["sessions_failed_by_cause"].items())
    lines = [
        f"sessions        {data['sessions_opened']} opened, {data['sessions_failed']} failed"
        + (f" ({causes})" if causes else ""),
        f"generations     {data['generations_completed']} completed of "
        f"{data.get('generations_attempted', '?')}; failed: {failed}",
        f"received        {data['tokens']} tokens in {data['frames']} frames",
        f"wall time       {data['wall_s']:.2f} s   ({data['tokens_per_s']:.0f} tokens/s)",
        f"first token     {pct('ttft_ms')}",
        f"between tokens  {pct('inter_token_ms')}",
        f"handshake       {pct('handshake_ms')}",
        f"client CPU      {data['client_cpu_s']:.2f} s over {data['processes']} process(es)",
        f"disconnects     {data['disconnects']} cut, {data['resumes']} resumed"
        + "".join(f", {n} not resumed ({why})" for why, n in data["resume_failures"].items()),
        f"violations      {data['violations']}",
    ]
    lines += [f"  - {example}" for example in data["violation_examples"]]
    for check in data.get("thresholds", []):
        mark = "pass" if check["passed"] else "FAIL"
        value = "—" if check["value"] is None else check["value"]
        lines.append(f"threshold       {mark}  {check['name']} {value} (limit {check['limit']})")
    for cause, message in data.get("session_failure_messages", {}).items():
        lines.append(f"  - {cause}: {message}")
    return "\n".join(lines)
