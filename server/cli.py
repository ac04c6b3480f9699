"""The ``tokenwire`` command: ``serve``, ``chat`` and ``fake-upstream``.

Start-up order matters: the config is validated before LiteLLM is imported
(a bad config fails in milliseconds, with one line and exit status 2), and
LiteLLM's price-map download is switched off before that import unless the
user set ``LITELLM_LOCAL_MODEL_COST_MAP`` themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import gc
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

if TYPE_CHECKING:  # the modules themselves are imported late: see the docstring
    from .config import ServerSettings
    from .engines.upstream import Upstream
    from .workers import Workers

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
EXIT_CONFIG: Final = 2
MAX_PORT: Final = 65_535
WORKER_MIN_LIFETIME: Final = 5.0
"""A worker that fails by itself sooner is not replaced: the server stops (exit 1)."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        raise SystemExit(EXIT_CONFIG)
    args.run(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokenwire")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenwire", description="Stream LLM generations over WebSockets."
    )
    parser.add_argument("--version", action="version", version=f"tokenwire {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server (default: the offline model demo)")
    serve.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})"
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    serve.add_argument("--config", metavar="FILE", help="YAML config: model_list, server, ...")
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="offer a LiteLLM model by name, e.g. openai/gpt-4o-mini (repeatable)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT); one per core (default 1)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="(default info)",
    )
    serve.add_argument(
        "--log-format",
        choices=["json", "console"],
        help="default: console on a terminal, else json",
    )
    serve.set_defaults(run=_serve)

    chat = commands.add_parser("chat", help="chat with a tokenwire server in the terminal")
    url = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}/v1/ws"
    chat.add_argument("--url", default=url, help=f"the server's URL (default {url})")
    chat.add_argument("--model", help="default: the first model the server offers")
    chat.add_argument(
        "--api-key", default=os.environ.get("TOKENWIRE_API_KEY"), help="default: $TOKENWIRE_API_KEY"
    )
    chat.set_defaults(run=_chat)

    load = commands.add_parser("loadtest", help="load a tokenwire server and check the contract")
    load.add_argument("--url", default=url, help=f"the server's URL (default {url})")
    load.add_argument("--model", default="demo", help="the model to load (default demo)")
    load.add_argument("--sessions", type=int, default=10, help="sessions to open, N (default 10)")
    load.add_argument(
        "--generations", type=int, default=1, help="generations per session, G (default 1)"
    )
    load.add_argument(
        "--concurrent", type=int, default=1, help="generations at once per session (default 1)"
    )
    load.add_argument(
        "--prompt", default=None, help="the user message of every generation (default: a fixed one)"
    )
    load.add_argument(
        "--max-tokens", type=int, default=None, help="max_tokens of each generation (default none)"
    )
    load.add_argument(
        "--encoding", choices=["json", "msgpack"], default="json", help="(default json)"
    )
    load.add_argument("--processes", type=int, default=1, help="client processes (default 1)")
    load.add_argument(
        "--api-key",
        default=os.environ.get("TOKENWIRE_API_KEY"),
        help="default: $TOKENWIRE_API_KEY",
    )
    load.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds; unfinished sessions are abandoned (default: none)",
    )
    load.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="seconds over which the sessions' first generations start, evenly (default 0)",
    )
    load.add_argument(
        "--disconnect-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="cut each session's connection R times a second on average; the client "
        "resumes, and every frame is checked for holes and duplicates (default 0)",
    )
    load.add_argument(
        "--max-error-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="failed sessions and generations allowed, as a share of those attempted "
        "(default 0: any failure exits 3)",
    )
    load.add_argument(
        "--max-ttft-p99-ms",
        type=float,
        default=None,
        metavar="MS",
        help="exit 3 if time to first token's p99 is over this",
    )
    load.add_argument(
        "--max-gap-p99-ms",
        type=float,
        default=None,
        metavar="MS",
        help="exit 3 if the p99 gap between two tokens is over this",
    )
    load.add_argument("--json", action="store_true", help="print one JSON object")
    load.set_defaults(run=_loadtest)

    fake = commands.add_parser("fake-upstream", help="run the fake OpenAI-compatible upstream")
    fake.add_argument("--host", default=DEFAULT_HOST, help=f"(default {DEFAULT_HOST})")
    fake.add_argument("--port", type=int, default=9000, help="(default 9000; 0: any free one)")
    fake.add_argument("--tokens", type=int, default=8, help="content chunks per answer (default 8)")
    fake.add_argument(
        "--tokens-per-second",
        type=float,
        default=0.0,
        help="pace of each stream (default 0: unpaced)",
    )
    fake.set_defaults(run=_fake_upstream)
    return parser


