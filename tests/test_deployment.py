"""Deployment on real Flower processes: a SuperLink and SuperNodes on 127.0.0.1.

Each test starts its own SuperLink (free port) and SuperNodes, runs the fedlean app
with ``flwr run``, checks the results files, and compares our measured bytes with
the SuperLink's own traffic counters (``flwr ls``). Every process is stopped by the
fixture's finalizer, failing or not.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from simulations import CONF_DIR
from simulations.deploy import (
    LocalFederation,
    descendants,
    export_partition,
    generate_supernode_keys,
)

REPO = Path(__file__).resolve().parents[1]
METHOD = "fedsparsify_global" if (CONF_DIR / "method/fedsparsify_global.yaml").is_file() else "fedavg"
ROUNDS = 2
#: Our counts are the objects' bytes; the SuperLink's also hold the protobuf envelope.
BYTES_TOLERANCE = 0.05
#: Bound on that envelope per message (measured: about 1.2 KB down, 1.6 KB up).
ENVELOPE_MAX = 4096
#: Bytes of reply objects the SuperLink already held (not pushed again): a few small ones.
DEDUPED_MAX = 1024
#: Bound on the extra bytes per message of deployment's longer node/run ids (measured: 57).
ID_BYTES = 128
#: Logs the SuperLink's traffic records by Fleet API call (diagnostic; docs/deploy.md).
PROBE = REPO / "scripts" / "traffic_probe"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("flower-superlink") is None
        and not (Path(sys.executable).parent / "flower-superlink").is_file(),
        reason="Flower's deployment CLI is not installed",
    ),
]


@pytest.fixture
def federation_factory(tmp_path, request):
    """Make LocalFederations whose processes are all stopped at teardown."""
    made: list[LocalFederation] = []

    def make(name: str, env: dict | None = None, **kwargs) -> LocalFederation:
        # Tiny models, several processes on few cores: one torch thread each.
        fed = LocalFederation(tmp_path / name, env={"OMP_NUM_THREADS": "1", **(env or {})}, **kwargs)
        made.append(fed)
        return fed

    def stop_all() -> None:
        for fed in made:
            fed.stop(grace=5.0)

    request.addfinalizer(stop_all)
    return make


def overrides(num_clients: int, *extra: str) -> str:
    return shlex.join(
        [
            f"method={METHOD}",
            "dataset=digits",
            f"num_clients={num_clients}",
            f"num_rounds={ROUNDS}",
            "local_epochs=1",
            "seed=0",
            *extra,
        ]
    )


def read_results(out_dir: Path) -> tuple[list[dict], dict, dict]:
    rounds = [json.loads(line) for line in (out_dir / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((out_dir / "summary.json").read_text())
    info = json.loads((out_dir / "deployment.json").read_text())
    return rounds, summary, info


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def check_round_times(rounds: list[dict]) -> list[float]:
    """Each round's wall time is recorded (cumulative, increasing); returns seconds per round."""
    walls = [r["wall_seconds"] for r in rounds]
    assert all(isinstance(w, float) and w >= 0 for w in walls), walls
    per_round = [b - a for a, b in zip(walls, walls[1:], strict=False)]
    assert len(per_round) == ROUNDS and all(s > 0 for s in per_round), walls
    return per_round


