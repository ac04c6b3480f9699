"""A benchmark run twice in one invocation: an older commit's server as the
baseline, then this checkout's, with the figures side by side.

    .venv/bin/python bench/against.py COMMIT run.py --quick --skip-proxy
    .venv/bin/python bench/against.py COMMIT resume.py --runs 1

The baseline's source is ``git archive``d to a scratch folder and served by
this virtualenv's Python (so the dependencies are the same: only tokenwire's
code differs); the load generators are this checkout's in both runs. The
rows that hold CPU figures are printed last, baseline beside current, with
their ratio.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGES = {
    "protocol": "protocol",
    "server": "server",
    "client": "clients/python",
    "web": "clients/js",
}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def launcher(commit: str, scratch: Path) -> Path:
    """A ``tokenwire`` command that runs ``commit``'s code."""
    source = scratch / "src"
    source.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    site = scratch / "site" / "tokenwire"
    site.mkdir(parents=True)
    for name, folder in PACKAGES.items():
        (site / name).symlink_to(source / folder)
    command = scratch / "tokenwire"
    command.write_text(
        f"#!/bin/sh\nPYTHONPATH={scratch / 'site'} exec {sys.executable} -c "
        "'import sys; from tokenwire.server.cli import main; sys.exit(main())' \"$@\"\n"
    )
    command.chmod(0o755)
    return command


def run(script: str, arguments: list[str], serve: str | None) -> str:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if serve is not None:
        env["TOKENWIRE_SERVE"] = serve
    else:
        env.pop("TOKENWIRE_SERVE", None)
    done = subprocess.run(
        [sys.executable, str(HERE / script), *arguments],
        env=env, cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"{script} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def cpu_rows(text: str) -> dict[str, list[str]]:
    """The table rows that name CPU, by their scenario and measure (a row
    with an empty first cell belongs to the scenario above it)."""
    rows = {}
    scenario = ""
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        scenario = cells[0] or scenario
        for i, cell in enumerate(cells):
            if "CPU" in cell:
                rows[f"{scenario}: {cell}" if i else cell] = cells[i + 1 :]
                break
    return rows


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    commit, script, arguments = sys.argv[1], sys.argv[2], sys.argv[3:]
    with tempfile.TemporaryDirectory(prefix="tokenwire-baseline-") as scratch:
        command = launcher(commit, Path(scratch))
        print(f"== baseline: {commit} ==", flush=True)
        baseline = run(script, arguments, str(command))
        print(baseline, flush=True)
    print("== current checkout ==", flush=True)
    current = run(script, arguments, None)
    print(current)
    print(f"== CPU rows: baseline {commit} → current (ratio) ==")
    old, new = cpu_rows(baseline), cpu_rows(current)
    for name, cells in new.items():
        before = old.get(name, [])
        pairs = []
        for i, cell in enumerate(cells):
            was = before[i] if i < len(before) else "—"
            a, b = NUMBER.search(was), NUMBER.search(cell)
            ratio = (
                f" ({float(b.group()) / float(a.group()):.2f}×)"
                if a and b and float(a.group())
                else ""
            )
            pairs.append(f"{was} → {cell}{ratio}")
        print(f"{name}: " + " | ".join(pairs))


if __name__ == "__main__":
    main()
