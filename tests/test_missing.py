"""Missing replies: a client sleeping past ``timeout`` is counted, logged, and ``min_replies`` decides.

The sleeping client is the test plug-in ``tests.sleepy_plugin`` (FedAvg whose chosen
partitions sleep in chosen rounds). Inline runs give each node's call ``timeout``
seconds; on Ray the round waits ``timeout`` for all replies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fl_strategies.base import TooFewRepliesError, required_replies
from simulations import CONF_DIR
from simulations.app.compose import compose_run
from simulations.run import TOO_FEW_REPLIES_EXIT
from simulations.runtimes.simulation import run_from_config

REPO = Path(__file__).resolve().parents[1]
SLEEPER = 0  # partition id of the sleeping client
INLINE_TIMEOUT, INLINE_SLEEP = 3.0, 5.0


def sleepy_config(*overrides: str, sleep_rounds=(1,), sleep_seconds=INLINE_SLEEP, timeout=INLINE_TIMEOUT):
    """A digits FedAvg run of 3 clients whose partition 0 sleeps in ``sleep_rounds``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(
            "config",
            overrides=[
                "num_clients=3",
                "local_epochs=1",
                "fraction_evaluate=0",
                "seed=5",
                f"timeout={timeout}",
                *overrides,
            ],
        )
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    plain["plugins"] = ["tests.sleepy_plugin"]
    plain["method"] = {
        "name": "sleepy_fedavg",
        "sleep_seconds": sleep_seconds,
        "sleep_partitions": [SLEEPER],
        "sleep_rounds": list(sleep_rounds),
    }
    return plain


@pytest.fixture(scope="module", autouse=True)
def _warm_data():
    """Load the partitions once, so that no healthy client's first call is slow."""
    from clients.data import load_central_testset, load_partition
    from simulations.app.compose import client_settings

    data = client_settings(sleepy_config())["data"]
    for i in range(3):
        load_partition(data, i, 3)
    load_central_testset(data)


def rounds_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def missing_lines(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if re.match(r"round \d+ (train|eval): no reply from node", r.getMessage())
    ]


def test_required_replies_counts_and_fractions():
    assert required_replies(1, 10) == 1
    assert required_replies(3, 2) == 3  # the config check refuses this; the helper does not guess
    assert required_replies(0.5, 5) == 3 and required_replies(0.01, 5) == 1
    for bad in (0, -1, 1.5, 1.0001):
        with pytest.raises(ValueError, match="min_replies"):
            required_replies(bad, 5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("min_replies=0", "must be an integer >= 1 or a fraction"),
        ("min_replies=2.5", "must be an integer >= 1 or a fraction"),
        ("min_replies=4", "can never be met: a round samples 3 nodes"),
        ("on_too_few_replies=wait", "must be 'stop' or 'skip'"),
        ("checkpoint_every=-1", "must be an integer >= 0"),
    ],
)
def test_bad_reply_policy_keys_fail_before_training(tmp_path, override, message):
    from simulations.app.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=rf"^{override.split('=')[0]}=.*{message}"):
        validate_config(sleepy_config(override))


def test_inline_sleeper_is_missing_and_the_round_goes_on_above_min_replies(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="flwr"):
        summary = run_from_config(sleepy_config("num_rounds=1", "min_replies=0.5"), tmp_path, quiet=True)
    record = rounds_of(tmp_path)[1]
    assert (record["sampled"], record["replied"], record["missing"], record["dropped"]) == (3, 2, 1, 0)
    assert record["skipped"] is False and summary["trained_rounds"] == 1
    lines = missing_lines(caplog)
    assert lines == [
        f"round 1 train: no reply from node {1000 + SLEEPER}: no reply within timeout=3 s / node lost"
    ]


def test_inline_sleeper_below_min_replies_stops_the_run_and_resume_with_a_longer_timeout_finishes(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TooFewRepliesError, match=r"round 1: 2 usable .* of 3 sampled .*needs 3 \(1 missing"):
        run_from_config(sleepy_config("num_rounds=2", "min_replies=3"), out, quiet=True)
    assert [r["round"] for r in rounds_of(out)] == [0]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and "TooFewRepliesError: round 1" in status["reason"]
    assert "timeout=3 s too short?" in status["reason"]
    assert status["resume"] == f"python -m simulations.run resume={out}"
    assert not (out / "summary.json").exists()

    from simulations.run import resume_run

    summary = resume_run(out, ["timeout=30"], quiet=True)
    rounds = rounds_of(out)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["missing"] == 0 and r["replied"] == 3 for r in rounds[1:])
    assert summary["trained_rounds"] == 2
    assert json.loads((out / "config.json").read_text())["timeout"] == 30