def _fail(message: str, status: int) -> NoReturn:
    print(f"tokenwire: {message}", file=sys.stderr)
    raise SystemExit(status)


def _serve(args: argparse.Namespace) -> None:
    started = time.monotonic()
    # A crash in a C extension (one segfault in libpython's collector was
    # seen once under the soak, 2026-12-06) then leaves every thread's
    # Python stack in the log instead of nothing.
    faulthandler.enable()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.workers < 1:
        _fail("--workers: must be at least 1", EXIT_CONFIG)
    if not 0 <= args.port <= MAX_PORT:
        _fail(f"--port: {args.port} is not a port (0 to {MAX_PORT}; 0: any free one)", EXIT_CONFIG)
    from .config import ConfigError, load

    try:
        config = load(args.config).with_models(args.model)
    except ConfigError as exc:
        _fail(f"config error: {exc}", EXIT_CONFIG)

    metrics_dir = None
    if args.workers > 1:
        # Before prometheus-client is first imported: its multiprocess mode
        # is chosen at import (see metrics.py).
        metrics_dir = tempfile.mkdtemp(prefix="tokenwire-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    from . import logs

    logs.configure(
        args.log_level, json=None if args.log_format is None else args.log_format == "json"
    )

    from .engines.upstream import Upstream  # imports LiteLLM: seconds, done once

    try:
        upstream = Upstream(config, repeated_chunk_limit=config.server.repeated_chunk_limit)
    except (TypeError, ValueError) as exc:  # router_settings / litellm_settings LiteLLM refused
        _fail(f"config error: {' '.join(str(exc).split())}", EXIT_CONFIG)
    default = config.server.default_model
    if default is not None and default not in upstream.models:
        offered = ", ".join(upstream.models)
        _fail(
            f"config error: server.default_model: {default!r} is not offered ({offered})",
            EXIT_CONFIG,
        )
    import structlog

    for name, key in upstream.keyless.items():
        structlog.get_logger("tokenwire").warning(
            f"model {name}: {key} is not set",
            hint="its generations fail with upstream_rejected until the server starts with it",
        )
    from .limits import raise_open_files

    raise_open_files(config.server.max_sessions)
    upstream.warm_up()
    # LiteLLM's import leaves ≈300,000 objects the collector would walk in
    # every full collection: a 170 ms pause, at random, for every session.
    # They live as long as the process, so they leave the collector's view
    # (and forked workers share their pages untouched).
    gc.collect()
    gc.freeze()
    try:
        if metrics_dir is None:
            _run(_run_server(args.host, args.port, config.server, upstream, started))
        else:
            try:
                _run_workers(args, config.server, upstream, started)
            finally:
                shutil.rmtree(metrics_dir, ignore_errors=True)
    except OSError as exc:
        _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", EXIT_CONFIG)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (a faster loop), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _run_workers(
    args: argparse.Namespace, settings: ServerSettings, upstream: Upstream, started: float
) -> None:
    """``--workers N``: N forked processes, each a whole server, on one port.

    The parent has done the slow part once (config, LiteLLM, tokenizers), so
    a fork starts in milliseconds and shares those pages. The kernel spreads
    connections over the workers' SO_REUSEPORT sockets; a placeholder socket
    held by the parent keeps the port (and resolves port 0 to one port for
    all). SIGTERM/SIGINT go to every worker, each drains; a worker that dies
    otherwise is replaced.
    """
    import structlog
    from prometheus_client import multiprocess

    from .workers import Workers

    log = structlog.get_logger("tokenwire")
    family, kind, proto, _, address = socket.getaddrinfo(
        args.host, args.port, type=socket.SOCK_STREAM
    )[0]
    placeholder = socket.socket(family, kind, proto)
    placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    placeholder.bind(address)
    port = placeholder.getsockname()[1]
    # Where the workers reach each other (resume and previous_response_id
    # land on any worker: workers.py); mkdtemp makes it 0700.
    peers = tempfile.mkdtemp(prefix="tokenwire-workers-")

    def spawn(number: int) -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 0
            try:
                # A terminal's Ctrl-C reaches the whole process group: the
                # parent alone takes SIGINT and passes it on as one SIGTERM.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                structlog.contextvars.bind_contextvars(worker=number)
                _run(
                    _run_server(
                        args.host,
                        port,
                        settings,
                        upstream,
                        started,
                        reuse_port=True,
                        signals=(signal.SIGTERM,),
                        workers=Workers(peers, number, args.workers),
                    )
                )
            except BaseException:
                log.exception("worker failed")
                status = 1
            finally:
                os._exit(status)
        spawned[pid] = time.monotonic()
        return pid

    spawned: dict[int, float] = {}
    workers = {spawn(n): n for n in range(args.workers)}
    signals_seen = 0
    failed = False

    def stop(sig: int, _frame: object) -> None:
        # The first signal drains every worker; a second stops them at once.
        nonlocal signals_seen
        signals_seen += 1
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signals_seen == 1 else signal.SIGKILL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        number = workers.pop(pid, None)
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        if number is None or signals_seen or failed:
            continue
        lived = time.monotonic() - spawned.pop(pid, 0.0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) and lived < WORKER_MIN_LIFETIME:
            # It failed by itself, early (the port, say): another would too.
            log.error("worker failed at start; stopping", worker=number, status=status)
            failed = True
            stop(signal.SIGTERM, None)
            continue
        log.error("worker died, starting another", worker=number, status=status)
        workers[spawn(number)] = number
    placeholder.close()
    shutil.rmtree(peers, ignore_errors=True)
    if failed:
        raise SystemExit(1)


