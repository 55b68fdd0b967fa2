"""A non-editable install carries everything a run needs: code, the registry and the Hydra configs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_configs_and_the_registry(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("fedlean-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"simulations/conf/{p.relative_to(REPO / 'simulations/conf')}"
                for p in (REPO / "simulations/conf").rglob("*.yaml")}
    expected |= {f"methods/{p.name}" for p in (REPO / "methods").glob("*.py")}
    assert expected <= names, sorted(expected - names)
