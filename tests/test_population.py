"""Population-independent pieces: the ``sampled`` partition and the engine's pending-node scan."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from clients.data.partition import partition_indices, sampled_indices
from fl_strategies.flwr_compat import pending_destinations


def test_sampled_indices_depend_on_seed_and_partition_only():
    first = sampled_indices(1797, partition_id=7, examples=16, seed=3)
    assert first.shape == (16,) and first.dtype == np.int64
    assert first.min() >= 0 and first.max() < 1797
    np.testing.assert_array_equal(first, sampled_indices(1797, 7, 16, 3))
    assert not np.array_equal(first, sampled_indices(1797, 8, 16, 3))
    assert not np.array_equal(first, sampled_indices(1797, 7, 16, 4))
    # The same client gets the same data whatever the population size.
    parts_10 = partition_indices(np.zeros(1797, dtype=int), "sampled", 10, seed=3)
    parts_20 = partition_indices(np.zeros(1797, dtype=int), "sampled", 20, seed=3)
    np.testing.assert_array_equal(parts_10[7], first)
    np.testing.assert_array_equal(parts_20[7], first)


def test_sampled_indices_draw_with_replacement_and_reject_bad_sizes():
    draws = sampled_indices(3, partition_id=0, examples=50, seed=0)
    assert set(draws.tolist()) == {0, 1, 2}  # 50 draws from 3 samples repeat
    with pytest.raises(ValueError, match="examples_per_partition must be >= 1"):
        sampled_indices(10, 0, 0, 0)


def test_sampled_partition_gives_ten_thousand_clients_data():
    from clients.data import load_partition

    data_cfg = {"name": "digits", "partition": "sampled", "examples_per_partition": 10, "seed": 0}
    train, test = load_partition(data_cfg, 9_999, 10_000)
    assert len(train) == 8 and len(test) == 2


def _message(dst: int, delivered: str = "") -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=dst, delivered_at=delivered))


def test_pending_destinations_scans_messages_not_nodes():
    state = SimpleNamespace(
        lock=threading.RLock(),
        message_ins_store={
            "a": _message(5),
            "b": _message(9),
            "c": _message(7, delivered="2026-01-01T00:00:00"),  # already handed out
            "d": _message(12345),  # not a node of this engine
        },
    )
    nodes = {node_id: node_id for node_id in range(10_000)}
    assert sorted(pending_destinations(state, nodes)) == [5, 9]
    state.message_ins_store.clear()
    assert pending_destinations(state, nodes) == []


def test_pending_destinations_falls_back_to_every_node():
    nodes = {1: 0, 2: 1}
    assert pending_destinations(SimpleNamespace(), nodes) == [1, 2]


def test_partition_sizes_of_sampled_clients_follow_examples_per_partition():
    """The server's num-examples bound is what each sampled client really trains on."""
    from clients.data import load_partition
    from clients.data.federated import partition_train_sizes

    data_cfg = {"name": "digits", "partition": "sampled", "examples_per_partition": 40, "test_fraction": 0.2}
    sizes = partition_train_sizes(data_cfg, 5)
    assert sizes == [len(load_partition(data_cfg, pid, 5)[0]) for pid in range(5)]
    assert sizes == [32] * 5  # 40 drawn, 8 held out
