"""The coding agents themselves, unchanged, against tokenwire and the fake
(OpenAI-compatible) upstream: Claude Code through ``/v1/messages``
(``ANTHROPIC_BASE_URL``), Codex CLI through ``/v1/responses`` (a model
provider whose base URL is tokenwire's ``/v1``). npm installs each, pinned
(``tests/agents/package.json``), once per version outside the clone."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT
from node_parts import CACHE, installed, run

FOLDER = Path(__file__).parent
BIN = FOLDER / "node_modules" / ".bin"
AGENT_TIMEOUT = 6 * TIMEOUT


def scripted(**scenario: Any) -> str:
    return "fake:" + json.dumps(scenario)


async def run_agent(
    command: list[str], env: dict[str, str], cwd: Path, timeout: float = AGENT_TIMEOUT
) -> tuple[int, str, str]:
    return await run(*command, cwd=cwd, env=env, timeout=timeout)


def agent_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean environment: its own HOME, no proxy, nothing of the user's."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    return {**keep, "HOME": str(home), "NO_COLOR": "1", **extra}


@pytest.fixture(scope="module")
async def agents_sdk() -> Path:
    """A venv with the OpenAI Agents SDK (``agents-sdk.txt``), made once per
    version of that file, outside the clone; its python."""
    pins = FOLDER / "agents-sdk.txt"
    venv = (
        CACHE.parent / "venvs" / f"agents-sdk-{hashlib.sha256(pins.read_bytes()).hexdigest()[:16]}"
    )
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        env = {**os.environ}
        for command in (
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "-r", str(pins)],
        ):  # fmt: skip
            code, _, err = await run_agent(command, env, FOLDER, timeout=300)
            assert code == 0, err[-2000:]
        (venv / ".installed").touch()
    return python


@pytest.fixture(scope="module")
async def agents() -> Path:
    await installed(FOLDER)
    return BIN


async def test_claude_code_answers_and_runs_a_tool_on_another_provider(agents, server, fake,
                                                                       tmp_path):  # fmt: skip
    env = agent_env(
        tmp_path,
        ANTHROPIC_BASE_URL=server.http,
        ANTHROPIC_API_KEY="sk-tokenwire",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        ANTHROPIC_MODEL="fake",
        ANTHROPIC_SMALL_FAST_MODEL="fake",
        ANTHROPIC_DEFAULT_HAIKU_MODEL="fake",
    )
    claude = [str(agents / "claude"), "--model", "fake", "--output-format", "json", "-p"]
    mark = fake.mark()
    hello = scripted(text=["Hello ", "from fake."])
    code, out, err = await run_agent([*claude, hello], env, tmp_path)
    assert code == 0, (out[-2000:], err[-2000:])
    result = json.loads(out.strip().splitlines()[-1])
    assert result["result"] == "Hello from fake." and not result["is_error"], result
    # A turn in which the model calls a tool Claude Code runs (Read), then answers.
    note = tmp_path / "note.txt"
    note.write_text("the secret is 42\n")
    read = {"name": "Read", "arguments": json.dumps({"file_path": str(note)})}
    prompt = scripted(tokens=0, tool_calls=[read], after_tool=["It says 42."])
    code, out, err = await run_agent([*claude, prompt, "--allowedTools", "Read"], env, tmp_path)
    assert code == 0, (out[-2000:], err[-2000:])
    result = json.loads(out.strip().splitlines()[-1])
    assert result["result"] == "It says 42.", result
    mine = fake.requests[mark:]
    tool_results = [m for r in mine for m in r.body["messages"] if m.get("role") == "tool"]
    assert any("the secret is 42" in json.dumps(m["content"]) for m in tool_results)
    assert mine and all(r.body["model"] == "fake-model" for r in mine)


async def test_codex_exec_completes_through_the_responses_api(agents, server, fake, tmp_path):
    env = agent_env(tmp_path, TOKENWIRE_KEY="sk-tokenwire")
    config = Path(env["HOME"]) / ".codex" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        'model = "fake"\nmodel_provider = "tokenwire"\n'
        "[model_providers.tokenwire]\n"
        f'name = "tokenwire"\nbase_url = "{server.http}/v1"\n'
        'env_key = "TOKENWIRE_KEY"\nwire_api = "responses"\n'
    )
    codex = [str(agents / "codex"), "exec", "--skip-git-repo-check", "--sandbox", "read-only"]
    mark = fake.mark()
    code, out, err = await run_agent([*codex, scripted(text=["Codex ", "works."])], env, tmp_path)
    assert code == 0, (out[-2000:], err[-3000:])
    assert "Codex works." in out, (out[-2000:], err[-2000:])
    assert [r.body["model"] for r in fake.requests[mark:]][-1:] == ["fake-model"]


async def test_the_agents_sdk_runs_a_tool_loop_to_its_final_answer(agents_sdk, server, fake,
                                                                   tmp_path):  # fmt: skip
    call = {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}
    prompt = scripted(tokens=0, tool_calls=[call], after_tool=["It is sunny ", "in Paris."])
    mark = fake.mark()
    script = str(FOLDER / "agents_sdk_check.py")
    code, out, err = await run_agent(
        [str(agents_sdk), script, f"{server.http}/v1", prompt], agent_env(tmp_path), tmp_path
    )
    assert code == 0, (out[-2000:], err[-3000:])
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"final": "It is sunny in Paris.", "calls": ["Paris"]}, result
    turns = fake.requests[mark:]
    assert len(turns) == 2 and turns[1].body["messages"][-1]["role"] == "tool"
