"""GWPF's decisions against a port of the reference's per-sync decision loop.

The port follows Dora233/GWPF ``sync_manager.py`` (``GWPF_Interlayer``), decisions only:
``generate_tensor_list_to_transmit`` (all-reduced thaw signals of the frozen scalars,
``freezing_lengths2`` = thaw_len, the transmitted set ``active | thaw_len > 0``) and
``restore_model_from_tensor_list_received`` (EMAs of the previously active scalars,
``freezing_lengths`` = freeze_len, tightening). Two things differ on purpose: the EMA is
fed the aggregated update (the reference's aliasing makes it track values: a defect,
see ``docs/gwpf.md``), and the updates used here never make ``abs_ema`` zero (the
reference divides without an epsilon).

Mapping: the reference's sync ``s`` is fedlean's round ``s``; the votes the reference
all-reduces at sync ``s`` are the ones in fedlean's round-``s`` replies. The reference
syncs the thawed scalars in the exchange that carries their votes; a Flower round has
one reply per client, so fedlean syncs them in round ``s + 1``. Everything else is the
same sequence.
"""

from __future__ import annotations

import numpy as np
import pytest

from fl_strategies.gwpf import GWPF, VOTES_KEY
from fl_strategies.partial_sync import VALUES_KEY

from .freezing_helpers import reply


def reference_state(size: int, threshold: float) -> dict:
    """``GWPF_Interlayer.__init__``: everything active, counters and EMAs at zero."""
    return {
        "freeze_len": np.zeros(size, np.int32),  # freezing_lengths
        "thaw_len": np.zeros(size, np.int32),  # freezing_lengths2
        "ema": np.zeros(size, np.float64),  # grad_ema
        "abs_ema": np.zeros(size, np.float64),  # abs_grad_ema
        "threshold": float(threshold),  # stable_threshold
    }


