"""`pip install .` gives one package, `tokenwire`, and the `tokenwire` command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_only_the_tokenwire_package(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tokenwire-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"tokenwire"}
    for package in ("protocol", "server", "client"):
        assert f"tokenwire/{package}/__init__.py" in names
        assert f"tokenwire/{package}/py.typed" in names
    assert "tokenwire/server/engines/litellm_keys.json" in names  # data the config check reads
    for asset in ("tokenwire.js", "tokenwire.d.ts", "page/index.html", "page/app.js"):
        assert f"tokenwire/web/{asset}" in names
    assert not any(name.startswith("tokenwire/__init__.py") for name in names)  # a namespace
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "tokenwire = tokenwire.server.cli:main" in text
