"""A non-editable install carries everything a run needs: code, the registry and the Hydra configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_configs_and_the_registry(tmp_path):
    # A copy: setuptools writes build/ next to the sources it builds.
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "outputs", "multirun", "build", "*.egg-info", "__pycache__", ".ruff_cache", ".mypy_cache"
        ),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("fedlean-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"simulations/conf/{p.relative_to(REPO / 'simulations/conf')}"
        for p in (REPO / "simulations/conf").rglob("*.yaml")
    }
    expected |= {f"methods/{p.name}" for p in (REPO / "methods").glob("*.py")}
    assert expected <= names, sorted(expected - names)
