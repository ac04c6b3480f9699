"""`tokenwire chat` driven through a pseudo-terminal, as a person would use it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pexpect
from conftest import TIMEOUT

TOKENWIRE = str(Path(sys.executable).with_name("tokenwire"))


def scripted(**scenario: object) -> str:
    return "fake:" + json.dumps(scenario)


async def test_chat_streams_stops_on_ctrl_c_and_keeps_the_conversation(server, fake):
    def drive() -> pexpect.spawn:
        env = {**os.environ, "NO_COLOR": "1"}
        # Startup imports the client only (no LiteLLM): a few seconds at most.
        child = pexpect.spawn(
            TOKENWIRE,
            ["chat", "--url", server.url, "--model", "fake"],
            env=env,
            encoding="utf-8",
            timeout=3 * TIMEOUT,
        )
        child.expect(r"models: fake, demo")
        child.expect_exact("fake> ")
        child.sendline(scripted(tokens=3))
        child.expect_exact("tok0 tok1 tok2 ")
        child.expect_exact("[stop · 3 tokens]")
        child.expect_exact("fake> ")

        child.sendline(scripted(tokens=1000, interval=0.02))
        child.expect_exact("tok5 ")
        child.sendintr()  # Ctrl-C: stop this answer, keep the program
        child.expect_exact("[stopped]")
        child.expect_exact("fake> ")

        child.sendline("/model demo")
        child.expect_exact("(model: demo)")
        child.expect_exact("demo> ")
        child.sendline("/model nope")
        child.expect_exact("unknown model 'nope'")
        child.sendline("/reset")
        child.expect_exact("(conversation cleared)")
        child.sendintr()  # Ctrl-C at the prompt: quit
        child.expect(pexpect.EOF)
        child.close()
        return child

    requests_before = len(fake.requests)
    child = await asyncio.to_thread(drive)
    assert child.exitstatus == 0
    # The conversation lived on the server: the second question went upstream
    # after the first question and its answer (the stopped one added nothing).
    first, second = fake.requests[requests_before : requests_before + 2]
    assert len(first.body["messages"]) == 1
    assert [m["role"] for m in second.body["messages"]] == ["user", "assistant", "user"]
    assert second.body["messages"][1]["content"] == "tok0 tok1 tok2 "
    assert second.disconnected  # Ctrl-C closed the upstream request


async def test_chat_shows_tool_calls_and_errors(server):
    def drive() -> str:
        child = pexpect.spawn(
            TOKENWIRE,
            ["chat", "--url", server.url, "--model", "fake"],
            env={**os.environ, "NO_COLOR": "1"},
            encoding="utf-8",
            timeout=3 * TIMEOUT,
        )
        child.expect_exact("fake> ")
        child.sendline(scripted(tokens=0, tool_calls=[{"name": "lookup", "arguments": '{"q": 1}'}]))
        child.expect_exact('→ lookup({"q": 1})')
        child.expect_exact("[tool_calls")
        child.expect_exact("fake> ")
        child.sendline(scripted(status=429, retry_after="1"))
        child.expect_exact("error upstream_rate_limited")
        child.expect_exact("(retryable)")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
        child.close()
        return str(child.exitstatus)

    assert await asyncio.to_thread(drive) == "0"


async def test_chat_says_so_when_no_server_listens():
    def drive() -> tuple[int, str]:
        output, status = pexpect.run(
            f"{TOKENWIRE} chat --url ws://127.0.0.1:9/v1/ws",
            withexitstatus=True,
            encoding="utf-8",
            timeout=3 * TIMEOUT,
        )
        return status, output

    status, output = await asyncio.to_thread(drive)
    assert status == 1 and "cannot connect" in output
