"""``tokenwire loadtest``: many sessions, many generations, and the contract checked.

Opens N sessions; each runs G generations, C at a time on its one connection.
``--processes P`` spreads the sessions over P client processes so that the
load generator is not the bottleneck. Every frame goes through the client's
``ResultBuilder`` (seq contiguity, one terminal frame, tokens equal to
``finish.content``, tool-call assembly); frames for a generation that already
ended count too. Any violation makes the exit status 1.

``--disconnect-rate R`` cuts each session's TCP connection at random, R
times a second on average: the client resumes (``reconnect=True``) and the
same checks run on every frame, so a hole or a duplicate is a violation.

It fails loudly, so that CI can gate on it (as k6's thresholds do): the exit
status is 1 for a contract violation, 3 when the error rate is over
``--max-error-rate`` (default 0: any failed session or generation) or a
latency is over ``--max-ttft-p99-ms`` or ``--max-gap-p99-ms``. Failures are
counted by cause: a refused connection, an HTTP status at the handshake
(401, 404, 503, ...), a timeout, and each error code of a generation.

``--json`` prints one object, with a per-second series (tokens received,
generations completed and failed, each second); its fields are documented in
``clients/python/README.md`` ("Load tests").
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from tokenwire.protocol import ProtocolViolation, Token

from ._async import AsyncClient
from .errors import ConnectFailed, ConnectionLost, GenerationError
from .loadtest_report import (
    DEFAULT_PROMPT,
    Options,
    Samples,
    check_thresholds,
    format_report,
    percentiles,
    report,
)

__all__ = ["DEFAULT_PROMPT", "Options", "Samples", "main", "percentiles", "run"]

PROGRESS_INTERVAL = 0.5
"""Seconds between two progress lines on a terminal."""

# Shared counters: sessions open, generations done, errors (progress only),
# and sessions whose handshake is over (the start barrier). Tokens are
# counted per process, as they arrive (``live``: one slot per process).
OPEN, DONE, ERRORS, SETTLED = range(4)
LIVE_FLUSH = 0.1
"""Seconds between two updates of a process's live token count."""
EXIT_VIOLATION = 1
EXIT_THRESHOLD = 3
BARRIER_POLL = 0.002
"""Seconds between two looks at the start barrier (one poller per process)."""


async def _generation(
    client: AsyncClient, options: Options, samples: Samples, counters: Any
) -> None:
    # Not loop.time(): uvloop's clock ticks in whole milliseconds and is read
    # once per loop iteration.
    clock = time.perf_counter
    params = {"max_tokens": options.max_tokens} if options.max_tokens else None
    started = clock()
    generation = await client.generate(
        model=options.model, messages=[{"role": "user", "content": options.prompt}], params=params
    )
    last: float | None = None
    texts: list[str] = []
    completed = False
    try:
        async for event in generation:
            now = clock()
            samples.frames += 1
            if isinstance(event, Token):
                texts.append(event.text)
                samples.live_tokens += 1
                samples.tick(0, options.t0)
                if last is None:
                    samples.ttft.append(now - started)
                else:
                    samples.gaps.append(now - last)
                last = now
        result = await generation.result()
        completed = True
    except GenerationError as exc:
        samples.frames += 1
        samples.errors[exc.code] += 1
        samples.tick(2, options.t0)
        counters[ERRORS] += 1
        return
    except ProtocolViolation as exc:
        samples.violation(str(exc))
        return
    finally:
        if not completed:  # failed, or abandoned at the deadline: count what came
            samples.tokens += len(texts)
    samples.frames += 1  # finish
    if "".join(texts) != result.content:
        samples.violation(f"{generation.id}: token texts differ from finish.content")
    tokens = result.usage.completion_tokens if result.usage else len(texts)
    samples.tokens += tokens
    samples.generations_completed += 1
    samples.tick(1, options.t0)
    counters[DONE] += 1


async def _session(
    options: Options, samples: Samples, counters: Any, go: asyncio.Event, delay: float = 0.0
) -> None:
    started = time.perf_counter()
    client = AsyncClient(
        options.url,
        api_key=options.api_key,
        encoding=options.encoding,
        reconnect=options.disconnect_rate > 0,
    )
    try:
        await client.__aenter__()
    except Exception as exc:  # refused, timed out, unreachable, an HTTP status
        samples.sessions_failed += 1
        cause = failure_cause(exc)
        samples.session_failures[cause] += 1
        samples.failure_hints.setdefault(cause, str(exc))
        counters[ERRORS] += 1
        _settled(counters)
        return
    samples.handshakes.append(time.perf_counter() - started)
    samples.sessions_opened += 1
    counters[OPEN] += 1
    _settled(counters)
    await go.wait()
    if delay:
        await asyncio.sleep(delay)
    remaining = iter(range(options.generations))

    async def worker() -> None:
        for _ in remaining:
            try:
                await _generation(client, options, samples, counters)
            except ConnectionLost as exc:
                # A generation the server could not resume is a failure with
                # its reason: the answer was lost.
                cause = exc.resume_failure
                if cause is not None:
                    samples.resume_failures[cause] += 1
                samples.errors[f"resume_failed:{cause}" if cause else "connection_lost"] += 1
                if len(samples.violation_examples) < 5 and cause:
                    print(exc, file=sys.stderr)
                samples.tick(2, options.t0)
                counters[ERRORS] += 1

    async def cut() -> None:
        """Drop the connection now and then; the client resumes it."""
        while True:
            await asyncio.sleep(random.expovariate(options.disconnect_rate))
            if client._drop():
                samples.disconnects += 1

    cutter = asyncio.create_task(cut()) if options.disconnect_rate > 0 else None
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, options.concurrent)):
                group.create_task(worker())
    finally:
        if cutter is not None:
            cutter.cancel()
        samples.resumes += client.resumes
        if client.stray_frames:
            samples.violation(
                f"{client.stray_frames} frames after their generation's terminal frame"
            )
        await client.close()
        counters[OPEN] -= 1


