"""`tokenwire chat` driven through a pseudo-terminal, as a person would use it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import pexpect
from conftest import TIMEOUT

TOKENWIRE = str(Path(sys.executable).with_name("tokenwire"))
# pexpect's terminal does not answer cursor position requests: prompt_toolkit
# is told so, instead of waiting for the answer and then warning.
ENV = {**os.environ, "NO_COLOR": "1", "PROMPT_TOOLKIT_NO_CPR": "1"}


def scripted(**scenario: object) -> str:
    return "fake:" + json.dumps(scenario)


async def test_chat_streams_stops_on_ctrl_c_and_keeps_the_conversation(server, fake):
    def drive() -> pexpect.spawn:
        # Startup imports the client only (no LiteLLM): a few seconds at most.
        child = pexpect.spawn(
            TOKENWIRE,
            ["chat", "--url", server.url, "--model", "fake"],
            env=ENV,
            encoding="utf-8",
            timeout=3 * TIMEOUT,
        )
        child.expect(r"models: fake, demo")
        child.expect_exact("fake>")
        child.sendline(scripted(tokens=3))
        child.expect_exact("tok0 tok1 tok2 ")
        child.expect_exact("[stop · 3 tokens]")
        child.expect_exact("fake>")

        child.sendline(scripted(tokens=1000, interval=0.02))
        child.expect_exact("tok5 ")
        child.sendintr()  # Ctrl-C: stop this answer, keep the program
        child.expect_exact("[stopped]")
        child.expect_exact("fake>")

        child.sendline("/model demo")
        child.expect_exact("(model: demo)")
        child.expect_exact("demo>")
        child.sendline("/model nope")
        child.expect_exact("unknown model 'nope'")
        child.sendline("/model")
        child.expect_exact("model: demo; /model NAME switches")
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
            env=ENV,
            encoding="utf-8",
            timeout=3 * TIMEOUT,
        )
        child.expect_exact("fake>")
        child.sendline(scripted(tokens=0, tool_calls=[{"name": "lookup", "arguments": '{"q": 1}'}]))
        child.expect_exact('→ lookup({"q": 1})')
        child.expect_exact("[tool_calls")
        child.expect_exact("fake>")
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


def _chat(url: str, *args: str, env: dict[str, str] | None = None) -> pexpect.spawn:
    return pexpect.spawn(
        TOKENWIRE,
        ["chat", "--url", url, *args],
        env=env or ENV,
        encoding="utf-8",
        timeout=3 * TIMEOUT,
        dimensions=(40, 60),
    )


async def test_chat_keeps_history_across_runs_and_takes_pasted_lines(server, tmp_path):
    env = {**ENV, "XDG_STATE_HOME": str(tmp_path)}

    def first() -> None:
        child = _chat(server.url, "--model", "demo", env=env)
        child.expect_exact("demo>")
        child.sendline("/models")
        child.expect_exact("fake, demo")
        child.expect_exact("demo>")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)

    def second() -> str:
        child = _chat(server.url, "--model", "demo", env=env)
        child.expect_exact("demo>")
        time.sleep(1.5)  # prompt_toolkit loads the history file in the background
        child.send("\x1b[A")  # Up: the last run's line comes back
        child.expect_exact("/models")
        child.send("\r")
        child.expect_exact("fake, demo")
        child.expect_exact("demo>")
        # A pasted block keeps its newlines: one message, not two.
        child.send("\x1b[200~line one\nline two\x1b[201~")
        child.send("\r")
        child.expect_exact("(4 words)")
        child.expect_exact("demo>")
        child.sendline("/unknown")
        child.expect_exact("unknown command /unknown; /help lists them")
        child.expect_exact("demo>")
        child.sendcontrol("d")  # Ctrl-D at the prompt: quit
        child.expect(pexpect.EOF)
        child.close()
        return str(child.exitstatus)

    await asyncio.to_thread(first)
    assert "/models" in (tmp_path / "tokenwire" / "chat_history").read_text()
    assert await asyncio.to_thread(second) == "0"


async def test_chat_wraps_words_and_renders_markdown(server):
    words = [f"word{i:02d} " for i in range(30)]

    def drive() -> tuple[str, str]:
        child = _chat(server.url, "--model", "fake")
        child.expect_exact("fake>")
        child.sendline(scripted(text=words))
        child.expect_exact("[stop")
        plain = child.before
        child.expect_exact("fake>")
        markdown = ["# Title\n\n", "- one\n", "- two\n\n", "Some **bold** text.\n"]
        child.sendline(scripted(text=markdown))
        child.expect_exact("[stop")
        rendered = child.before
        child.sendline("/quit")
        child.expect(pexpect.EOF)
        return plain, rendered

    plain, rendered = await asyncio.to_thread(drive)
    # 60 columns: no word is cut at a line's end.
    answer = plain.rsplit("\x1b[?2004l", 1)[-1]  # after the prompt gave the line back
    lines = [line for line in answer.replace("\r", "").split("\n") if "word" in line]
    assert len(lines) >= 4
    assert all(re.fullmatch(r"(word\d\d ?)+", line.strip() + " ") for line in lines), lines
    # The raw answer is drawn over by its rendering: bullets, no "# " or "**".
    after = rendered.rsplit("\x1b[J", 1)[-1]
    assert "•" in after and "Title" in after
    assert "# Title" not in after and "**" not in after


async def test_chat_says_what_to_do_about_a_missing_key(start_server):
    async with start_server(api_keys=["sk-chat"]) as handle:
        output, status = await asyncio.to_thread(
            pexpect.run,
            f"{TOKENWIRE} chat --url {handle.url}",
            withexitstatus=True,
            encoding="utf-8",
            timeout=3 * TIMEOUT,
            env=ENV,
        )
    assert status == 1
    assert "needs an API key: pass --api-key KEY, or set TOKENWIRE_API_KEY" in output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1
