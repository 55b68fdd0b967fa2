"""Ray backend: sampling by partition id, one SIGINT, dead actors, joining a Ray cluster.

The Ray runs are marked slow (each starts Ray). A probe method living in ``tmp_path``
(a plug-in, as ``tests/test_registry.py`` does it) records on which Ray node each
training call ran and can kill its own actor process once, to test actor death.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from fl_strategies.base import FedleanStrategy
from simulations import CONF_DIR
from simulations.app.config import ConfigError
from simulations.runtimes.simulation import ray_backend_config, run_from_config

REPO = Path(__file__).resolve().parent.parent
PARTIAL = ["num_clients=20", "fraction_train=0.2", "fraction_evaluate=0", "num_rounds=3", "seed=3"]
RAY = ["backend=ray", "backend.total_cpus=2"]

PROBE_CLIENT = '''
import os
from pathlib import Path

from clients.methods.base import ClientMethod


class RayProbeClient(ClientMethod):
    """FedAvg's client that notes where it ran; kills its actor once if told to."""

    name = "ray_probe"

    def train(self, job):
        import ray

        probe = Path(os.environ["FEDLEAN_PROBE_DIR"])
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "none"
        (probe / f"{job.partition_id}-{job.server_round}-{os.getpid()}").write_text(node)
        kill = os.environ.get("FEDLEAN_PROBE_KILL")  # "<partition>:<round>"
        marker = probe / "killed"
        if kill == f"{job.partition_id}:{job.server_round}" and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # the actor's process dies mid-call, as on an OOM kill
        return super().train(job)
