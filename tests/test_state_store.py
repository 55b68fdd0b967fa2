"""The on-disk node state store (``client_state=disk``): exact, bounded, crash safe.

A version file round-trips a RecordDict bit for bit; the store keeps what a resume
needs and no more; runs with the disk store equal runs with the in-memory one (GWPF
with partial messages and FedSparsify-Local, whose nodes use their stored state every
round); a run interrupted in the middle of a round resumes to the uninterrupted run;
on Ray the store serves the actors.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from hydra import compose, initialize_config_dir

from simulations import CONF_DIR
from simulations.app import state_store
from simulations.app.client_app import build_client_app
from simulations.app.compose import compose_run, execute_plan
from simulations.app.config import ConfigError, validate_config
from simulations.app.state_store import NodeStateStore, read_state, state_store_for, write_state
from simulations.run import resume_run
from simulations.runtimes.inline import InlineGrid
from simulations.runtimes.simulation import run_from_config

GWPF = [
    "method=gwpf",
    "num_clients=6",
    "fraction_train=0.5",
    "fraction_evaluate=0.5",
    "local_epochs=1",
    "seed=5",
    # Freeze within a few rounds, so partial messages (which need the stored state) go out.
    "method.alpha=0.5",
    "method.threshold=0.9",
    "method.vote_min_rounds=1",
]
FEDSPARSIFY_LOCAL = [
    "method=fedsparsify_local",
    "num_clients=3",  # every node every round: each gets changes to the mask it holds
    "fraction_train=1",
    "local_epochs=1",
    "seed=3",
    "method.benchmark_seconds=0",
]


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def rounds(out: Path) -> list[dict]:
    """rounds.jsonl without wall-clock timings."""
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]


def same_model(a: Path, b: Path) -> None:
    with np.load(a / "final_model.npz") as x, np.load(b / "final_model.npz") as y:
        assert x.files == y.files
        for key in x.files:
            assert x[key].dtype == y[key].dtype and np.array_equal(x[key], y[key]), key


def sample_state() -> RecordDict:
    f32 = np.arange(12, dtype=np.float32).reshape(3, 4)
    return RecordDict(
        {
            "model": ArrayRecord(
                {
                    "w": Array(f32[:, ::2]),  # a non-contiguous source
                    "h": Array(np.array([np.nan, -0.0, 1e-8], dtype=np.float16)),
                    "mask": Array(np.array([True, False, True])),
                    "step": Array(np.array(7, dtype=np.int64)),  # 0-d
                    "empty": Array(np.zeros((0, 5), dtype=np.uint8)),
                }
            ),
            "meta": ConfigRecord(
                {
                    "round": 3,
                    "lr": 0.1,
                    "name": "x",
                    "raw": b"\x00\xff",
                    "on": True,
                    "ids": [1, 2],
                    "np": np.float64(2.5),
                }
            ),
            "stats": MetricRecord({"loss": 0.25, "n": 10, "hist": [0.5, 1.5]}),
        }
    )


# ------------------------------------------------------------------ format
def test_a_stored_state_round_trips_bit_for_bit(tmp_path):
    state = sample_state()
    write_state(tmp_path / "1.state", state)
    back = read_state(tmp_path / "1.state")
    assert list(back) == list(state) and [type(r) for r in back.values()] == [type(r) for r in state.values()]
    for name, array in state["model"].items():
        got = back["model"][name]
        assert (got.dtype, got.shape, got.stype, got.data) == (
            array.dtype,
            array.shape,
            array.stype,
            array.data,
        )
    np.testing.assert_array_equal(
        back["model"]["w"].numpy(), np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    )
    for key in ("meta", "stats"):
        assert list(back[key].items()) == list(state[key].items())
        assert [type(v) for v in back[key].values()] == [type(v) for v in state[key].values()]


def test_a_state_file_cannot_run_code(tmp_path):
    path = tmp_path / "1.state"
    # os.system: a callable no test patches (Ray replaces builtins.print once it starts).
    path.write_bytes(pickle.dumps({"format": 1, "records": [("x", "config", [("a", os.system)])]}))
    with pytest.raises(pickle.UnpicklingError, match=r"refers to (posix|nt)\.system"):
        read_state(path)


def test_client_state_must_be_memory_or_disk():
    with pytest.raises(ConfigError, match=r"^client_state='ram': must be 'memory' or 'disk'$"):
        validate_config(config("client_state=ram"))


# ------------------------------------------------------------------ versions
def one(value: int) -> RecordDict:
    return RecordDict({"v": ConfigRecord({"value": value})})


def test_versions_kept_are_those_a_resume_can_need(tmp_path):
    store = NodeStateStore(tmp_path / "s")
    store.start(None, checkpoints=True)
    store.save(4, 1, one(1))
    store.save(4, 2, one(2))
    assert store.versions(4) == [1, 2]  # no checkpoint after round 0 yet... (-1: none)
    store.checkpointed(1)
    assert store.versions(4) == [1, 2]  # 1 is the state at checkpoint 1, 2 may be rolled back
    store.checkpointed(2)
    assert store.versions(4) == [2]
    store.save(4, 3, one(3))
    store.save(7, 3, one(30))
    assert store.versions(4) == [2, 3]
    # Training in round 3 starts from the state before 3; evaluation in round 3 follows its training.
    assert store.load(4, 2)["v"]["value"] == 2 and store.load(4, 3)["v"]["value"] == 3
    assert store.load(7, 2) is None
    store.rollback(2)  # killed in round 3, resumed from checkpoint 2
    assert store.versions(4) == [2] and store.versions(7) == []
    store.remove()
    assert not store.root.exists()


def test_without_checkpoints_a_node_keeps_its_newest_state_only(tmp_path):
    store = NodeStateStore(tmp_path / "s")
    store.start(None, checkpoints=False)
    for r in (1, 2, 5):
        store.save(0, r, one(r))
    assert store.versions(0) == [5]


def test_the_mod_loads_stores_and_empties_the_context(tmp_path):
    from flwr.app import MessageType

    from fl_strategies.wire import CONFIG_KEY

    store = NodeStateStore(tmp_path / "s")
    store.start(None, checkpoints=True)
    mod = state_store.StateStoreMod(store.root)
    context = Context(run_id=1, node_id=9, node_config={"partition-id": 2}, state=RecordDict(), run_config={})
    seen: list[int | None] = []

    def count(message: Message, ctx: Context) -> Message:
        held = ctx.state.config_records.get("count")
        seen.append(None if held is None else int(held["n"]))
        if message.metadata.message_type == MessageType.TRAIN:
            ctx.state["count"] = ConfigRecord({"n": (seen[-1] or 0) + 1})
        return Message(RecordDict(), reply_to=message)

    def call(kind: str, server_round: int) -> None:
        content = RecordDict({CONFIG_KEY: ConfigRecord({"server-round": server_round})})
        message = Message(content, dst_node_id=9, message_type=kind)
        mod(message, context, count)
        assert len(context.state) == 0  # nothing stays in memory

    call(MessageType.TRAIN, 1)
    call(MessageType.EVALUATE, 1)
    call(MessageType.TRAIN, 2)
    call(MessageType.TRAIN, 2)  # the same round again (a retry): starts from round 1's state
    assert seen == [None, 1, 1, 1]
    assert store.versions(2) == [1, 2]  # evaluation changed nothing: no version of its own


# ------------------------------------------------------------------ whole runs
@pytest.mark.parametrize("overrides", [GWPF + ["num_rounds=4"], FEDSPARSIFY_LOCAL + ["num_rounds=4"]])
def test_disk_store_gives_the_memory_store_run(tmp_path, overrides, monkeypatch):
    run_from_config(config(*overrides, "client_state=memory"), tmp_path / "memory", quiet=True)
    monkeypatch.setattr(NodeStateStore, "remove", lambda self: None)  # keep it to look at
    plan = compose_run(config(*overrides, "client_state=disk"), tmp_path / "disk")
    store = state_store_for(plan.cfg, plan.out_dir)
    assert store is not None
    grid = InlineGrid(build_client_app(store.root), int(plan.cfg["num_clients"]))
    plan.strategy.node_partitions.update(
        {n: int(c.node_config["partition-id"]) for n, c in grid.contexts.items()}
    )
    execute_plan(plan, grid, quiet=True, state_store=store)

    memory, disk = rounds(tmp_path / "memory"), rounds(tmp_path / "disk")
    assert disk == memory
    same_model(tmp_path / "memory", tmp_path / "disk")
    assert all(len(c.state) == 0 for c in grid.contexts.values())
    stored = sorted(
        int(p.name) for p in store.root.iterdir() if p.name.isdigit() and store.versions(int(p.name))
    )
    assert stored  # every node that trained has its state on disk
    if "method=gwpf" in overrides:
        # Later rounds sent partial messages, which only a node's stored state completes.
        assert any(row.get("full_messages", 99) < row.get("sampled", 0) for row in memory[2:])
        assert all(row["dropped"] == 0 for row in memory[1:])


class StoppingGrid(InlineGrid):
    """An inline Grid that stops the run (KeyboardInterrupt) after ``after_calls`` calls of a round."""

    def __init__(self, app, num_nodes: int, server_round: int, after_calls: int) -> None:
        super().__init__(app, num_nodes)
        self.server_round, self.left = server_round, after_calls

    def _deliver(self, message: Message) -> Message | None:
        reply = super()._deliver(message)
        config = message.content.config_records.get("config")
        if config is not None and int(config.get("server-round", 0)) == self.server_round:
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt("stopped mid-round by the test")
        return reply


STOPPED_GWPF = [*GWPF, "num_rounds=4", "client_state=disk"]


def run_full_and_stopped(tmp_path: Path) -> tuple[Path, NodeStateStore, dict[int, int]]:
    """The uninterrupted GWPF run in ``full``, and the same run stopped after two calls of
    round 3 in ``stopped``: its directory, its store and its node -> partition map."""
    run_from_config(config(*STOPPED_GWPF), tmp_path / "full", quiet=True)
    out = tmp_path / "stopped"
    plan = compose_run(config(*STOPPED_GWPF), out)
    store = state_store_for(plan.cfg, out)
    assert store is not None
    grid = StoppingGrid(build_client_app(store.root), 6, 3, after_calls=2)
    mapping = {n: int(c.node_config["partition-id"]) for n, c in grid.contexts.items()}
    plan.strategy.node_partitions.update(mapping)
    with pytest.raises(KeyboardInterrupt):
        execute_plan(plan, grid, quiet=True, state_store=store)
    return out, store, mapping


def test_a_run_stopped_mid_round_resumes_to_the_uninterrupted_run(tmp_path):
    out, store, _ = run_full_and_stopped(tmp_path)
    written = [p for p in range(6) if 3 in store.versions(p)]
    assert len(written) == 2  # two nodes trained in round 3 and stored it before the stop
    assert all(store.load(p, 2) is not None for p in written)  # their round-2 states are still there

    resume_run(out, quiet=True)
    assert rounds(out) == rounds(tmp_path / "full")
    same_model(tmp_path / "full", out)
    assert not store.root.exists()  # a finished run leaves no store behind


def test_a_resume_with_new_node_ids_follows_the_nodes_by_partition(tmp_path):
    """What a Ray resume meets: no node contexts and new node ids; the store and the
    strategy's per-node records (GWPF's last-synced rounds) meet again by partition id."""
    from simulations.app.checkpoint import load_checkpoint

    out, store, mapping = run_full_and_stopped(tmp_path)
    checkpoint = {**load_checkpoint(out), "nodes": None}  # Ray keeps no node contexts
    old_id = {node: node + 10**9 for node in mapping}  # ...and named the nodes otherwise
    strategy_state = checkpoint["strategy"]
    assert strategy_state["node_round"]  # GWPF knows which nodes synced when
    for name in ("node_partitions", "node_round"):
        strategy_state[name] = {old_id[node]: value for node, value in strategy_state[name].items()}
    plan = compose_run(config(*STOPPED_GWPF), out)
    grid = InlineGrid(build_client_app(store.root), 6)
    plan.strategy.node_partitions.update(mapping)
    execute_plan(plan, grid, quiet=True, resume=checkpoint, state_store=store)
    assert rounds(out) == rounds(tmp_path / "full")  # partial messages went on where they did
    same_model(tmp_path / "full", out)


@pytest.mark.slow
def test_the_disk_store_serves_ray_actors(tmp_path, monkeypatch):
    base = [*GWPF, "num_rounds=3", "backend=ray", "backend.total_cpus=2"]
    run_from_config(config(*base, "client_state=memory"), tmp_path / "memory", quiet=True)
    monkeypatch.setattr(NodeStateStore, "remove", lambda self: None)
    run_from_config(config(*base, "client_state=disk"), tmp_path / "disk", quiet=True)
    # Two Ray runs differ in their random node ids (a few bytes of message metadata) and
    # float rounding (reply order); what the store does shows in everything else.
    memory, disk = rounds(tmp_path / "memory"), rounds(tmp_path / "disk")
    assert len(disk) == len(memory) == 4
    for m, d in zip(memory, disk, strict=True):
        assert m.keys() == d.keys()
        for key in m:
            if "bytes" in key:
                assert d[key] == pytest.approx(m[key], rel=1e-3, abs=64), key
            elif isinstance(m[key], float):
                assert d[key] == pytest.approx(m[key], rel=1e-5), key
            else:
                assert d[key] == m[key], key
    assert any(row["full_messages"] < row["sampled"] for row in disk[2:])  # partial messages...
    assert all(row["dropped"] == 0 for row in disk[1:])  # ...which the actors' stored states completed
    store = NodeStateStore(tmp_path / "disk" / "client_state")
    assert any(store.versions(p) for p in range(6))  # the actors wrote there
