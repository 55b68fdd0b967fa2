"""Suites: expansion into jobs, the shipped suites compose, a tiny suite end to end with a bad job."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from simulations import CONF_DIR
from simulations.tools import report, suite

TINY = """
description: tiny
overrides: [dataset=digits, num_clients=3, num_rounds=2, local_epochs=1, fraction_evaluate=0]
seeds: [0, 1]
methods:
  fedavg: []
  fedprox: [method.proximal_mu=0.1]
  oneshot_bad: [method=oneshot, method.ft_rounds=2]   # ft_rounds >= num_rounds: invalid
"""


def test_jobs_are_methods_x_seeds_x_swept_values_with_the_same_seeds():
    spec = {
        "name": "t",
        "overrides": ["num_rounds=5"],
        "seeds": [3, 4],
        "methods": {"fedavg": [], "zerofl_diff": ["method=zerofl", "method.uplink=topk_diff"]},
        "sweep": {"key": "method.sparsity", "values": [0.9, 0.95], "methods": ["zerofl_diff"]},
    }
    jobs = suite.expand_jobs(spec, extra=["num_rounds=2"])
    assert [j.name for j in jobs] == [
        "fedavg/seed3",
        "fedavg/seed4",
        "zerofl_diff/sparsity=0.9/seed3",
        "zerofl_diff/sparsity=0.9/seed4",
        "zerofl_diff/sparsity=0.95/seed3",
        "zerofl_diff/sparsity=0.95/seed4",
    ]
    assert jobs[0].overrides == ["method=fedavg", "num_rounds=5", "num_rounds=2", "seed=3"]
    assert jobs[2].overrides == [
        "num_rounds=5",
        "method=zerofl",
        "method.uplink=topk_diff",
        "method.sparsity=0.9",
        "num_rounds=2",
        "seed=3",
    ]
    assert jobs[2].method == "zerofl" and jobs[2].sweep_value == 0.9 and jobs[0].sweep_key is None


@pytest.mark.parametrize("name", [name for name, _ in suite.list_suites()])
def test_every_shipped_suite_composes(name):
    spec = suite.load_suite(name)
    jobs = suite.expand_jobs(spec)
    assert {j.seed for j in jobs if j.label == jobs[0].label} == set(spec["seeds"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for job in jobs:
            if job.seed == spec["seeds"][0]:
                cfg = compose(config_name="config", overrides=job.overrides)
                assert cfg.method.name == job.method and cfg.seed == job.seed
                if job.sweep_key:
                    assert str(cfg[job.sweep_key.split(".")[0]][job.sweep_key.split(".")[1]]) == str(
                        job.sweep_value
                    )


def test_digits_all_covers_every_method_or_says_why_not():
    spec = suite.load_suite("digits-all")
    methods = {j.method for j in suite.expand_jobs(spec)} | set(spec.get("omitted", {}))
    available = {p.stem for p in (CONF_DIR / "method").glob("*.yaml")}
    assert methods == available and len(spec["seeds"]) == 3


def test_unknown_suite_is_a_one_line_error(capsys):
    assert suite.main(["no-such-suite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedlean suite: no-such-suite: no such suite (known: ") and err.count("\n") == 1


@pytest.mark.slow
def test_tiny_suite_runs_records_the_bad_job_and_skips_finished_jobs_when_rerun(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    out = tmp_path / "out"
    assert suite.main([str(path), "--jobs", "2", "--out", str(out), "--quiet"]) == 1  # one job is bad

    status = json.loads((out / "status.json").read_text())
    assert {k: v["status"] for k, v in status.items()} == {
        "fedavg/seed0": "done",
        "fedavg/seed1": "done",
        "fedprox/seed0": "done",
        "fedprox/seed1": "done",
        "oneshot_bad/seed0": "failed",
        "oneshot_bad/seed1": "failed",
    }
    assert (
        status["oneshot_bad/seed0"]["error"]
        == "invalid config: method.ft_rounds=2: must be in [0, num_rounds=2)"
    )
    assert not (out / "oneshot_bad" / "seed0" / "summary.json").exists()
    summaries = {
        p.parent.relative_to(out).as_posix(): json.loads(p.read_text()) for p in out.rglob("summary.json")
    }
    assert set(summaries) == {"fedavg/seed0", "fedavg/seed1", "fedprox/seed0", "fedprox/seed1"}
    assert all(s["rounds"] == 2 and s["num_clients"] == 3 for s in summaries.values())
    assert {s["seed"] for k, s in summaries.items() if k.endswith("seed1")} == {1}
    # the seed fixes the initial model: round 0 is the same for both methods, not across seeds
    round0 = {
        k: json.loads((out / k / "rounds.jsonl").read_text().splitlines()[0])["central_accuracy"]
        for k in summaries
    }
    assert round0["fedavg/seed0"] == round0["fedprox/seed0"]
    assert round0["fedavg/seed1"] == round0["fedprox/seed1"]
    mtimes = {k: (out / k / "summary.json").stat().st_mtime_ns for k in summaries}

    assert suite.main([str(path), "--jobs", "2", "--out", str(out), "--quiet"]) == 1
    assert {k: (out / k / "summary.json").stat().st_mtime_ns for k in summaries} == mtimes
    records = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    ran = [r["job"] for r in records if r["status"] == "done"]
    assert sorted(ran) == sorted(summaries)  # each finished job ran exactly once
    assert sorted(r["job"] for r in records[6:] if r["status"] == "cached") == sorted(summaries)
    assert [r["job"] for r in records if r["status"] == "failed"].count("oneshot_bad/seed0") == 2

    text = report.report([out])
    assert "| fedavg |" in text and "| fedprox |" in text
    assert "**failed:** oneshot_bad/seed1: invalid config: method.ft_rounds=2" in text
    avg = next(line for line in text.splitlines() if line.startswith("| fedavg |")).split("|")
    assert avg[-2].strip() == "2" and avg[7].strip() == "1.000"  # two seeds; the FedAvg ratio to itself


def test_a_crashing_job_reports_the_last_line_of_its_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "job.json").write_text(json.dumps({"name": "x/seed0"}))  # no overrides: the child crashes
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.tools.suite", "--run-job", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert suite.one_line(proc.stderr) == "KeyError: 'overrides'"
