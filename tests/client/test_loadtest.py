"""`tokenwire loadtest` against the real server, and against a server that breaks the contract."""

from __future__ import annotations

import json

import websockets
from conftest import TIMEOUT, TOKENWIRE
from processes import loadtest
from resume_parts import free_port


async def test_a_clean_run_reports_every_figure(server):
    prompt = "fake:" + json.dumps({"tokens": 20, "interval": 0.002})
    status, report = await loadtest(
        server.url, "--model", "fake", "--sessions", "6", "--generations", "3",
        "--concurrent", "2", "--prompt", prompt, "--processes", "2", "--encoding", "msgpack",
    )  # fmt: skip
    assert status == 0
    assert (report["sessions_opened"], report["sessions_failed"]) == (6, 0)
    assert report["generations_completed"] == 18 and report["generations_failed"] == {}
    assert report["tokens"] == 18 * 20 and report["frames"] == 18 * 21
    assert report["violations"] == 0 and report["processes"] == 2
    for name in ("ttft_ms", "inter_token_ms", "handshake_ms"):
        p = report[name]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"]
    assert report["tokens_per_s"] > 0 and report["client_cpu_s"] > 0


async def test_demo_and_failures_by_code(server):
    status, report = await loadtest(
        server.url, "--model", "demo", "--sessions", "2", "--max-tokens", "5"
    )
    assert status == 0 and report["generations_completed"] == 2 and report["tokens"] == 10
    prompt = "fake:" + json.dumps({"status": 429})
    status, report = await loadtest(
        server.url, "--model", "fake", "--sessions", "2", "--prompt", prompt
    )
    assert status == 3  # every generation failed: the run fails
    assert report["generations_failed"] == {"upstream_rate_limited": 2}
    assert report["error_rate"] == 1.0
    assert report["thresholds"] == [
        {"name": "error_rate", "limit": 0.0, "value": 1.0, "passed": False}
    ]


async def test_sessions_that_drop_and_resume_lose_nothing(server):
    prompt = "fake:" + json.dumps({"tokens": 100, "interval": 0.005})
    status, report = await loadtest(
        server.url, "--model", "fake", "--sessions", "8", "--generations", "3",
        "--prompt", prompt, "--disconnect-rate", "3",
    )  # fmt: skip
    assert status == 0, report
    assert report["disconnects"] > 0
    assert 0 < report["resumes"] <= report["disconnects"]
    assert report["violations"] == 0  # no hole, no duplicate, on every frame
    assert report["generations_completed"] == 24 and report["generations_failed"] == {}
    assert report["tokens"] == 24 * 100


async def test_refused_sessions_count_as_failed(start_server):
    async with start_server(max_sessions=1) as handle:
        held = await websockets.connect(handle.url, open_timeout=TIMEOUT)
        status, report = await loadtest(handle.url, "--sessions", "3")
        await held.close()
    assert status == 3  # not a contract violation (1), but a failed run
    assert (report["sessions_opened"], report["sessions_failed"]) == (0, 3)
    assert report["sessions_failed_by_cause"] == {"http_503": 3}
    assert (report["generations_attempted"], report["generations_not_started"]) == (3, 3)


def test_the_text_report_says_what_was_not_started():
    from tokenwire.client.loadtest_report import format_report

    data = {
        "sessions_opened": 0, "sessions_failed": 3, "sessions_failed_by_cause": {"http_503": 3},
        "generations_attempted": 3, "generations_completed": 0, "generations_failed": {},
        "generations_not_started": 3, "tokens": 0, "frames": 0, "wall_s": 0.1,
        "tokens_per_s": 0.0, "client_cpu_s": 0.0, "processes": 1, "disconnects": 0,
        "resumes": 0, "resume_failures": {}, "violations": 0, "violation_examples": [],
        **{k: {"p50": None} for k in ("ttft_ms", "inter_token_ms", "handshake_ms")},
    }  # fmt: skip
    text = format_report(data)
    assert "0 completed of 3; failed: none; not started: 3" in text, text


async def test_a_contract_violation_fails_the_run():
    """A server whose finish.content differs from its tokens, and that sends a
    frame after the terminal one."""

    async def lying_server(ws):
        await ws.send(
            json.dumps(
                {
                    "type": "ready",
                    "session": "s",
                    "protocol": "tokenwire.v1",
                    "models": ["m"],
                    "limits": {"max_generations": 1, "max_message_bytes": 1000},
                }
            )
        )
        lies = True
        async for data in ws:
            gid = json.loads(data)["id"]
            frames = [
                {"type": "token", "id": gid, "seq": 0, "text": "a"},
                {"type": "finish", "id": gid, "seq": 1, "reason": "stop",
                 "content": "b" if lies else "a", "tool_calls": [], "usage": None},
            ]  # fmt: skip
            if lies:  # and a frame after the terminal one, before the next generation's
                frames.append({"type": "token", "id": gid, "seq": 2, "text": "late"})
            lies = False
            for frame in frames:
                await ws.send(json.dumps(frame))

    async with websockets.serve(lying_server, "127.0.0.1", 0, subprotocols=["tokenwire.v1"]) as ws:
        port = ws.sockets[0].getsockname()[1]
        status, report = await loadtest(
            f"ws://127.0.0.1:{port}", "--model", "m", "--sessions", "1", "--generations", "2"
        )
    assert status == 1
    assert report["violations"] == 2
    assert any("finish.content" in e for e in report["violation_examples"])


