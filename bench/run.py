"""The benchmark: tokenwire beside the ceiling and the LiteLLM proxy, in one run.

    .venv/bin/python bench/run.py [--quick] [--skip-proxy] [--out bench/RESULTS.md]

On one fake upstream (in this process) and one load, it runs, side by side:
1. the ceiling: the SSE load generator reading the fake upstream directly;
2. tokenwire (`tokenwire serve`, loaded by `tokenwire loadtest` over /v1/ws,
   and by the SSE load generator over /v1/chat/completions, OpenAI's format),
   and the floor: the reference relay (`relay.py`) under the same paced
   /v1/ws loads (tokenwire ÷ floor);
3. the LiteLLM proxy (`litellm[proxy]`, installed by this script into
   bench/.proxy-venv), loaded by the same SSE load generator.

Scenarios: one long stream; 100 and 1000 concurrent streams at 50 tokens/s;
1,000 and 5,000 idle sessions (tokenwire's memory per session); cancel
latency. Every scenario has a deadline; everything stays on 127.0.0.1.
Ratios to the ceiling and to the proxy are printed, not only absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import aiohttp
from core import (
    cancel_through_tokenwire,
    children,
    fake_deployment,
    idle_sessions,
    pct,
    rss_kb,
    start_server,
    write_config,
)
from relay import start_reference

from tokenwire.server.engines.fake_upstream import FakeUpstream

HERE = Path(__file__).resolve().parent
PY = sys.executable
TOKENWIRE = str(Path(PY).with_name("tokenwire"))
PROXY_VENV = HERE / ".proxy-venv"
LITELLM_VERSION = "1.106.2"
PACE = 50  # tokens per second per stream, "a realistic pace"
# The proxy refuses to start without a master key; a fresh one per run.
PROXY_KEY = "sk-" + os.urandom(32).hex()


def cpu_s(pid: int) -> float:
    """CPU seconds of the process and of its live children (``--workers``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_s(child) for child in children(pid))


async def run_json(*command: str, timeout: float) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # so a kill takes the load generator's workers too
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        os.killpg(process.pid, 9)
        await process.wait()
        return {"error": "timed out"}
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"exit {process.returncode}"}


async def sse_load(
    url: str,
    streams: int,
    prompt: str,
    deadline: float,
    ramp: float = 0.0,
    *,
    ui: bool = False,
    surface: str = "chat",
) -> dict[str, Any]:
    """``sse_load.py`` against ``url``: ``surface`` chat, ui, responses or messages."""
    return await run_json(
        PY, str(HERE / "sse_load.py"), "--url", url, "--model", "fake", "--streams", str(streams),
        "--prompt", prompt, "--deadline", str(deadline), "--key", PROXY_KEY,
        "--ramp", str(ramp), "--surface", "ui" if ui else surface, timeout=deadline + 30,
    )  # fmt: skip


async def ws_load(
    url: str, sessions: int, prompt: str, deadline: float, ramp: float = 0.0
) -> dict[str, Any]:
    return await run_json(
        TOKENWIRE, "loadtest", "--url", url, "--model", "fake", "--sessions", str(sessions),
        "--prompt", prompt, "--processes", "2" if sessions >= 100 else "1", "--json",
        "--deadline", str(deadline), "--ramp", str(ramp), timeout=deadline + 30,
    )  # fmt: skip


async def measured(pid: int | None, load: Any) -> dict[str, Any]:
    """Run a load, adding the gateway's CPU seconds (per 1000 tokens) to its report."""
    before = cpu_s(pid) if pid else 0.0
    report = await load
    if pid and "tokens" in report:
        used = cpu_s(pid) - before
        report["gateway_cpu_s"] = round(used, 3)
        report["gateway_cpu_s_per_1k_tokens"] = round(1000 * used / max(report["tokens"], 1), 4)
    return report


# -- the LiteLLM proxy ---------------------------------------------------------


