"""``flwr run .`` on Flower's local simulation federation, as a new user types it.

Flower's CLI starts a managed local SuperLink in simulation mode (2 simulated
SuperNodes by default). The run must follow that size without an override, and
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` keeps Flower from ``uv sync``-ing
the app's dependencies into a fresh environment (about 6 GB with torch).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_local_superlink(superlink: subprocess.Popen | None, http_port: int) -> None:
    """End the SuperLink's process group and anything else still serving its port."""
    if superlink is not None:
        try:
            os.killpg(superlink.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        superlink.wait(timeout=30)
    found = subprocess.run(["pgrep", "-f", "--", f"127.0.0.1:{http_port}"], capture_output=True, text=True)
    for pid in found.stdout.split():
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


def _start_local_superlink(
    env: dict[str, str], http_port: int, control_port: int, home: Path
) -> subprocess.Popen:
    """Start the SuperLink exactly as ``flwr run`` would, with a longer start-up wait.

    Flower's CLI gives the managed SuperLink 15 s to come up, which a loaded 2-core CI
    machine can miss; a SuperLink already listening on the local port is the one
    ``flwr run .`` uses.
    """
    (home / "local-superlink").mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("flower-superlink")),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{control_port}",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--database",
        str(home / "local-superlink" / "state.db"),
    ]
    superlink = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(home / "local-superlink" / "superlink.log", "w"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2) as response:
                if response.status == 200:
                    return superlink
        except OSError:
            time.sleep(1)
    raise AssertionError("the local SuperLink did not come up within 180 s")


@pytest.mark.slow
def test_flwr_run_dot_on_the_local_simulation_federation(tmp_path):
    http_port, control_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    out = tmp_path / "results"
    run_config = f"overrides='num_rounds=2 local_epochs=1' output-dir='{out}'"
    superlink = None
    try:
        superlink = _start_local_superlink(env, http_port, control_port, tmp_path / "flwr-home")
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("flwr")), "run", ".", "--run-config", run_config, "--stream"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        _stop_local_superlink(superlink, http_port)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # num_clients followed the federation's 2 simulated SuperNodes (the config default is 10).
    assert summary["num_clients"] == 2 and summary["rounds"] == 2, log[-3000:]
    assert "num_clients=2 (the SuperNodes connected)" in log
    assert "Installing application dependencies" not in log
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[-1]["central_accuracy"] > 0.5
