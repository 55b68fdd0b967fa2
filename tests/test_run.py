"""End-to-end: Hydra composition, bad overrides, results files, inline vs Ray, multirun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from simulations import CONF_DIR
from simulations.app.config import ConfigError
from simulations.runtimes.simulation import run_from_config

REPO = Path(__file__).resolve().parent.parent
SMALL = ["num_clients=3", "num_rounds=2", "local_epochs=1", "seed=7"]


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=[*SMALL, *overrides])


def test_inline_run_writes_results(tmp_path):
    summary = run_from_config(config(), tmp_path, quiet=True)
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for key in (
        "central_accuracy",
        "central_loss",
        "client_accuracy",
        "client_loss",
        "bytes_up",
        "bytes_down",
        "cum_bytes_up",
        "cum_bytes_down",
        "wall_seconds",
    ):
        assert key in rounds[2], key
    # 3 clients x the 85,002-parameter MLP in float32, each way
    assert 3 * 85_002 * 4 < rounds[1]["bytes_down"] < 3 * 85_002 * 4 * 1.02
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary
    assert summary["model_params"] == 85_002 and summary["method"] == "fedavg"
    assert summary["total_bytes"] == rounds[2]["cum_bytes_up"] + rounds[2]["cum_bytes_down"]
    assert summary["final_central_accuracy"] > rounds[0]["central_accuracy"]
    assert (tmp_path / "final_model.npz").exists() and (tmp_path / "accuracy_vs_mb.png").exists()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["+method.sparsity=1.5"], "method.sparsity=1.5"),
        (["backend=ray", "backend.num_gpus=0.5"], "backend.num_gpus"),
        (["dataset=mnist", "dataset.root=/nonexistent/fedlean"], "dataset.root"),
        (["fraction_train=1.5"], "fraction_train"),
        (["partition=pathological", "partition.classes_per_partition=11"], "classes_per_partition"),
        (["optimizer.name=lbfgs"], "optimizer.name"),
        (["partition=natural"], "partition.name"),
    ],
)
def test_bad_config_fails_before_training_naming_the_key(tmp_path, overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        run_from_config(config(*overrides), tmp_path, quiet=True)
    assert not (tmp_path / "rounds.jsonl").exists()


def test_unknown_method_is_rejected_by_the_cli_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", "method=nosuchmethod", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "method" in proc.stderr and "nosuchmethod" in proc.stderr
    assert not (tmp_path / "rounds.jsonl").exists()


def test_cli_bad_value_exits_2_with_key_in_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", "+method.sparsity=1.5", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "method.sparsity=1.5" in proc.stderr


def test_fedprox_proximal_term_pulls_clients_towards_the_global_model(tmp_path):
    common = ["num_rounds=1", "local_epochs=3", "fraction_evaluate=0", "central_eval=false"]
    run_from_config(config(*common), tmp_path / "avg", quiet=True)
    run_from_config(
        config("method=fedprox", "method.proximal_mu=5.0", *common), tmp_path / "prox", quiet=True
    )
    init = config(*common)
    from simulations.app.compose import compose_run

    start = {k: v.numpy() for k, v in compose_run(init, tmp_path / "x").initial_arrays.items()}
    moved = {}
    for name in ("avg", "prox"):
        final = np.load(tmp_path / name / "final_model.npz")
        moved[name] = sum(float(np.abs(final[k] - start[k]).sum()) for k in start)
    assert moved["prox"] < 0.7 * moved["avg"], moved


def test_client_with_unusable_node_config_is_dropped_and_round_completes(tmp_path, caplog):
    from simulations.app.client_app import app
    from simulations.app.compose import compose_run, execute_plan
    from simulations.runtimes.inline import InlineGrid

    plan = compose_run(config("fraction_evaluate=0"), tmp_path)
    grid = InlineGrid(app, 3)
    grid.contexts[grid.node_ids[0]].node_config.clear()  # this node cannot find its data
    summary = execute_plan(plan, grid, quiet=True)
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert rounds[1]["dropped"] == 1 and rounds[2]["dropped"] == 1
    assert summary["final_central_accuracy"] > rounds[0]["central_accuracy"]
    assert "partition-id" in plan.strategy.dropped[1][0]


@pytest.mark.slow
def test_inline_and_ray_give_the_same_fedavg_model(tmp_path):
    run_from_config(config("fraction_evaluate=0"), tmp_path / "inline", quiet=True)
    run_from_config(config("backend=ray", "fraction_evaluate=0"), tmp_path / "ray", quiet=True)
    inline = np.load(tmp_path / "inline" / "final_model.npz")
    ray = np.load(tmp_path / "ray" / "final_model.npz")
    assert set(inline.files) == set(ray.files)
    for key in inline.files:
        np.testing.assert_allclose(inline[key], ray[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_multirun_over_two_methods_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.run",
            "--multirun",
            "method=fedavg,fedprox",
            *SMALL,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = sorted(sweep.rglob("summary.json"))
    assert len(summaries) == 2
    assert {json.loads(p.read_text())["method"] for p in summaries} == {"fedavg", "fedprox"}
    report = subprocess.run(
        [sys.executable, "-m", "simulations.tools.report", str(sweep)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert "| fedavg |" in report.stdout and "| fedprox |" in report.stdout
    assert (sweep / "report.md").exists() and (sweep / "accuracy_vs_mb.png").exists()


def test_results_are_atomic_and_a_finished_directory_is_not_overwritten(tmp_path):
    summary = run_from_config(config("num_rounds=1"), tmp_path, quiet=True)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "finished"
    assert not list(tmp_path.glob(".*.tmp"))
    before = (tmp_path / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match="holds a finished run"):
        run_from_config(config("num_rounds=1"), tmp_path, quiet=True)
    assert (tmp_path / "summary.json").read_bytes() == before and summary["rounds"] == 1


def test_an_interrupted_run_says_so_and_non_finite_numbers_are_null(tmp_path, monkeypatch):
    from fl_strategies.base import FedleanStrategy

    original = FedleanStrategy.round_record

    def nan_then_stop(self, server_round, central):
        if server_round == 2:
            raise KeyboardInterrupt
        return {**original(self, server_round, central), "train_loss": float("nan")}

    monkeypatch.setattr(FedleanStrategy, "round_record", nan_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_from_config(config("num_rounds=3"), tmp_path, quiet=True)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "interrupted" and status["rounds_completed"] == 1
    assert "KeyboardInterrupt" in status["reason"] and not (tmp_path / "summary.json").exists()
    text = (tmp_path / "rounds.jsonl").read_text()
    assert "NaN" not in text
    assert [json.loads(line)["train_loss"] for line in text.splitlines()] == [None, None]
