"""atheris on the decoders for a fixed time: 10 s in quick mode, 5 minutes
with ``--full``. A crash (any exception but ``BadMessage``) fails the test
with atheris's report and the input that caused it."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from parts import report

SCRIPT = Path(__file__).with_name("fuzz_codec.py")


@pytest.mark.timeout(600)
async def test_the_decoders_survive_coverage_guided_fuzzing(tmp_path, full):
    pytest.importorskip("atheris", reason="atheris has wheels for Linux x86_64 only")
    seconds = 300 if full else 10
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), f"-max_total_time={seconds}", "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", text)
    executed = int(runs.group(1)) if runs else 0
    report(
        f"atheris on both decoders, {seconds} s",
        "no crash",
        f"{executed:,} inputs, rc {process.returncode}",
    )
    assert process.returncode == 0, text[-3000:]
    assert executed > 1000
