"""A benchmark run twice in one invocation: an older commit's server as the
baseline, then this checkout's, with the figures side by side.

    .venv/bin/python bench/against.py [--rounds N] COMMIT run.py --quick --skip-proxy
    .venv/bin/python bench/against.py [--rounds N] COMMIT resume.py --runs 1
    .venv/bin/python bench/against.py COMMIT scale.py --sessions 2000

The baseline's source is ``git archive``d to a scratch folder and served by
this virtualenv's Python (so the dependencies are the same: only tokenwire's
code differs); the load generators are this checkout's in both runs. With
``--rounds N`` the two alternate N times. The rows that hold CPU figures are
printed last, the best of the rounds, baseline beside current, with their
ratio; then a ``| figure | measured | bound |`` table's rows (``scale.py``),
baseline beside current, from the last round.
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
        if line.startswith("|"):  # a Markdown table (run.py)
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
        elif "CPU" in line:  # columns two spaces apart (resume.py)
            cells = ["", *re.split(r"\s{2,}", line.strip())]
        else:
            continue
        scenario = cells[0] or scenario
        for i, cell in enumerate(cells):
            if "CPU" in cell:
                rows[f"{scenario}: {cell}" if i else cell] = cells[i + 1 :]
                break
    return rows


def figure_rows(text: str) -> dict[str, str]:
    """The rows of a ``| figure | measured | bound |`` table (scale.py): figure → measured."""
    rows: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == ["figure", "measured"]:
            inside = True
        elif inside and line.startswith("|") and len(cells) >= 2 and not cells[0].startswith("-"):
            rows[cells[0]] = cells[1]
        elif not line.startswith("|"):
            inside = False
    return rows


def best(outputs: list[str]) -> dict[str, list[str]]:
    """Each CPU cell's lowest figure over the rounds (the least disturbed run)."""
    out: dict[str, list[str]] = {}
    for text in outputs:
        for name, cells in cpu_rows(text).items():
            kept = out.setdefault(name, list(cells))
            for i, cell in enumerate(cells):
                a = NUMBER.search(kept[i]) if i < len(kept) else None
                b = NUMBER.search(cell)
                if b and (a is None or float(b.group()) < float(a.group())):
                    kept[i] = cell
    return out


def main() -> None:
    arguments = sys.argv[1:]
    rounds = 1
    if arguments[:1] == ["--rounds"]:
        rounds, arguments = int(arguments[1]), arguments[2:]
    if len(arguments) < 2:
        sys.exit(__doc__)
    commit, script, arguments = arguments[0], arguments[1], arguments[2:]
    baseline: list[str] = []
    current: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tokenwire-baseline-") as scratch:
        command = launcher(commit, Path(scratch))
        for n in range(rounds):  # alternated, so that drift hits both alike
            print(f"== round {n + 1}: baseline {commit} ==", flush=True)
            baseline.append(run(script, arguments, str(command)))
            print(baseline[-1], flush=True)
            print(f"== round {n + 1}: current checkout ==", flush=True)
            current.append(run(script, arguments, None))
            print(current[-1], flush=True)
    print(f"== CPU rows, best of {rounds}: baseline {commit} → current (ratio) ==")
    old, new = best(baseline), best(current)
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
    old_figures, new_figures = figure_rows(baseline[-1]), figure_rows(current[-1])
    if new_figures:
        print(f"== figures, last round: baseline {commit} → current ==")
        for name, value in new_figures.items():
            print(f"{name}: {old_figures.get(name, '—')} → {value}")


if __name__ == "__main__":
    main()
