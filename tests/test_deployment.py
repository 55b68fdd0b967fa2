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
        assert by_kind.get("push_object") == ours_up, by_kind
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
        f"\nplain: {elapsed:.1f} s, ours {summary['total_bytes'] + summary['eval_bytes']} B, "
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
    assert rogue.popen.returncode != 0
    assert "Failed to activate SuperNode" in rogue.log_tail(), rogue.log_tail()

    out_dir = fed.workdir / "results-tls"
    run_id = fed.run(run_config={"overrides": overrides(2), "output-dir": str(out_dir)})
    record = fed.wait_for_run(run_id, timeout=480, done_file=out_dir / "deployment.json")

    rounds, summary, info = read_results(out_dir)
    assert set(info["node_ids"]) == registered
    assert summary["rounds"] == ROUNDS and summary["final_central_accuracy"] > 0.5
    assert all(r["dropped"] == 0 for r in rounds)
    check_bytes(rounds, summary, record["network-traffic"], messages=2 * 2 * ROUNDS)
    print(
        f"\ntls: ours {summary['total_bytes'] + summary['eval_bytes']} B, "
        f"SuperLink {record['network-traffic']}"
    )
