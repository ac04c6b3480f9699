"""The client installs beside the agents: ``scripts/client-dist`` builds
``tokenwire-client`` (the client and the protocol, needing only msgspec and
websockets 15.0 to 17.x), and it runs against the real server with the
oldest and the newest websockets it claims, each in a venv of its own
(made once per version outside the clone; the client is installed fresh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TIMEOUT, say
from node_parts import CACHE, run

ROOT = Path(__file__).resolve().parents[2]
WEBSOCKETS = ["15.0.1", "17.4"]
"""The oldest and the newest websockets the distribution claims."""


async def _run(*command: str, timeout: float = 300) -> str:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    code, out, err = await run(*command, env=env, timeout=timeout)
    assert code == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("client-dist") / "tokenwire-client"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "client-dist"), str(dest)], check=True)
    return dest


@pytest.mark.parametrize("version", WEBSOCKETS)
async def test_the_client_alone_runs_on_the_websockets_it_claims(dist, server, version):
    venv = CACHE.parent / "venvs" / f"client-websockets-{version}"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        await _run(sys.executable, "-m", "venv", "--clear", str(venv))
        await _run(str(python), "-m", "pip", "install", "-q", f"websockets=={version}",
                   "msgspec>=0.22")  # fmt: skip
        (venv / ".installed").touch()
    await _run(str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
               str(dist))  # fmt: skip
    script = str(Path(__file__).parent / "client_dist_check.py")
    prompt = say(tokens=3)[0]["content"]
    out = await _run(str(python), script, server.url, prompt, timeout=3 * TIMEOUT)
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {
        "websockets": version,
        "text": "tok0 tok1 tok2 ",
        "cancelled": "cancelled",
        "sync": "tok0 tok1 tok2 ",
    }