async def _run_server(
    host: str,
    port: int,
    settings: ServerSettings,
    upstream: Upstream,
    started: float,
    *,
    reuse_port: bool = False,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    workers: Workers | None = None,
) -> None:
    import structlog

    from .app import TokenwireServer

    log = structlog.get_logger("tokenwire")
    server = TokenwireServer(settings, upstream, workers)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    async with server.listen(host, port, reuse_port=reuse_port) as (bound_host, bound_port):
        web_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info(
            "listening",
            url=f"ws://{web_host}:{bound_port}/v1/ws",
            chat=f"http://{web_host}:{bound_port}/",
            openai=f"http://{web_host}:{bound_port}/v1",
            models=server.models,
            startup_s=round(time.monotonic() - started, 2),
            pid=os.getpid(),
        )
        await stop.wait()
        # A second signal during the drain stops at once, the default way.
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.drain()


def _chat(args: argparse.Namespace) -> None:
    from tokenwire.client.chat import run

    raise SystemExit(run(args.url, args.model, args.api_key))


def _loadtest(args: argparse.Namespace) -> None:
    from tokenwire.client import loadtest

    if args.prompt is None:
        args.prompt = loadtest.DEFAULT_PROMPT
    raise SystemExit(loadtest.main(args))


def _fake_upstream(args: argparse.Namespace) -> None:
    from .engines.fake_upstream import Scenario, serve

    interval = 1.0 / args.tokens_per_second if args.tokens_per_second > 0 else 0.0
    try:
        asyncio.run(serve(args.host, args.port, Scenario(tokens=args.tokens, interval=interval)))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", EXIT_CONFIG)


if __name__ == "__main__":
    main()
