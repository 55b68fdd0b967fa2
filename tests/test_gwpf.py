"""GWPF: freeze/thaw decisions on hand-made updates, wire costs, real clients end to end."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict

import clients.methods.gwpf as gwpf_client
import clients.methods.partial_sync as ps_client
import fl_strategies.gwpf as gwpf_module
import fl_strategies.partial_sync as ps_module
from clients.methods.gwpf import GWPFClient, thaw_votes
from fl_strategies.codec import encode_arrays
from fl_strategies.gwpf import GWPF, VOTES_KEY, parse_quorum, quorum_reached, thaw_step
from fl_strategies.partial_sync import (
    VALUES_KEY,
    FlatLayout,
    decode_masks,
    encode_masks,
    freezable_names,
    synced_positions,
)
from fl_strategies.wire import message_bytes

from .freezing_helpers import check_consistent_view, reply, run_real_clients


def make_strategy(size=2, buffers=None, **kwargs) -> GWPF:
    strategy = GWPF(fraction_evaluate=0.0, **kwargs)
    strategy.global_arrays = {"w": np.zeros(size, np.float32), **(buffers or {})}
    strategy._ensure_state()
    return strategy


def votes_reply(strategy, node_id, values, vote_value=False, num_examples=10):
    frozen = int((~strategy.active).sum())  # every frozen scalar votes, thawed ones too
    return reply(
        node_id,
        num_examples,
        **{VALUES_KEY: np.asarray(values, np.float32), VOTES_KEY: np.full(frozen, vote_value, dtype=bool)},
    )


def feed_updates(strategy, deltas):
    """Aggregate rounds whose global update is ``deltas[t]`` (clients agree)."""
    for t, delta in enumerate(deltas, start=1):
        old = strategy.layout.flatten(strategy.global_arrays)
        sync = strategy.sync_mask
        new = old[sync] + np.asarray(delta, np.float32)[sync]
        strategy.global_arrays = strategy.aggregate_replies(
            t, [votes_reply(strategy, 1, new), votes_reply(strategy, 2, new)]
        )


def test_oscillating_parameter_freezes_and_drifting_one_stays_active():
    strategy = make_strategy(size=2)
    feed_updates(strategy, [[0.1 * (-1) ** t, 0.1] for t in range(8)])
    assert strategy.active.tolist() == [False, True]
    assert strategy.freeze_len.tolist() == [1, 0]
    # Frozen for good: later updates (there are none for it) never reactivate it.
    rate = np.abs(strategy.ema) / strategy.abs_ema
    assert rate[1] == pytest.approx(1.0, abs=1e-5)
    assert strategy.sync_mask.tolist() == [False, True]


def test_ema_tracks_updates_not_values():
    # A parameter oscillating around 100: the EMA of its values would be ~100 * (1 - a^t)
    # with a stepping rate of 1 (never frozen: the reference's aliasing defect).
    strategy = make_strategy(size=1, alpha=0.9)
    strategy.global_arrays = {"w": np.array([100.0], np.float32)}
    feed_updates(strategy, [[0.5]])
    np.testing.assert_allclose(strategy.ema, [0.1 * 0.5], rtol=1e-5)
    np.testing.assert_allclose(strategy.abs_ema, [0.1 * 0.5], rtol=1e-5)
    feed_updates(strategy, [[-0.5]])
    np.testing.assert_allclose(strategy.ema, [0.9 * 0.05 - 0.05], rtol=1e-4)
    assert strategy.active.tolist() == [False]  # oscillation detected despite value 100


def test_aggregate_of_synced_set_is_weighted_mean_and_others_keep_global():
    strategy = make_strategy(size=3)
    strategy.global_arrays = {"w": np.array([1.0, 2.0, 3.0], np.float32)}
    strategy.masks = {"active": np.array([True, False, True]), "thawed": np.array([False, False, False])}
    frozen_votes = {VOTES_KEY: np.zeros(1, bool)}
    new = strategy.aggregate_replies(
        1,
        [
            reply(1, 1, **{VALUES_KEY: np.array([10.0, 30.0], np.float32)}, **frozen_votes),
            reply(2, 3, **{VALUES_KEY: np.array([2.0, 6.0], np.float32)}, **frozen_votes),
        ],
    )
    np.testing.assert_allclose(new["w"], [(10 + 3 * 2) / 4, 2.0, (30 + 3 * 6) / 4])


def test_bn_buffers_are_never_frozen_and_always_averaged():
    buffers = {
        "bn.running_mean": np.zeros(2, np.float32),
        "bn.running_var": np.ones(2, np.float32),
        "bn.num_batches_tracked": np.array(4, np.int64),
    }
    strategy = make_strategy(size=2, buffers=buffers)
    assert freezable_names(strategy.global_arrays) == ["w"]
    assert sorted(strategy.buffer_keys) == sorted(buffers)
    assert strategy.expected_reply_arrays(1)["bn.running_mean"] == (2,)
    for t in range(1, 4):
        new = strategy.aggregate_replies(
            t,
            [
                reply(
                    1,
                    1,
                    **{
                        VALUES_KEY: np.zeros(int(strategy.sync_mask.sum()), np.float32),
                        VOTES_KEY: np.zeros(int((~strategy.active).sum()), bool),
                        "bn.running_mean": np.array([1.0, 1.0], np.float32),
                        "bn.running_var": np.array([2.0, 2.0], np.float32),
                        "bn.num_batches_tracked": np.array(6, np.int64),
                    },
                ),
                reply(
                    2,
                    3,
                    **{
                        VALUES_KEY: np.zeros(int(strategy.sync_mask.sum()), np.float32),
                        VOTES_KEY: np.zeros(int((~strategy.active).sum()), bool),
                        "bn.running_mean": np.array([5.0, 5.0], np.float32),
                        "bn.running_var": np.array([4.0, 4.0], np.float32),
                        "bn.num_batches_tracked": np.array(10, np.int64),
                    },
                ),
            ],
        )
        strategy.global_arrays = new
        np.testing.assert_allclose(new["bn.running_mean"], [4.0, 4.0])
        np.testing.assert_allclose(new["bn.running_var"], [3.5, 3.5])
        assert new["bn.num_batches_tracked"] == 9
    # "w" had zero updates: frozen; the buffers still go down in every partial message.
    assert not strategy.active.any()
    strategy.known_masks = {k: v.copy() for k, v in strategy.masks.items()}
    record = strategy._partial_arrays()
    assert {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} <= set(record)


def test_quorum_rules():
    counts = np.array([0, 1, 2, 3])
    assert quorum_reached(counts, 4, "any").tolist() == [False, True, True, True]
    assert quorum_reached(counts, 4, "majority").tolist() == [False, False, False, True]
    assert quorum_reached(counts, 4, 0.5).tolist() == [False, False, True, True]
    assert quorum_reached(np.array([0, 1]), 4, 0.1).tolist() == [False, True]
    assert thaw_step(np.array([0, 3, 3]), np.array([True, False, True])).tolist() == [1, 1, 4]
    assert parse_quorum("any") == "any" and parse_quorum("0.25") == 0.25
    for bad in ("all", 0, 1.5, None):
        with pytest.raises(ValueError, match="thaw_quorum"):
            parse_quorum(bad)


def test_client_votes_on_consistent_local_drift_only():
    n = 3
    ema, abs_ema, obs = (np.zeros(n, np.float32) for _ in range(3))
    frozen = np.array([True, True, False])
    drift = np.array([0.01, 0.01, 0.5], np.float32)
    wobble = np.array([0.01, -0.01, 0.5], np.float32)
    first = thaw_votes(ema, abs_ema, obs, drift, frozen, 0.99, 0.5, min_rounds=2)
    assert first.tolist() == [False, False]  # one round is no evidence (rate is 1 by definition)
    second = thaw_votes(ema, abs_ema, obs, wobble, frozen, 0.99, 0.5, min_rounds=2)
    # scalar 0 kept its direction, scalar 1 reversed it; scalar 2 is active (no vote).
    assert second.tolist() == [True, False]
    assert obs.tolist() == [2, 2, 0]


@pytest.mark.parametrize(("quorum", "thawed"), [("any", True), ("majority", False)])
def test_frozen_parameter_drifting_on_one_client_is_thawed_under_any_not_majority(quorum, thawed):
    strategy = make_strategy(size=2, thaw_quorum=quorum)
    feed_updates(strategy, [[0.1 * (-1) ** t, 0.1] for t in range(3)])
    assert strategy.active.tolist() == [False, True]
    # One of three clients saw consistent local drift of the frozen scalar 0.
    votes = [True, False, False]
    sync = strategy.sync_mask
    old = strategy.layout.flatten(strategy.global_arrays)[sync]
    strategy.global_arrays = strategy.aggregate_replies(
        4, [votes_reply(strategy, i, old + 0.1, vote_value=v) for i, v in enumerate(votes)]
    )
    assert strategy.masks["thawed"].tolist() == [thawed, False]
    assert strategy.sync_mask.tolist() == [thawed, True]
    assert strategy.round_stats[4]["thawed_count"] == int(thawed)
    # Without further votes the thaw length halves back to 0: frozen again.
    sync = strategy.sync_mask
    old = strategy.layout.flatten(strategy.global_arrays)[sync]
    strategy.global_arrays = strategy.aggregate_replies(
        5, [votes_reply(strategy, i, old + 0.1) for i in range(3)]
    )
    assert strategy.sync_mask.tolist() == [False, True]


def test_threshold_halves_every_round_while_frozen_fraction_is_high():
    strategy = make_strategy(size=10, threshold=0.5, tighten_at=0.8)
    zero = [0.0] * 10
    feed_updates(strategy, [zero])  # no update at all: everything is stable
    assert strategy.threshold == 0.25
    feed_updates(strategy, [zero])
    assert strategy.threshold == 0.125


def test_votes_cost_at_most_one_bit_each_on_the_wire():
    rng = np.random.default_rng(0)

    def reply_bytes(votes):
        arrays = {VALUES_KEY: np.ones(100, np.float32), VOTES_KEY: votes}
        message = Message(
            RecordDict({"arrays": encode_arrays(arrays), "metrics": MetricRecord({"num-examples": 1})}),
            dst_node_id=1,
            message_type=MessageType.TRAIN,
        )
        return message_bytes(message)

    base = reply_bytes(np.zeros(0, bool))
    for n in (8_000, 80_000, 800_000):
        extra = reply_bytes(rng.random(n) < 0.5) - base  # random votes: incompressible
        assert n / 8 <= extra <= n / 8 + 64, (n, extra)
        # Unanimous votes cost far less: the position encoder compresses them.
        assert reply_bytes(np.ones(n, bool)) - base < n / 64
    # What the reference's int32 votes would cost instead: 32x more.
    assert reply_bytes(np.ones(80_000, np.int32)) - base >= 4 * 80_000 - 64


def test_gwpf_masks_cost_at_most_about_one_bit_per_scalar():
    n = 80_000
    rng = np.random.default_rng(0)
    prev = {"active": rng.random(n) < 0.5, "thawed": np.zeros(n, bool)}
    active = prev["active"] & (rng.random(n) < 0.5)
    thawed = ~active & (rng.random(n) < 0.3)
    current = {"active": active, "thawed": thawed}
    wire = encode_masks(GWPF.mask_spec, current, prev)
    bits = 8 * sum(v.nbytes for v in wire.values())
    assert bits <= n + (~active).sum() + 16 * 8  # active change over all, thawed over frozen
    decoded = decode_masks(GWPF.mask_spec, wire, n, prev)
    for name in current:
        np.testing.assert_array_equal(decoded[name], current[name])
    # Few changes: a handful of uint32 flip indices instead of bits.
    few = {"active": prev["active"].copy(), "thawed": np.zeros(n, bool)}
    few["active"][np.flatnonzero(few["active"])[:3]] = False
    wire = encode_masks(GWPF.mask_spec, few, prev)
    assert wire["mask-active@flips"].size == 1 + 3 * 4  # form byte, three uint32
    assert wire["mask-thawed@flips"].size == 1  # no flip: the form byte alone
    decoded = decode_masks(GWPF.mask_spec, wire, n, prev)
    np.testing.assert_array_equal(decoded["active"], few["active"])


def _gwpf_like_votes(seed: int) -> list[np.ndarray]:
    """Vote vectors from the real :func:`thaw_votes`, shaped like GWPF's on the digits MLP.

    A (400, 64) weight whose frozen scalars cluster by row (neuron) and whose drift has
    a per-row bias: the votes come out about 75-80 % True with per-row structure (on
    the digits MLP LZMA finds a few per cent below a random mask's entropy there).
    """
    rng = np.random.default_rng(seed)
    rows, cols = 400, 64
    size = rows * cols
    frozen = ((rng.random((rows, 1)) < 0.4) | (rng.random((rows, cols)) < 0.15)).reshape(-1)
    ema_f, abs_ema_f, obs = (np.zeros(size, np.float32) for _ in range(3))
    bias = (rng.standard_normal((rows, 1)) * rng.random((rows, 1)) * 2).astype(np.float32)
    votes = []
    for _ in range(5):
        drift = (bias + rng.standard_normal((rows, cols))).reshape(-1).astype(np.float32)
        votes.append(thaw_votes(ema_f, abs_ema_f, obs, drift, frozen, 0.5, 0.5, 2))
    return votes[2:]  # the first two rounds vote nothing (vote_min_rounds)


def test_votes_use_the_huffman_first_chooser_within_its_bound_of_the_full_search():
    """Vote vectors round-trip and stay within 3 % (in total) of the full form search.

    The bound :func:`fl_strategies.codec._huffman_first_form` states for GWPF's votes:
    at most 3 % more bytes in total than the full search, at most 15 % + 16 bytes on
    any one vector. The client's reply packs its votes with it; the server's mask flips
    keep the full search.
    """
    from types import SimpleNamespace

    from fl_strategies.codec import encode_positions, pack_bits, positions_mask, unpack_bits

    chosen = full = 0
    for seed in range(6):
        for votes in _gwpf_like_votes(seed):
            assert 0.6 < votes.mean() < 0.95  # dense, as GWPF's votes are
            blob = encode_positions(votes, huffman_first=True)
            np.testing.assert_array_equal(positions_mask(blob, votes.size), votes)
            packed = pack_bits(votes, huffman_first=True)
            np.testing.assert_array_equal(unpack_bits(packed), votes)
            np.testing.assert_array_equal(packed[-blob.size + 1 :], blob[1:])  # same payload
            reference = encode_positions(votes)
            assert blob.size <= 1.15 * reference.size + 16, (seed, blob.size, reference.size)
            chosen, full = chosen + blob.size, full + reference.size
    assert chosen <= 1.03 * full, (chosen, full)
    votes = _gwpf_like_votes(0)[0]
    client = SimpleNamespace(upload=lambda job: {VOTES_KEY: votes}, settings={})
    record = ps_client.PartialSyncClient.reply_arrays(client, None, None)  # type: ignore[arg-type]
    np.testing.assert_array_equal(record[VOTES_KEY + "@bits"].numpy(), pack_bits(votes, huffman_first=True))
    flips = ~votes  # any mask: the update is the full search's blob
    wire = encode_masks(GWPF.mask_spec, {"active": ~flips, "thawed": np.zeros(flips.size, bool)})
    np.testing.assert_array_equal(wire["mask-active@flips"], encode_positions(flips))


def test_no_device_is_hard_coded():
    # The reference calls .cuda() unconditionally; here the device comes from the job.
    for module in (gwpf_module, ps_module, gwpf_client, ps_client):
        tree = ast.parse(inspect.getsource(module))
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert "cuda" not in used, module.__name__


def test_real_clients_keep_a_consistent_view_and_upload_only_the_synced_set():
    strategy = GWPF(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3, alpha=0.5, threshold=0.5)
    seen = []

    def on_receive(strat, job, client):
        check_consistent_view(strat, job, client)
        seen.append(bool(job.content.config_records["config"]["sync-full"]))

    records, grid, _ = run_real_clients(
        strategy,
        GWPFClient,
        {"name": "gwpf", "alpha": 0.5, "vote_min_rounds": 2},
        rounds=5,
        on_receive=on_receive,
    )
    assert seen[:3] == [True] * 3 and not any(seen[3:])
    assert all(r["dropped"] == 0 for r in records[1:])
    assert records[-1]["frozen_fraction"] > 0
    # Frozen scalars are not sent: later rounds cost less than the dense equivalent.
    assert records[-1]["bytes_saved"] > 0
    layout = FlatLayout(
        {k: v.shape for k, v in strategy.global_arrays.items() if k in strategy.layout.slices}
    )
    assert layout.size == strategy.layout.size
    # Frozen scalars keep training locally: some node's copy differs from the global one.
    # (The node keeps its trained values of the positions it did not upload last round.)
    held = grid.contexts[grid.node_ids[0]].state.array_records["partial-sync-state"][ps_client.HELD_KEY]
    frozen = ~synced_positions(strategy.known_masks)
    assert frozen.any()
    assert not np.array_equal(held.numpy(), strategy.layout.flatten(strategy.global_arrays)[frozen])


def test_nodes_that_missed_a_round_are_resynced_with_the_full_model():
    import random

    random.seed(3)
    strategy = GWPF(
        fraction_train=0.5, fraction_evaluate=0.0, min_available_nodes=4, min_train_nodes=2, alpha=0.5
    )
    kinds = []

    def on_receive(strat, job, client):
        check_consistent_view(strat, job, client)
        kinds.append(
            (job.server_round, job.context.node_id, bool(job.content.config_records["config"]["sync-full"]))
        )

    records, _, _ = run_real_clients(
        strategy, GWPFClient, {"name": "gwpf", "alpha": 0.5}, num_nodes=4, rounds=6, on_receive=on_receive
    )
    took_part = {}
    for rnd, node, full in kinds:
        assert full == (took_part.get(node) != rnd - 1), (rnd, node, full)
        took_part[node] = rnd
    assert any(full for rnd, _, full in kinds if rnd > 1)
    assert any(not full for _, _, full in kinds)
    assert sum(r["full_messages"] for r in records[1:]) == sum(f for _, _, f in kinds)


def test_real_clients_keep_voting_on_thawed_scalars_so_thaws_lengthen():
    # Every frozen scalar, thawed (uploaded) or not, folds each round's local change into
    # its drift EMAs and votes: a node's EMAs hold one observation per round since the
    # scalar froze, and repeated votes push thaw_len past 1 (the reference's mechanism).
    strategy = GWPF(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3, alpha=0.5, threshold=0.5)
    active_by_round: dict[int, np.ndarray] = {}
    max_thaw_len = [0]
    thawed_rounds = []

    def on_receive(strat, job, client):
        check_consistent_view(strat, job, client)
        active_by_round.setdefault(job.server_round, strat.active.copy())
        frozen_rounds = sum((~active_by_round[r]).astype(int) for r in range(1, job.server_round))
        np.testing.assert_array_equal(client.extra["obs"], np.asarray(frozen_rounds, np.float32))
        max_thaw_len[0] = max(max_thaw_len[0], int(strat.thaw_len.max()))
        thawed_rounds.append(int(strat.masks["thawed"].sum()))

    records, _, _ = run_real_clients(
        strategy,
        GWPFClient,
        {"name": "gwpf", "alpha": 0.5, "vote_min_rounds": 1},
        rounds=6,
        on_receive=on_receive,
    )
    assert all(r["dropped"] == 0 for r in records[1:])
    assert (~active_by_round[6]).any()
    assert max(thawed_rounds) > 0
    assert max_thaw_len[0] >= 2
