"""Kill -9 and resume: the resumed run ends exactly as the uninterrupted one.

Per method (inline FedAvg, GWPF, FedSparsify-Global, FedGKT): an uninterrupted run in
this process; the same run as a subprocess that gets SIGKILL after round ``k``; then
``resume_run`` on its directory. ``rounds.jsonl`` must match field by field (bytes,
accuracies, reply counts, method statistics; only wall-clock timings, ``*seconds``,
differ) and ``final_model.npz`` bit for bit: the computation is deterministic on CPU
(seeded per round and client, one torch thread) and the checkpoint holds every
generator's state and every node's state.

FedAvg's subprocess is killed from outside while it runs (after ``rounds.jsonl``
shows round 2, wherever the run then is); the others kill themselves right after
the checkpoint of round ``k`` (``FEDLEAN_TEST_SIGKILL_AFTER_ROUND``), which is cheaper
and exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from simulations import CONF_DIR
from simulations.app.checkpoint import KILL_AFTER_ROUND_ENV, load_checkpoint
from simulations.app.config import ConfigError
from simulations.run import resume_run
from simulations.runtimes.simulation import run_from_config

REPO = Path(__file__).resolve().parents[1]
COMMON = ["num_clients=3", "local_epochs=1", "seed=11"]
CASES = {
    # method: (overrides, round after which the run is killed; None = from outside)
    "fedavg": (["num_rounds=4"], None),
    "gwpf": (
        [
            "method=gwpf",
            "num_rounds=4",
            "fraction_evaluate=0",
            # Freeze and thaw within 4 rounds, so partial messages and node state matter.
            "method.alpha=0.5",
            "method.threshold=0.9",
            "method.vote_min_rounds=1",
        ],
        2,
    ),
    "fedsparsify_global": (
        ["method=fedsparsify_global", "num_rounds=4", "fraction_evaluate=0", "method.benchmark_seconds=0"],
        2,
    ),
    "fedgkt": (
        [
            "method=fedgkt",
            "model=resnet8_56",
            "method.server_model=mlp",  # the smallest server that takes edge features
            "method.epochs_server=1",
            "num_rounds=3",
            "central_eval=false",
            "fraction_evaluate=0",
            "optimizer.name=adam",
            "optimizer.lr=0.001",
            "optimizer.momentum=0",
        ],
        1,
    ),
}


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=[*COMMON, *overrides])


def comparable(out: Path) -> list[dict]:
    """rounds.jsonl without wall-clock timings."""
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]


def start_run(out: Path, overrides: list[str], kill_after: int | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop(KILL_AFTER_ROUND_ENV, None)
    if kill_after is not None:
        env[KILL_AFTER_ROUND_ENV] = str(kill_after)
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.run", *COMMON, *overrides, f"hydra.run.dir={out}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when_round_done(proc: subprocess.Popen, out: Path, server_round: int, limit: float = 240) -> None:
    """SIGKILL the run once ``rounds.jsonl`` holds ``server_round``."""
    deadline = time.monotonic() + limit
    rounds = out / "rounds.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if rounds.is_file() and len(rounds.read_text().splitlines()) > server_round:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)


@pytest.mark.parametrize("method", list(CASES))
def test_kill_9_then_resume_gives_the_uninterrupted_run(tmp_path, method):
    overrides, kill_after = CASES[method]
    killed = tmp_path / "killed"
    proc = start_run(killed, overrides, kill_after)
    # Watching from the start: a run that starts fast may finish before this process's own run.
    killer = None
    if kill_after is None:
        killer = threading.Thread(target=kill_when_round_done, args=(proc, killed, 2))
        killer.start()
    # The uninterrupted run, meanwhile, in this process.
    full = tmp_path / "full"
    run_from_config(config(*overrides), full, quiet=True)
    if killer is not None:
        killer.join()
    else:
        proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:] if proc.stderr else ""
    proc.stderr.close()
    status = json.loads((killed / "status.json").read_text())
    assert status["status"] == "running" and not (killed / "summary.json").exists()
    assert status["resume"] == f"python -m simulations.run resume={killed}"
    saved = load_checkpoint(killed)["round"]
    assert saved == kill_after if kill_after is not None else 1 <= saved <= 2

    summary = resume_run(killed, quiet=True)

    assert comparable(killed) == comparable(full)
    with np.load(full / "final_model.npz") as a, np.load(killed / "final_model.npz") as b:
        assert a.files == b.files
        for key in a.files:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    assert json.loads((killed / "status.json").read_text())["status"] == "finished"
    reference = json.loads((full / "summary.json").read_text())
    for key in ("final_accuracy", "total_bytes", "trained_rounds", "rounds"):
        assert summary[key] == reference[key], key


def test_resume_refuses_a_finished_run_and_a_dir_without_a_run(tmp_path):
    out = tmp_path / "done"
    run_from_config(config("num_rounds=1", "fraction_evaluate=0"), out, quiet=True)
    with pytest.raises(ConfigError, match=r"^resume=.*: the run is finished; only a running or interrupted"):
        resume_run(out)
    with pytest.raises(ConfigError, match=r"^resume=.*: no status.json and config.json"):
        resume_run(tmp_path / "nothing")
    # A rerun into a finished directory refuses too.
    with pytest.raises(ConfigError, match="holds a finished run"):
        run_from_config(config("num_rounds=1", "fraction_evaluate=0"), out, quiet=True)


def test_resume_changes_only_how_the_run_waits(tmp_path):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "status.json").write_text(json.dumps({"status": "interrupted"}))
    (out / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"^'num_rounds=9': a resumed run may change only timeout"):
        resume_run(out, ["num_rounds=9"])
    with pytest.raises(ConfigError, match=r"no checkpoint \(was the run started with checkpoint_every=0\?\)"):
        resume_run(out, ["timeout=5"])


def test_resume_without_node_state_resyncs_every_node_in_full(tmp_path):
    """What a Ray resume does (node contexts are gone): GWPF sends full messages again."""
    from simulations.app.client_app import app
    from simulations.app.compose import compose_run, execute_plan
    from simulations.runtimes.inline import InlineGrid

    gwpf = [o for o in CASES["gwpf"][0] if not o.startswith("num_rounds=")]
    full = tmp_path / "full"
    run_from_config(config(*gwpf, "num_rounds=3"), full, quiet=True)
    reference = comparable(full)
    assert reference[3]["full_messages"] == 0  # nodes that took part in round 2 get partial messages

    # A 2-round run's last checkpoint, continued to round 3 without the nodes' state.
    part = tmp_path / "part"
    run_from_config(config(*gwpf, "num_rounds=2"), part, quiet=True)
    checkpoint = {**load_checkpoint(part), "nodes": None}
    (part / "summary.json").unlink()
    overrides = [*gwpf, "num_rounds=3"]
    plan = compose_run(config(*overrides), part)
    summary = execute_plan(plan, InlineGrid(app, 3), quiet=True, resume=checkpoint)
    resumed = comparable(part)
    assert resumed[3]["full_messages"] == 3 and resumed[3]["dropped"] == 0  # every node resynced
    assert summary["trained_rounds"] == 3
    assert resumed[3]["bytes_down"] > reference[3]["bytes_down"]  # full messages cost more


def test_checkpoint_every_zero_writes_none_and_a_new_run_removes_an_old_one(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"an older run's checkpoint")
    run_from_config(config("num_rounds=1", "fraction_evaluate=0", "checkpoint_every=0"), out, quiet=True)
    assert not (out / "checkpoint.pt").exists()
    assert "resume" not in json.loads((out / "status.json").read_text())


def test_resume_keeps_the_runtimes_node_to_partition_map(tmp_path):
    """A Ray resume gets new node ids: sampling must follow this run's map, not the checkpoint's."""
    from simulations.app.client_app import build_client_app
    from simulations.app.compose import compose_run, execute_plan
    from simulations.runtimes.inline import InlineGrid

    sampled = ["num_clients=6", "fraction_train=0.5", "fraction_evaluate=0", "client_state=memory"]
    full = tmp_path / "full"
    run_from_config(config(*sampled, "num_rounds=3"), full, quiet=True)

    part = tmp_path / "part"
    run_from_config(config(*sampled, "num_rounds=2"), part, quiet=True)
    checkpoint = load_checkpoint(part)
    # The checkpoint's nodes as Ray would have named them in the killed run.
    old = checkpoint["strategy"]["node_partitions"]
    checkpoint["strategy"]["node_partitions"] = {node + 10**9: p for node, p in old.items()}
    (part / "summary.json").unlink()
    plan = compose_run(config(*sampled, "num_rounds=3"), part)
    grid = InlineGrid(build_client_app(None), 6)
    mapping = {n: int(c.node_config["partition-id"]) for n, c in grid.contexts.items()}
    plan.strategy.node_partitions.update(mapping)
    execute_plan(plan, grid, quiet=True, resume=checkpoint)
    assert plan.strategy.node_partitions == mapping
    assert comparable(part) == comparable(full)  # the same clients were sampled in round 3