def ensure_proxy() -> Path | None:
    litellm = PROXY_VENV / "bin" / "litellm"
    if not litellm.exists():
        print("installing litellm[proxy] into bench/.proxy-venv (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PROXY_VENV)], check=True)
        subprocess.run(
            [
                str(PROXY_VENV / "bin" / "pip"),
                "install",
                "-q",
                f"litellm[proxy]=={LITELLM_VERSION}",
            ],
            check=False,
        )
    return litellm if litellm.exists() else None


def write_proxy_config(folder: Path, deployment: dict[str, Any]) -> Path:
    """The LiteLLM proxy's config for ``deployment`` as model ``fake``: no retries."""
    path = folder / "proxy.yaml"
    path.write_text(json.dumps({
        "model_list": [{"model_name": "fake", "litellm_params": {**deployment, "max_retries": 0}}],
        "litellm_settings": {"num_retries": 0, "request_timeout": 600},
    }))  # fmt: skip
    return path


async def start_proxy(litellm: Path, config: Path, port: int) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": PROXY_KEY,
    }
    process = await asyncio.create_subprocess_exec(
        str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", "1", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(f"http://127.0.0.1:{port}/health/liveliness") as r:
                    if r.status == 200:
                        return process
            except aiohttp.ClientError:
                pass
            if process.returncode is not None:
                break
            await asyncio.sleep(0.2)
    if process.returncode is None:
        process.kill()
    raise RuntimeError("the LiteLLM proxy did not start")


async def cancel_through_proxy(base: str, fake: FakeUpstream, n: int, prompt: str) -> list[float]:
    out = []
    headers = {"Authorization": f"Bearer {PROXY_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(n):
            body = {
                "model": "fake",
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            }
            mark = fake.mark()
            response = await session.post(base + "/chat/completions", json=body)
            record = await fake.request_after(mark, 30)
            await response.content.readline()
            sent = time.monotonic()
            response.close()
            out.append(await record.wait_ended(30) - sent)
    return out


# -- the run -------------------------------------------------------------------


async def settle(fake: FakeUpstream, limit: float) -> None:
    """Wait (up to ``limit`` s) until no request is open at the fake upstream."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit):
            for record in list(fake.requests):
                await record.ended.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(args: argparse.Namespace) -> str:
    scale = 0.2 if args.quick else 1.0
    long_tokens = int(20_000 * scale) or 1000
    streams_tokens = 100  # two seconds at 50 tokens/s
    results: dict[str, dict[str, Any]] = {}
    memory: dict[int, float] = {}
    cancels: dict[str, list[float]] = {}

    async with FakeUpstream() as fake:
        tmp = Path(tempfile.mkdtemp())
        deployment = fake_deployment(fake)
        tw_config = write_config(tmp / "tokenwire.yaml", fake, max_message_bytes=1 << 20)
        # "before": the same server with every model on LiteLLM's acompletion stream.
        tw_off_config = write_config(
            tmp / "tokenwire-off.yaml", fake, max_message_bytes=1 << 20, fast_path="off"
        )
        proxy_config = write_proxy_config(tmp, deployment)

        long_prompt = "fake:" + json.dumps({"tokens": long_tokens})
        paced = "fake:" + json.dumps({"tokens": streams_tokens, "interval": 1 / PACE})
        # (name, streams, prompt, deadline s, ramp s: the starts spread evenly over it)
        scenarios = [
            ("one long stream", 1, long_prompt, 120, 0.0),
            ("100 streams at 50 tokens/s, started at once", 100, paced, 60, 0.0),
            ("100 streams at 50 tokens/s, started over 1 s", 100, paced, 60, 1.0),
            (
                "200 streams at 50 tokens/s, started over 1 s",
                int(200 * scale) or 40,
                paced,
                60,
                1.0,
            ),
            (
                "1000 streams at 50 tokens/s, started at once",
                int(1000 * scale) or 100,
                paced,
                90,
                0.0,
            ),
        ]

        # 1. the ceiling
        for name, n, prompt, deadline, ramp in scenarios:
            results[f"ceiling|{name}"] = await sse_load(fake.base_url, n, prompt, deadline, ramp)

        # 2. tokenwire: memory on a fresh server first, then the loads
        for count in (1000, 5000):
            server, url, _ = await start_server(tw_config)
            await asyncio.sleep(1)
            memory[count] = await idle_sessions(url, server.pid, count)
            server.terminate()
            await server.wait()
        await settle(fake, 60)
        for who, config in (("tokenwire", tw_config), ("tokenwire-off", tw_off_config)):
            server, url, _ = await start_server(config)
            try:
                for name, n, prompt, deadline, ramp in scenarios:
                    results[f"{who}|{name}"] = await measured(
                        server.pid, ws_load(url, n, prompt, deadline, ramp)
                    )
                    if who == "tokenwire":  # the same server, over OpenAI's SSE
                        await settle(fake, 60)
                        base = url.replace("ws://", "http://").removesuffix("/ws")
                        results[f"tokenwire-sse|{name}"] = await measured(
                            server.pid, sse_load(base, n, prompt, deadline, ramp)
                        )
                await settle(fake, 120)
                if who == "tokenwire":
                    to_finish, to_close = await cancel_through_tokenwire(url, fake, args.cancels)
                    cancels["tokenwire → finish"] = to_finish
                    cancels["tokenwire → upstream closed"] = to_close
                    results["tokenwire|idle rss"] = {"rss_kb": rss_kb(server.pid)}
            finally:
                server.terminate()
                await server.wait()

        # 2b. the floor: the reference relay (relay.py), on the same WebSocket loads
        reference, reference_url = await start_reference(fake.base_url)
        try:
            for name, n, prompt, deadline, ramp in scenarios[1:]:
                results[f"reference|{name}"] = await measured(
                    reference.pid, ws_load(reference_url, n, prompt, deadline, ramp)
                )
        finally:
            reference.terminate()
            await reference.wait()
        await settle(fake, 60)

        # 3. the LiteLLM proxy
        litellm = None if args.skip_proxy else ensure_proxy()
        if litellm is not None:
            port = free_port()
            try:
                proxy = await start_proxy(litellm, proxy_config, port)
            except RuntimeError as exc:
                results["proxy|error"] = {"error": str(exc)}
                return render(results, memory, cancels, scenarios, args)
            base = f"http://127.0.0.1:{port}/v1"
            await settle(fake, 60)
            try:
                for name, n, prompt, deadline, ramp in scenarios:
                    results[f"proxy|{name}"] = await measured(
                        proxy.pid, sse_load(base, n, prompt, deadline, ramp)
                    )
                # Streams abandoned at a deadline may still be in the proxy.
                await settle(fake, 120)
                slow = "fake:" + json.dumps({"tokens": 10_000, "interval": 0.02})
                try:
                    cancels["proxy → upstream closed"] = await cancel_through_proxy(
                        base, fake, args.cancels, slow
                    )
                except TimeoutError:
                    results["proxy|cancel"] = {"error": "no upstream request within 30 s"}
            finally:
                proxy.terminate()
                await proxy.wait()

    return render(results, memory, cancels, scenarios, args)


def render(results, memory, cancels, scenarios, args) -> str:  # type: ignore[no-untyped-def]
    def get(who: str, name: str) -> dict[str, Any]:
        return results.get(f"{who}|{name}", {})

    def fmt(value: Any, unit: str = "", digits: int = 1) -> str:
        return "—" if value is None else f"{value:,.{digits}f}{unit}"

    def row(label: str, values: list[str], *ratios: str) -> None:
        tail = list(ratios) + [""] * (3 - len(ratios))
        lines.append(f"| | {label} | " + " | ".join(values + tail) + " |")

    def ratio(a: Any, b: Any) -> str:
        return "—" if not a or not b else f"{a / b:.2f}×"

    lines = [
        "# Benchmark results",
        "",
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, LiteLLM {LITELLM_VERSION}; upstream, gateway and "
        "load generator share the machine. Command: `.venv/bin/python bench/run.py"
        + (" --quick" if args.quick else "")
        + "`.",
        "",
        "| scenario | measure | ceiling | tokenwire /v1/ws | tokenwire /v1/chat/completions "
        "| tokenwire, fast_path off (before) | LiteLLM proxy | tokenwire / ceiling "
        "| tokenwire / proxy | chat/completions / proxy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    whos = ("ceiling", "tokenwire", "tokenwire-sse", "tokenwire-off", "proxy")
    for name, n, *_ in scenarios:
        runs = [get(who, name) for who in whos]
        tput = [r.get("tokens_per_s") for r in runs]
        lines.append(
            f"| {name} | tokens/s | "
            + " | ".join([fmt(v, "", 0) for v in tput])
            + f" | {ratio(tput[1], tput[0])} | {ratio(tput[1], tput[4])} "
            + f"| {ratio(tput[2], tput[4])} |"
        )
        row("streams completed", [f"{r.get('generations_completed', '—')}/{n}" for r in runs])
        for key, label in (("ttft_ms", "first token"), ("inter_token_ms", "between tokens")):
            for q in ("p50", "p99"):
                row(f"{label} {q} (ms)", [fmt(r.get(key, {}).get(q)) for r in runs])
        cpu = [r.get("gateway_cpu_s_per_1k_tokens") for r in runs]
        row(
            "gateway CPU s / 1000 tokens",
            ["—"] + [fmt(v, "", 3) for v in cpu[1:]],
            "",
            ratio(cpu[1], cpu[4]),
            f"{ratio(cpu[2], cpu[1])} of /v1/ws",
        )
    for count, per_session in memory.items():
        lines.append(
            f"| {count:,} idle sessions | server memory per session | — | {per_session:.1f} KB | — | — | — | | | |"
        )
    for label, values in cancels.items():
        lines.append(
            f"| cancel | {label} p50 / p99 (ms) | — | "
            + (
                f"{pct(values, 0.5) * 1000:.1f} / {pct(values, 0.99) * 1000:.1f}"
                if "proxy" not in label
                else "—"
            )
            + " | — | — | "
            + (
                f"{pct(values, 0.5) * 1000:.1f} / {pct(values, 0.99) * 1000:.1f}"
                if "proxy" in label
                else "—"
            )
            + " | | | |"
        )
    lines += [
        "",
        "The floor: the reference relay (`bench/relay.py`: raw asyncio, an SSE line in, one "
        "WebSocket frame out) under the same WebSocket loads.",
        "",
        "| scenario | reference relay CPU s / 1000 tokens | tokenwire /v1/ws | tokenwire ÷ floor |",
        "|---|---|---|---|",
    ]
    for name, *_ in scenarios[1:]:
        floor = get("reference", name).get("gateway_cpu_s_per_1k_tokens")
        ours = get("tokenwire", name).get("gateway_cpu_s_per_1k_tokens")
        lines.append(
            f"| {name} | {fmt(floor, '', 3)} | {fmt(ours, '', 3)} | {ratio(ours, floor)} |"
        )
    failures = {
        k: v.get("generations_failed") for k, v in results.items() if v.get("generations_failed")
    }
    if failures:
        lines += ["", "Failed streams: " + json.dumps(failures)]
    lines += [
        "",
        "Raw reports:",
        "",
        "```json",
        json.dumps(results, indent=1, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a fifth of the load, for a smoke run")
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--cancels", type=int, default=30)
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    text = asyncio.run(main(arguments))
    print(text)
    if arguments.out:
        arguments.out.write_text(text)
