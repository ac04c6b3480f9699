"""Node.js checks: ``tests/node`` holds their scripts and a package.json whose
packages (the official ``openai``, the AI SDK's ``ai``, ``ws``) npm installs
as users would; ``tests/web/react`` holds the React page of the browser test.

npm installs each folder's packages once per version of its package.json,
outside the clone (``~/.cache/tokenwire/npm/<folder>-<hash>``, or
``$TOKENWIRE_NPM_CACHE``), and the folder's ``node_modules`` links there:
a second run, or a fresh clone on the same machine, installs nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from conftest import TIMEOUT, needs

FOLDER = Path(__file__).parent / "node"
CACHE = Path(os.environ.get("TOKENWIRE_NPM_CACHE", Path.home() / ".cache/tokenwire/npm"))
NPM_TIMEOUT = 300.0
"""Seconds ``npm install`` may take (the first run downloads the packages)."""


async def run(
    *command: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float
) -> tuple[int, str, str]:
    """``command`` (no standard input), killed past ``timeout`` seconds: its
    exit status, standard output and standard error."""
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def _run(*command: str, cwd: Path, timeout: float) -> str:
    code, out, err = await run(*command, cwd=cwd, timeout=timeout)
    assert code == 0, err[-2000:]
    return out


async def installed(folder: Path) -> None:
    """``folder``'s npm packages, installed (once per package.json) and linked."""
    needs("nodejs", shutil.which("node") is not None and shutil.which("npm") is not None)
    manifest = (folder / "package.json").read_bytes()
    home = CACHE / f"{folder.name}-{hashlib.sha256(manifest).hexdigest()[:16]}"
    if not (home / ".installed").exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "package.json").write_bytes(manifest)
        npm = ("npm", "install", "--no-audit", "--no-fund", "--loglevel=error")
        await _run(*npm, cwd=home, timeout=NPM_TIMEOUT)
        (home / ".installed").touch()
    link = folder / "node_modules"
    target = home / "node_modules"
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.is_symlink():
        link.unlink()
    elif link.exists():  # an earlier `npm install` in the folder itself
        shutil.rmtree(link)
    link.symlink_to(target, target_is_directory=True)


async def node(script: str, *args: str, folder: Path = FOLDER) -> Any:
    """Run ``<folder>/<script>`` with ``args`` (its packages installed); the
    JSON object it printed last."""
    await installed(folder)
    out = await _run("node", script, *args, cwd=folder, timeout=3 * TIMEOUT)
    return json.loads(out.strip().splitlines()[-1])