'''
PROBE_ENTRY = """
from dataclasses import dataclass

from fl_strategies import FedAvg
from methods import MethodConfig, MethodEntry, register
from ray_probe_client import RayProbeClient


@dataclass
class RayProbeConfig(MethodConfig):
    name: str = "ray_probe"


register(MethodEntry(name="ray_probe", config=RayProbeConfig, client=RayProbeClient,
                     build=lambda cfg, ctx: FedAvg(**ctx.common)))
"""


def config(*overrides: str, searchpath: Path | None = None):
    extra = [f"hydra.searchpath=[file://{searchpath}]"] if searchpath else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=[*extra, "local_epochs=1", *overrides])


def rounds_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """The ray_probe plug-in method; returns (conf dir, probe dir, overrides)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "ray_probe_client.py").write_text(textwrap.dedent(PROBE_CLIENT))
    (code / "ray_probe_entry.py").write_text(textwrap.dedent(PROBE_ENTRY))
    conf = tmp_path / "conf"
    (conf / "method").mkdir(parents=True)
    (conf / "method" / "ray_probe.yaml").write_text("name: ray_probe\n")
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.syspath_prepend(str(code))
    # Ray workers inherit the driver's environment (and Flower hands them sys.path).
    monkeypatch.setenv("FEDLEAN_PROBE_DIR", str(calls))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), str(REPO)]))
    return conf, calls, ["method=ray_probe", "plugins=[ray_probe_entry]"]


# ------------------------------------------------------------------ sampling
def strategy_with(partitions: dict[int, int], seed: int = 3) -> FedleanStrategy:
    strategy = FedleanStrategy(client_config={"seed": seed})
    strategy.node_partitions.update(partitions)
    return strategy


def sampled_partitions(strategy: FedleanStrategy, server_round: int, num: int, phase: str = "train"):
    nodes = list(strategy.node_partitions)
    return [strategy.node_partitions[n] for n in strategy.sample_nodes(server_round, nodes, num, phase)]


def test_sampling_follows_partition_ids_not_node_ids():
    rng = np.random.default_rng(0)
    inline = strategy_with({1000 + p: p for p in range(20)})
    random_ids = rng.choice(2**62, size=20, replace=False)
    ray_like = strategy_with({int(node): p for p, node in enumerate(random_ids)})
    for server_round in (1, 2, 3):
        assert sampled_partitions(inline, server_round, 4) == sampled_partitions(ray_like, server_round, 4)
    rounds = [sampled_partitions(inline, r, 4) for r in (1, 2, 3)]
    assert len({tuple(r) for r in rounds}) == 3  # a new draw each round
    assert all(len(set(r)) == 4 for r in rounds)


def test_sampling_depends_on_seed_round_and_phase_only():
    a, b = strategy_with({p: p for p in range(50)}), strategy_with({p: p for p in range(50)})
    sampled_partitions(a, 1, 5)  # an earlier draw does not shift later ones (resume)
    assert sampled_partitions(a, 2, 5) == sampled_partitions(b, 2, 5)
    assert sampled_partitions(a, 2, 5) != sampled_partitions(
        strategy_with({p: p for p in range(50)}, 4), 2, 5
    )
    assert sampled_partitions(a, 2, 5, "train") != sampled_partitions(a, 2, 5, "evaluate")
    assert sampled_partitions(a, 2, 50) == list(range(50))


def test_backend_address_joins_a_cluster_without_local_caps():
    ray = config("backend=ray").backend
    private = ray_backend_config(dict(ray))
    assert private["init_args"]["num_cpus"] >= 1 and "address" not in private["init_args"]
    joined = ray_backend_config({**ray, "address": "auto"})
    assert joined["init_args"] == {"include_dashboard": False, "address": "auto"}
    assert joined["client_resources"]["max_restarts"] == -1
    with pytest.raises(ConfigError, match=r"^backend.total_cpus=2.0: caps a private Ray instance only"):
        run_from_config(config("backend=ray", "backend.address=auto", "backend.total_cpus=2"), "/tmp/x")


# ------------------------------------------------------------- Ray end to end
@pytest.mark.slow
def test_inline_and_ray_sample_the_same_partitions_and_repeat(tmp_path, probe):
    conf, calls, method = probe
    run_from_config(config(*PARTIAL, *method, searchpath=conf), tmp_path / "inline", quiet=True)
    inline_calls = sorted(p.name.rsplit("-", 1)[0] for p in calls.iterdir())
    for old in calls.iterdir():
        old.unlink()
    for name in ("ray1", "ray2"):
        run_from_config(config(*PARTIAL, *RAY, *method, searchpath=conf), tmp_path / name, quiet=True)
    ray_calls = sorted(p.name.rsplit("-", 1)[0] for p in calls.iterdir())
    # The same (partition, round) pairs trained, twice over for the two Ray runs.
    assert len(inline_calls) == 12 and ray_calls == sorted(inline_calls * 2)
    with (
        np.load(tmp_path / "inline" / "final_model.npz") as a,
        np.load(tmp_path / "ray1" / "final_model.npz") as b,
    ):
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
    accuracies = {
        name: [r["central_accuracy"] for r in rounds_of(tmp_path / name)]
        for name in ("inline", "ray1", "ray2")
    }
    assert accuracies["ray1"] == accuracies["ray2"]
    np.testing.assert_allclose(accuracies["ray1"], accuracies["inline"], atol=1e-9)


@pytest.mark.slow
def test_one_sigint_stops_a_ray_run_and_marks_it_interrupted(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "simulations.run", f"hydra.run.dir={out}", *RAY]
    cmd += ["num_clients=4", "num_rounds=500", "fraction_evaluate=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not ((out / "rounds.jsonl").exists() and len(rounds_of(out)) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-2000:]
            time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)  # once
        rc = proc.wait(timeout=120)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    status = json.loads((out / "status.json").read_text())
    print(f"SIGINT to exit: {seconds:.1f} s")
    assert rc != 0 and status["status"] == "interrupted", (rc, status, output[-2000:])
    assert "SIGINT" in status["reason"] and 2 <= status["rounds_completed"] < 500
    assert not (out / "summary.json").exists()
    assert seconds < 90, seconds  # a few seconds of stopping plus Ray's shutdown, on a loaded machine


@pytest.mark.slow
def test_a_dead_ray_actor_is_reported_and_replaced(tmp_path, probe, monkeypatch, capfd):
    conf, calls, method = probe
    monkeypatch.setenv("FEDLEAN_PROBE_KILL", "1:2")  # partition 1 kills its actor in round 2
    overrides = ["num_clients=4", "num_rounds=4", "fraction_evaluate=0", "seed=1", *RAY, *method]
    run_from_config(config(*overrides, searchpath=conf), tmp_path / "run", quiet=True)
    rounds = rounds_of(tmp_path / "run")
    assert (calls / "killed").exists()
    # Ray restarted the actor and ran the call again there: no reply lost, in no round.
    assert [r["dropped"] for r in rounds] == [0, 0, 0, 0, 0], rounds
    trained = [p.name.split("-") for p in calls.iterdir() if p.name != "killed"]
    by_round = {rnd: sorted(int(part) for part, r, _ in trained if r == rnd) for rnd in ("1", "2", "3", "4")}
    assert by_round == {"1": [0, 1, 2, 3], "2": [0, 1, 1, 2, 3], "3": [0, 1, 2, 3], "4": [0, 1, 2, 3]}
    pids = {pid for part, rnd, pid in trained if (part, rnd) == ("1", "2")}
    assert len(pids) == 2 and (calls / "killed").read_text() in pids  # died in one process, done in another
    log = capfd.readouterr()
    assert "A worker died or was killed while executing a task" in log.out + log.err  # reported by Ray


@pytest.mark.slow
def test_joins_a_two_node_ray_cluster_and_uses_both_nodes(tmp_path, probe):
    from ray.cluster_utils import Cluster

    conf, calls, method = probe
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head-node": 1}},
    )
    try:
        worker = cluster.add_node(num_cpus=1, resources={"worker-node": 1})
        node_ids = {cluster.head_node.node_id, worker.node_id}  # before shutdown() forgets them
        cluster.wait_for_nodes()
        overrides = ["num_clients=6", "num_rounds=2", "fraction_evaluate=0", "backend=ray", *method]
        overrides.append(f"backend.address={cluster.address}")
        summary = run_from_config(config(*overrides, searchpath=conf), tmp_path / "run", quiet=True)
    finally:
        cluster.shutdown()
    ray_nodes = {p.read_text() for p in calls.iterdir()}
    assert ray_nodes == node_ids, (ray_nodes, node_ids)
    assert len(list(calls.iterdir())) == 12  # 6 clients x 2 rounds, all on the cluster's actors
    assert summary["final_central_accuracy"] > rounds_of(tmp_path / "run")[0]["central_accuracy"]