def test_inline_sleeper_below_min_replies_with_skip_keeps_the_model(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="flwr"):
        summary = run_from_config(
            sleepy_config("num_rounds=2", "min_replies=3", "on_too_few_replies=skip", sleep_rounds=(2,)),
            tmp_path,
            quiet=True,
        )
    rounds = rounds_of(tmp_path)
    assert [r["skipped"] for r in rounds] == [False, False, True]
    assert rounds[2]["missing"] == 1 and rounds[2]["replied"] == 2
    # The skipped round evaluates the model the first round made.
    assert rounds[2]["central_accuracy"] == rounds[1]["central_accuracy"]
    assert rounds[2]["central_loss"] == rounds[1]["central_loss"]
    assert summary["trained_rounds"] == 1 and "warning" not in summary
    assert any(
        "round 2: 2 usable training replies" in r.getMessage() and "skipped" in r.getMessage()
        for r in caplog.records
    )
    assert len(missing_lines(caplog)) == 1


def test_a_run_that_trained_no_round_says_so(tmp_path):
    summary = run_from_config(
        sleepy_config("num_rounds=1", "min_replies=3", "on_too_few_replies=skip"), tmp_path, quiet=True
    )
    assert summary["trained_rounds"] == 0
    assert summary["warning"] == "no round aggregated any reply: the final model is the initial model"
    initial = compose_run(sleepy_config("num_rounds=1"), tmp_path / "x").initial_arrays
    with np.load(tmp_path / "final_model.npz") as final:
        for key in final.files:
            np.testing.assert_array_equal(final[key], initial[key].numpy())


def test_cli_stop_is_a_one_line_message_and_a_non_zero_exit(tmp_path):
    """``timeout`` too short for every client: exit 3 and one line saying what to check."""
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.run",
            "num_clients=2",
            "num_rounds=2",
            "local_epochs=1",
            "fraction_evaluate=0",
            "timeout=0.001",  # no client call is that fast: every node is missing
            f"hydra.run.dir={out}",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == TOO_FEW_REPLIES_EXIT, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedlean: run stopped: round 1: 0 usable training replies of 2 sampled"), last
    assert "check the 'no reply from node' lines (timeout=0.001 s too short?" in last, last
    assert f"resume={out}" in last
    assert "Traceback" not in proc.stderr
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"


#: Ray: round 1 includes starting the actors and their ClientApp imports (2 to 3 minutes
#: measured with 3 actors on 2 shared, loaded cores), so the
#: timeout is long and the sleeper sleeps past it in round 2 only.
RAY_TIMEOUT, RAY_SLEEP = 120.0, 150.0


@pytest.mark.slow
def test_ray_sleeper_is_missing_stops_the_run_and_resume_with_skip_finishes(tmp_path, monkeypatch, caplog):
    """Ray, 3 clients, 2 rounds, partition 0 sleeps past ``timeout`` in round 2.

    ``min_replies=3`` with ``stop``: the run stops in round 2. Resumed (on Ray: no node
    state comes back, every node resyncs) with ``on_too_few_replies=skip``: round 2
    runs again, the sleeper misses it again, the round is skipped and the run finishes.
    """
    from simulations.run import resume_run

    # Ray's workers import the plug-in: they inherit this environment.
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cfg = sleepy_config(
        "num_rounds=2",
        "min_replies=3",
        "backend=ray",
        "backend.total_cpus=3",
        sleep_rounds=(2,),
        sleep_seconds=RAY_SLEEP,
        timeout=RAY_TIMEOUT,
    )
    out = tmp_path / "ray"
    with caplog.at_level(logging.WARNING, logger="flwr"):
        with pytest.raises(TooFewRepliesError, match=r"round 2: 2 usable .* needs 3 \(1 missing"):
            run_from_config(cfg, out, quiet=True)
    rounds = rounds_of(out)
    assert len(rounds) == 2 and rounds[1]["missing"] == 0 and rounds[1]["replied"] == 3
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    lines = missing_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("round 2 train: no reply from node"), lines

    caplog.clear()
    with caplog.at_level(logging.INFO):
        summary = resume_run(out, ["on_too_few_replies=skip"], quiet=True)
    rounds = rounds_of(out)
    assert rounds[2]["missing"] == 1 and rounds[2]["replied"] == 2 and rounds[2]["skipped"] is True
    assert summary["trained_rounds"] == 1
    # New Ray node ids: the node states on disk are matched to them by partition.
    assert any("matched to this run's nodes by partition" in r.getMessage() for r in caplog.records)
    assert len(missing_lines(caplog)) == 1