def check_bytes(
    rounds: list[dict], summary: dict, traffic: dict, messages: int, probe_log: Path | None = None
) -> None:
    """Our totals (training + evaluation) against the SuperLink's Fleet API counters.

    ``messages``: messages each way (one reply per instruction). The SuperLink counts
    the objects' bytes (what we count) plus a protobuf envelope per message
    (metadata, object tree), which it alone sees.
    """
    last = rounds[-1]
    ours_up = last["cum_bytes_up"] + last["cum_eval_bytes_up"]
    ours_down = last["cum_bytes_down"] + last["cum_eval_bytes_down"]
    ours = summary["total_bytes"] + summary["eval_bytes"]
    assert ours == ours_up + ours_down
    link = traffic["total-bytes"]
    assert abs(link - ours) / link < BYTES_TOLERANCE, (ours, traffic)
    # SuperLink "inbound" = what the SuperNodes pushed (our up), "outbound" = pulled.
    for link_bytes, our_bytes in (
        (traffic["inbound-bytes"], ours_up),
        (traffic["outbound-bytes"], ours_down),
    ):
        assert abs(link_bytes - our_bytes) / link_bytes < BYTES_TOLERANCE
        assert 0 <= link_bytes - our_bytes <= ENVELOPE_MAX * messages, (link_bytes, our_bytes)
    if probe_log is not None and probe_log.exists():
        by_kind: dict[str, int] = {}
        for line in probe_log.read_text().splitlines():
            record = json.loads(line)
            by_kind[record["fn"]] = by_kind.get(record["fn"], 0) + record["sent"] + record["recv"]
        # Byte for byte: the objects the SuperNodes pulled and pushed are ours.
        assert by_kind.get("pull_object") == ours_down, by_kind
        # The SuperLink asks only for objects it does not hold yet: a reply that repeats
        # an object already stored in this run (one of the downlink's, or another node's
        # identical one, e.g. an unchanged small tensor's blob) does not push it again.
        assert 0 <= ours_up - by_kind.get("push_object", 0) <= DEDUPED_MAX, by_kind
        assert sum(by_kind.values()) == link


def test_deployment_plain_with_failing_device(federation_factory, tmp_path):
    """2 working SuperNodes (a partition, a device .npz) and 1 whose data path is missing."""
    probe_log = tmp_path / "traffic.jsonl"
    fed = federation_factory(
        "plain",
        env={
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])),
            "TRAFFIC_LOG": str(probe_log),
        },
    )
    fed.start_superlink()
    device_npz = export_partition(tmp_path / "device1.npz", 1, 2, ["dataset=digits"])
    fed.start_supernode("node0", {"partition-id": 0, "num-partitions": 2})
    fed.start_supernode("node1", {"data-path": str(device_npz)})
    broken = fed.start_supernode("broken", {"data-path": str(tmp_path / "missing.npz")})

    out_dir = tmp_path / "results-plain"
    started = time.monotonic()
    run_id = fed.run(run_config={"overrides": overrides(3), "output-dir": str(out_dir)})
    record = fed.wait_for_run(run_id, timeout=480, done_file=out_dir / "deployment.json")
    elapsed = time.monotonic() - started

    rounds, summary, info = read_results(out_dir)
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    assert info["run_id"] == run_id and len(info["node_ids"]) == 3
    assert summary["backend"] == "deployment" and summary["method"] == METHOD
    assert summary["rounds"] == ROUNDS
    assert summary["final_central_accuracy"] > 0.5  # digits MLP after 2 rounds: ~0.9
    per_round = check_round_times(rounds)
    for r in rounds[1:]:
        # The broken device fails both its train and evaluate message; the round
        # goes on with the two others.
        assert r["dropped"] == 1 and r["eval_dropped"] == 1, r
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0 and r["eval_bytes_down"] > 0
    log = fed.run_log(run_id)
    # The server names the node and the device's own error (Flower's error reply).
    assert re.search(r"dropped reply from node \d+: error reply: .*FileNotFoundError.*missing\.npz", log), log
    assert "missing.npz" in broken.log_tail(20000), broken.log_tail()
    assert broken.alive  # a failing ClientApp does not take its SuperNode down

    check_bytes(rounds, summary, record["network-traffic"], messages=3 * 2 * ROUNDS, probe_log=probe_log)
    print(
        f"\nplain: {elapsed:.1f} s, s/round {per_round}, "
        f"ours {summary['total_bytes'] + summary['eval_bytes']} B, "
        f"SuperLink {record['network-traffic']}"
    )