def failure_cause(exc: BaseException) -> str:
    """Why a session did not open, in a word a report can count by."""
    return exc.cause if isinstance(exc, ConnectFailed) else type(exc).__name__


def _settled(counters: Any) -> None:
    with counters.get_lock():
        counters[SETTLED] += 1


async def _start_when_settled(counters: Any, barrier: int, go: asyncio.Event) -> None:
    # A counter shared across processes: nothing to await but time.
    while counters[SETTLED] < barrier:  # noqa: ASYNC110
        await asyncio.sleep(BARRIER_POLL)
    go.set()


async def _flush_live(samples: Samples, live: Any, slot: int) -> None:
    while True:
        live[slot] = samples.live_tokens
        await asyncio.sleep(LIVE_FLUSH)


async def _run(options: Options, counters: Any, live: Any) -> Samples:
    samples = Samples()
    cpu_before = _cpu()
    flusher = asyncio.create_task(_flush_live(samples, live, options.slot))
    go = asyncio.Event()
    starter = asyncio.create_task(_start_when_settled(counters, options.barrier, go))
    # With several processes each spreads its share over the whole ramp.
    tasks = [
        asyncio.create_task(
            _session(options, samples, counters, go, options.ramp * i / options.sessions)
        )
        for i in range(options.sessions)
    ]
    _, late = await asyncio.wait(tasks, timeout=options.deadline)
    starter.cancel()
    for task in late:
        task.cancel()  # closes its connection: the server cancels its generations
    if late:
        await asyncio.wait(late)
        samples.errors["deadline"] += len(late)
    flusher.cancel()
    live[options.slot] = samples.live_tokens
    samples.cpu_s = _cpu() - cpu_before
    return samples


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(options: Options, counters: Any, live: Any, out: Any) -> None:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    samples = runner(_run(options, counters, live))
    raw = asdict(samples)
    # asdict() would rebuild the Counters from pairs
    raw["errors"] = dict(samples.errors)
    raw["session_failures"] = dict(samples.session_failures)
    raw["resume_failures"] = dict(samples.resume_failures)
    out.put(raw)


def _samples_from(raw: dict[str, Any]) -> Samples:
    raw["errors"] = Counter(raw["errors"])
    raw["session_failures"] = Counter(raw["session_failures"])
    raw["resume_failures"] = Counter(raw["resume_failures"])
    return Samples(**raw)


def run(options: Options, processes: int = 1, *, progress: bool | None = None) -> dict[str, Any]:
    """Run the load; returns the report (the ``--json`` object)."""
    if progress is None:
        progress = sys.stderr.isatty()
    processes = max(1, min(processes, options.sessions))
    context = multiprocessing.get_context("spawn")
    counters = context.Array("q", 4)
    live = context.Array("q", processes, lock=False)  # one writer per slot
    out = context.Queue()
    base, extra = divmod(options.sessions, processes)
    shares = [base + (i < extra) for i in range(processes)]
    started = time.perf_counter()
    t0 = time.time()
    workers = [
        context.Process(
            target=_worker,
            args=(
                Options(
                    **{
                        **asdict(options),
                        "sessions": share,
                        "barrier": options.sessions,
                        "t0": t0,
                        "slot": slot,
                    }
                ),
                counters,
                live,
                out,
            ),
            daemon=True,
        )
        for slot, share in enumerate(shares)
        if share
    ]
    for process in workers:
        process.start()
    samples = Samples()
    pending = len(workers)
    while pending:
        try:
            samples.merge(_samples_from(out.get(timeout=PROGRESS_INTERVAL)))
            pending -= 1
        except queue.Empty:  # time for a progress line
            if not any(p.is_alive() for p in workers) and out.empty():
                break
        if progress:
            elapsed = time.perf_counter() - started
            rate = sum(live) / max(elapsed, 1e-9)
            print(
                f"\r{elapsed:6.1f} s  sessions {counters[OPEN]:>6}  generations {counters[DONE]:>8}"
                f"  tokens/s {rate:>10.0f}  errors {counters[ERRORS]}",
                end="",
                file=sys.stderr,
                flush=True,
            )
    wall = time.perf_counter() - started
    for process in workers:
        process.join()
    if progress:
        print(file=sys.stderr)
    crashed = sum(1 for p in workers if p.exitcode != 0)
    if crashed:
        samples.violation(f"{crashed} load generator process(es) failed")
    return report(samples, wall, options, processes)


def main(args: Any) -> int:
    options = Options(
        url=args.url,
        model=args.model,
        sessions=args.sessions,
        generations=args.generations,
        concurrent=args.concurrent,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        encoding=args.encoding,
        api_key=args.api_key,
        deadline=args.deadline,
        ramp=args.ramp,
        disconnect_rate=args.disconnect_rate,
    )
    data = run(options, args.processes, progress=None if not args.json else False)
    data["thresholds"] = check_thresholds(
        data,
        max_error_rate=args.max_error_rate,
        max_ttft_p99_ms=args.max_ttft_p99_ms,
        max_gap_p99_ms=args.max_gap_p99_ms,
    )
    print(json.dumps(data) if args.json else format_report(data))
    if data["violations"]:
        return EXIT_VIOLATION
    if not all(check["passed"] for check in data["thresholds"]):
        return EXIT_THRESHOLD
    return 0
