"""Node.js checks: ``tests/node`` holds their scripts and a package.json whose
packages (the official ``openai``, ``ws``) npm installs there, as users would."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from conftest import TIMEOUT, needs

FOLDER = Path(__file__).parent / "node"
NPM_TIMEOUT = 180.0
"""Seconds ``npm install`` may take (a fresh clone downloads the packages)."""


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


async def node(script: str, *args: str) -> Any:
    """Run ``tests/node/<script>`` with ``args`` (after ``npm install``); the
    JSON object it printed last."""
    needs("nodejs", shutil.which("node") is not None and shutil.which("npm") is not None)
    await _run("npm", "install", "--no-audit", "--no-fund", "--loglevel=error", timeout=NPM_TIMEOUT)
    out = await _run("node", script, *args, timeout=3 * TIMEOUT)
    return json.loads(out.strip().splitlines()[-1])