def test_deployment_tls_with_node_auth(federation_factory):
    """TLS + SuperNode authentication: registered nodes train, an unregistered one is refused."""
    fed = federation_factory("tls", tls=True, node_auth=True)
    fed.start_superlink()
    keys = [generate_supernode_keys(fed.workdir / "keys", f"node{i}") for i in range(2)]
    registered = {fed.register_node(k.public_key) for k in keys}
    rogue_key = generate_supernode_keys(fed.workdir / "keys", "rogue")
    for i, k in enumerate(keys):
        fed.start_supernode(f"node{i}", {"partition-id": i, "num-partitions": 2}, private_key=k.private_key)
    rogue = fed.start_supernode(
        "rogue", {"partition-id": 0, "num-partitions": 2}, private_key=rogue_key.private_key, max_wait_time=30
    )

    online = fed.wait_for_nodes(2)
    assert {int(n["node-id"]) for n in online} == registered
    rogue.popen.wait(timeout=60)
    # Flower logs its own code (305, SUPERNODE_CONNECTION_ERROR) but exits 1 for every error.
    assert rogue.popen.returncode == 1, rogue.popen.returncode
    assert "Failed to activate SuperNode" in rogue.log_tail(), rogue.log_tail()
    assert "Exit Code: 305" in rogue.log_tail(), rogue.log_tail()

    out_dir = fed.workdir / "results-tls"
    run_id = fed.run(run_config={"overrides": overrides(2), "output-dir": str(out_dir)})
    record = fed.wait_for_run(run_id, timeout=480, done_file=out_dir / "deployment.json")

    rounds, summary, info = read_results(out_dir)
    assert set(info["node_ids"]) == registered
    assert summary["rounds"] == ROUNDS and summary["final_central_accuracy"] > 0.5
    assert all(r["dropped"] == 0 for r in rounds)
    check_round_times(rounds)
    check_bytes(rounds, summary, record["network-traffic"], messages=2 * 2 * ROUNDS)
    print(
        f"\ntls: ours {summary['total_bytes'] + summary['eval_bytes']} B, "
        f"SuperLink {record['network-traffic']}"
    )


def test_deployment_process_isolation_matches_inline(federation_factory, tmp_path):
    """``--isolation process`` + fedlean's long-running ClientApp: the inline run's accuracy and bytes.

    The SuperNodes start no SuperExec, so every message is served by the worker
    processes; the run completing at all shows they did.
    """
    from hydra import compose, initialize_config_dir

    from simulations.runtimes.simulation import run_from_config

    fed = federation_factory("process")
    fed.start_superlink()
    for i in range(2):
        fed.start_supernode(f"node{i}", {"partition-id": i, "num-partitions": 2}, isolation="process")
    workers = [p for p in fed.procs if p.name.endswith("-clientapp")]
    assert len(workers) == 2
    out_dir = tmp_path / "results-process"
    run_id = fed.run(run_config={"overrides": overrides(2), "output-dir": str(out_dir)})
    record = fed.wait_for_run(run_id, timeout=480, done_file=out_dir / "deployment.json")
    rounds, summary, _ = read_results(out_dir)
    per_round = check_round_times(rounds)
    assert all(r["dropped"] == 0 for r in rounds)
    assert all(w.alive for w in workers)  # one process for all of the run's messages
    # No SuperExec below any SuperNode: Flower started no flwr-clientapp process.
    below = [pid for p in fed.procs if p.name in ("node0", "node1") for pid in descendants(p.popen.pid)]
    assert not any("superexec" in _cmdline(pid) for pid in below)
    check_bytes(rounds, summary, record["network-traffic"], messages=2 * 2 * ROUNDS)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=[*shlex.split(overrides(2)), "backend=inline"])
    run_from_config(cfg, tmp_path / "inline", quiet=True)
    inline_rounds = [json.loads(x) for x in (tmp_path / "inline" / "rounds.jsonl").read_text().splitlines()]
    assert [r["central_accuracy"] for r in rounds] == [r["central_accuracy"] for r in inline_rounds]
    for key in ("cum_bytes_up", "cum_bytes_down", "cum_eval_bytes_up", "cum_eval_bytes_down"):
        # Deployment messages carry longer node and run ids than inline ones: up to
        # ID_BYTES more per message (2 nodes x ROUNDS messages of each kind), no fewer.
        extra = rounds[-1][key] - inline_rounds[-1][key]
        assert 0 <= extra <= ID_BYTES * 2 * ROUNDS, (key, rounds[-1][key], inline_rounds[-1][key])
    print(f"\nprocess isolation: s/round {per_round}")