async def test_a_deadline_ends_the_run_and_keeps_what_arrived(server, fake):
    prompt = "fake:" + json.dumps({"tokens": 1000, "interval": 0.02})
    status, report = await loadtest(
        server.url, "--model", "fake", "--sessions", "2", "--prompt", prompt, "--deadline", "1.5"
    )
    assert status == 3 and report["wall_s"] < 1.5 + TIMEOUT
    assert report["generations_completed"] == 0
    assert report["generations_failed"] == {"deadline": 2}
    assert 0 < report["tokens"] < 2000
    for record in fake.requests[-2:]:  # abandoning a session cancels its generations
        await record.wait_ended(TIMEOUT)
        assert record.disconnected


async def test_generations_start_after_every_handshake_and_spread_over_the_ramp(server, fake):
    prompt = "fake:" + json.dumps({"tokens": 2})
    seen = len(fake.requests)
    status, report = await loadtest(
        server.url, "--model", "fake", "--sessions", "6", "--processes", "2",
        "--prompt", prompt, "--ramp", "1.0",
    )  # fmt: skip
    assert status == 0 and report["generations_completed"] == 6
    opened = sorted(r.opened_at for r in fake.requests[seen:])
    # Six starts spread evenly over one second: 5/6 s between first and last.
    assert 0.6 < opened[-1] - opened[0] < 2.0


async def test_failures_are_counted_by_cause(start_server):
    refused_port = free_port()
    status, report = await loadtest(f"ws://127.0.0.1:{refused_port}/v1/ws", "--sessions", "2")
    assert status == 3 and report["sessions_failed_by_cause"] == {"refused": 2}
    async with start_server(api_keys=["sk-load"]) as handle:
        status, report = await loadtest(handle.url, "--sessions", "2")
        assert status == 3 and report["sessions_failed_by_cause"] == {"http_401": 2}
        assert "API key" in report["session_failure_messages"]["http_401"]
        wrong_path = handle.url.replace("/v1/ws", "/v1/nope")
        status, report = await loadtest(wrong_path, "--sessions", "1", "--api-key", "sk-load")
        assert status == 3 and report["sessions_failed_by_cause"] == {"http_404": 1}
        status, report = await loadtest(
            handle.url, "--sessions", "1", "--api-key", "sk-load", "--model", "fake",
            "--prompt", "fake:" + json.dumps({"tokens": 2}),
        )  # fmt: skip
        assert status == 0 and report["sessions_failed_by_cause"] == {}


async def test_thresholds_gate_the_exit_status(server):
    prompt = "fake:" + json.dumps({"tokens": 5, "first_delay": 0.2})
    args = ("--model", "fake", "--sessions", "2", "--prompt", prompt)
    status, report = await loadtest(server.url, *args, "--max-ttft-p99-ms", "50")
    assert status == 3
    (error_rate, ttft) = report["thresholds"]
    assert error_rate["passed"] and not ttft["passed"] and ttft["value"] >= 200
    status, report = await loadtest(
        server.url, *args, "--max-ttft-p99-ms", "5000", "--max-gap-p99-ms", "5000"
    )
    assert status == 0 and all(check["passed"] for check in report["thresholds"])
    failing = "fake:" + json.dumps({"status": 500})
    status, _ = await loadtest(
        server.url, "--model", "fake", "--sessions", "4", "--prompt", failing,
        "--max-error-rate", "1",
    )  # fmt: skip
    assert status == 0  # allowed to fail


async def test_json_has_a_per_second_series_of_tokens_as_they_arrive(server):
    prompt = "fake:" + json.dumps({"tokens": 120, "interval": 0.02})
    status, report = await loadtest(
        server.url, "--model", "fake", "--sessions", "2", "--prompt", prompt
    )
    assert status == 0
    series = report["series"]
    assert [row["t"] for row in series] == list(range(len(series)))
    assert len(series) >= 3  # 2.4 s of tokens
    assert sum(row["tokens"] for row in series) == report["tokens"] == 240
    assert sum(row["completed"] for row in series) == 2
    assert all(row["tokens"] > 0 for row in series[:-1])  # counted while they streamed


async def test_progress_counts_tokens_while_generations_stream(server):
    """On a terminal, the live tokens/s is not 0 before any generation ends."""
    import pexpect

    prompt = "fake:" + json.dumps({"tokens": 150, "interval": 0.02})
    child = pexpect.spawn(
        TOKENWIRE,
        ["loadtest", "--url", server.url, "--model", "fake", "--sessions", "2", "--prompt", prompt],
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    progress = r"generations\s+0\s+tokens/s\s+(\d+)"
    rates = []
    while not rates or rates[-1] == 0:
        await child.expect(progress, async_=True)
        rates.append(int(child.match.group(1)))
    assert rates[-1] > 0  # no generation has ended yet, and tokens are counted
    await child.expect(r"generations\s+2 completed", async_=True)
    await child.expect(pexpect.EOF, async_=True)
    child.close()
    assert child.exitstatus == 0


async def test_a_generation_not_resumed_is_a_failure_with_its_reason(start_server):
    # Frames kept for a resume are bounded to one: a drop loses more, so
    # the resume fails with gap, and the run fails with it.
    async with start_server(resume="memory", resume_generation_bytes=50) as handle:
        prompt = "fake:" + json.dumps({"tokens": 400, "interval": 0.002})
        status, report = await loadtest(
            handle.url, "--model", "fake", "--sessions", "8", "--prompt", prompt,
            "--disconnect-rate", "4",
        )  # fmt: skip
    gaps = report["resume_failures"].get("gap", 0)
    assert gaps > 0, report
    assert report["generations_failed"]["resume_failed:gap"] == gaps
    assert "connection_lost" not in report["generations_failed"]
    assert report["error_rate"] > 0 and status == 3