def reference_sync(
    state: dict, signals: np.ndarray, delta: np.ndarray, alpha: float, tighten_at: float = 0.8
) -> np.ndarray:
    """One sync of the reference; returns the transmitted (synced) set.

    ``signals`` is (workers, size): each worker's thaw signal for every scalar (only the
    frozen ones are read, as the reference computes them over ``freeze_index``).
    """
    frozen = state["freeze_len"] > 0  # freeze_mask / freeze_index, set at the last restore
    active = ~frozen  # active_mask / active_index, set at the last restore
    transmit = active.copy()
    if frozen.any():
        signal = signals[:, frozen].astype(np.int64).sum(axis=0)  # dist.all_reduce(SUM)
        thaw_len = state["thaw_len"]
        thaw_len[frozen] = np.where(signal > 0, thaw_len[frozen] + 1, thaw_len[frozen] // 2)
        transmit |= thaw_len > 0  # active_mask + (freezing_lengths2 > 0)
    # restore_model_from_tensor_list_received, over the previous active_index
    ema, abs_ema = state["ema"], state["abs_ema"]
    ema[active] = ema[active] * alpha + delta[active] * (1.0 - alpha)
    abs_ema[active] = abs_ema[active] * alpha + np.abs(delta[active]) * (1.0 - alpha)
    rate = np.abs(ema[active]) / abs_ema[active]
    state["freeze_len"][active] = np.where(
        rate < state["threshold"], state["freeze_len"][active] + 1, state["freeze_len"][active]
    )
    freezing_ratio = 1.0 - float((state["freeze_len"] == 0).mean())
    if freezing_ratio > tighten_at:
        state["threshold"] /= 2.0
    return transmit


def fedlean_round(strategy: GWPF, server_round: int, signals: np.ndarray, delta: np.ndarray) -> None:
    """One fedlean round with hand-made replies: the synced set moves by ``delta``.

    Every worker uploads the same values (so the aggregated update is ``delta`` on the
    synced set) and its votes over the frozen scalars, as a GWPF client does.
    """
    old = strategy.layout.flatten(strategy.global_arrays)
    sync = strategy.sync_mask
    frozen = ~strategy.active
    new = (old[sync] + delta[sync]).astype(np.float32)
    replies = [
        reply(node, 10, **{VALUES_KEY: new, VOTES_KEY: signals[node, frozen].astype(bool)})
        for node in range(signals.shape[0])
    ]
    strategy.global_arrays = strategy.aggregate_replies(server_round, replies)


def make_strategy(size: int, alpha: float, threshold: float) -> GWPF:
    strategy = GWPF(fraction_evaluate=0.0, alpha=alpha, threshold=threshold)
    strategy.global_arrays = {"w": np.zeros(size, np.float32)}
    strategy._ensure_state()
    return strategy


def oscillating_updates(rounds: int, size: int, freeze_round: np.ndarray, rng) -> np.ndarray:
    """Updates that drift consistently until ``freeze_round[i]``, then flip sign each round.

    At ``alpha = 0.5``, ``threshold = 0.5`` a scalar freezes a round or two after it starts
    oscillating; magnitudes vary so that no rate sits on the threshold.
    """
    deltas = np.empty((rounds, size))
    for t in range(rounds):
        sign = np.where(t + 1 < freeze_round, 1.0, (-1.0) ** t)
        deltas[t] = sign * rng.uniform(0.05, 0.15, size)
    return deltas


def run_both(signals: np.ndarray, deltas: np.ndarray, alpha=0.5, threshold=0.5):
    """Drive the reference port and the strategy with the same votes and updates."""
    rounds, size = deltas.shape
    ref = reference_state(size, threshold)
    strategy = make_strategy(size, alpha, threshold)
    trace = []
    for t in range(rounds):
        frozen_before = ref["freeze_len"] > 0
        transmitted = reference_sync(ref, signals[t], deltas[t], alpha)
        fedlean_round(strategy, t + 1, signals[t], deltas[t].astype(np.float32))
        trace.append(
            {
                "ref_thaw_len": ref["thaw_len"].copy(),
                "ref_freeze_len": ref["freeze_len"].copy(),
                "ref_threshold": ref["threshold"],
                "ref_transmitted": transmitted,
                "ref_thawed": transmitted & frozen_before,
                "thaw_len": strategy.thaw_len.copy(),
                "freeze_len": strategy.freeze_len.copy(),
                "threshold": strategy.threshold,
                # What fedlean's clients upload in the next round.
                "next_sync": strategy.sync_mask.copy(),
                "next_active": strategy.active.copy(),
            }
        )
    return trace


def assert_same_decisions(trace) -> None:
    for t, step in enumerate(trace, start=1):
        np.testing.assert_array_equal(step["thaw_len"], step["ref_thaw_len"], err_msg=f"thaw_len, sync {t}")
        np.testing.assert_array_equal(step["freeze_len"], step["ref_freeze_len"], err_msg=f"freeze, sync {t}")
        assert step["threshold"] == step["ref_threshold"], t
        # The thawed scalars the reference syncs at sync t are synced by fedlean in round t + 1.
        np.testing.assert_array_equal(
            step["next_sync"] & ~step["next_active"], step["ref_thawed"], err_msg=f"thawed set, sync {t}"
        )


def test_thaw_len_trajectories_match_the_reference_on_hand_made_vote_sequences():
    rounds, workers = 14, 3
    # Scalar 0 stays active; the others freeze at round 2 or 3 and then see these votes
    # (one row per round, one character per worker):
    patterns = {
        1: ["111"] * rounds,  # voted for at every opportunity, by everyone
        2: ["100"] * rounds,  # ... by one worker only (quorum "any" is enough)
        3: ["000"] * rounds,  # never voted for
        4: ["010", "000"] * (rounds // 2),  # every other round
        5: ["001"] * 6 + ["000"] * (rounds - 6),  # a burst, then silence: halving back to 0
        6: ["110", "110", "000", "000", "000", "011", "000"] * 2,
    }
    size = 1 + len(patterns) + 5  # + 5 scalars with random votes
    rng = np.random.default_rng(0)
    signals = rng.random((rounds, workers, size)) < 0.3
    for i, rows in patterns.items():
        for t, row in enumerate(rows):
            signals[t, :, i] = [c == "1" for c in row]
    freeze_round = np.array([10**6] + [2, 3, 2, 3, 2, 3] + [2, 3, 3, 2, 2])
    deltas = oscillating_updates(rounds, size, freeze_round, rng)
    trace = run_both(signals, deltas)
    assert_same_decisions(trace)

    thaw_len = np.array([s["thaw_len"] for s in trace])
    # The repeated-vote mechanism at work: thaw lengths accumulate past 1 ...
    assert thaw_len[:, 1].max() >= 10 and thaw_len[:, 2].max() >= 10
    assert thaw_len[:, 3].max() == 0
    # ... and halve back once the votes stop (scalar 5: votes in rounds 1-6 only).
    assert thaw_len[-1, 5] == 0 and thaw_len[:, 5].max() >= 3


def test_scalar_voted_for_at_every_opportunity_is_synced_every_round():
    rounds, size = 12, 3
    rng = np.random.default_rng(1)
    freeze_round = np.array([2, 2, 10**6])
    deltas = oscillating_updates(rounds, size, freeze_round, rng)
    signals = np.zeros((rounds, 2, size), bool)
    signals[:, 0, 0] = True  # one worker votes for scalar 0 at every sync
    trace = run_both(signals, deltas)
    assert_same_decisions(trace)
    frozen_at = next(t for t, s in enumerate(trace, start=1) if s["freeze_len"][0] > 0)
    votes_after = len(trace) - frozen_at  # syncs at which scalar 0 was frozen and voted for
    assert votes_after >= 8
    # Reference: transmitted at every sync from its first vote on.
    ref_synced = [s["ref_transmitted"][0] for s in trace[frozen_at:]]
    assert all(ref_synced)
    # fedlean: the vote of round t thaws it for round t + 1, and it keeps voting while
    # thawed, so it is uploaded in every round after its first vote; thaw_len 1, 2, 3, ...
    assert [bool(s["next_sync"][0]) for s in trace[frozen_at:]] == [True] * votes_after
    assert [int(s["thaw_len"][0]) for s in trace[frozen_at:]] == list(range(1, votes_after + 1))
    # Scalar 1 froze at the same time and got no votes: never synced again.
    assert not any(s["next_sync"][1] for s in trace[frozen_at - 1 :])


@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_tightening_matches_the_reference(threshold):
    # Almost everything oscillates from the start: the frozen fraction passes 0.8 and
    # the threshold halves at every sync, in both.
    rounds, size = 8, 10
    rng = np.random.default_rng(2)
    freeze_round = np.array([1] * 9 + [10**6])
    deltas = oscillating_updates(rounds, size, freeze_round, rng)
    signals = rng.random((rounds, 2, size)) < 0.5
    trace = run_both(signals, deltas, threshold=threshold)
    assert_same_decisions(trace)
    assert trace[-1]["threshold"] < threshold / 8
