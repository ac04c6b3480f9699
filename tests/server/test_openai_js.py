"""The official ``openai`` JavaScript package under Node, installed with npm in
its own folder (``tests/openai_js``) as its users install it: a streamed chat
completion, a 429 as its ``RateLimitError``, and one Responses WebSocket call."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from conftest import TIMEOUT, needs

FOLDER = Path(__file__).parent.parent / "openai_js"


async def _run(*command: str, timeout: float) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=FOLDER,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


async def test_the_openai_js_package_streams_chat_and_responses(server):
    needs("nodejs", shutil.which("node") is not None and shutil.which("npm") is not None)
    await _run("npm", "install", "--no-audit", "--no-fund", "--loglevel=error", timeout=180)
    scenario = json.dumps({"tokens": 3, "reasoning": 1})
    out = await _run("node", "check.mjs", f"{server.http}/v1", scenario, timeout=3 * TIMEOUT)
    result = json.loads(out.strip().splitlines()[-1])
    chat = result["chat"]
    assert chat["text"] == "tok0 tok1 tok2 "
    assert chat["finish"] == "stop" and chat["usage"]["total_tokens"] > 0
    assert result["rateLimited"] == {"name": "RateLimitError", "status": 429}
    responses = result["responses"]
    assert responses["status"] == "completed"
    assert responses["events"][0] == "response.created"
    assert "response.reasoning_text.delta" in responses["events"]
    assert responses["events"][-1] == "response.completed"
    assert responses["output"][-1]["content"][0]["text"] == "tok0 tok1 tok2 "
