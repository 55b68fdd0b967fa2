"""APF: AIMD freezing periods on hand-made updates, rollback, real clients end to end."""

from __future__ import annotations

import numpy as np

from clients.methods import model_arrays
from clients.methods.apf import APFClient, rollback_hook
from clients.methods.partial_sync import HELD_KEY
from fl_strategies.apf import APF, aimd_step
from fl_strategies.partial_sync import VALUES_KEY, synced_positions

from .freezing_helpers import check_consistent_view, reply, run_real_clients, tiny_model


def make_strategy(size=2, **kwargs) -> APF:
    strategy = APF(fraction_evaluate=0.0, **kwargs)
    strategy.global_arrays = {"w": np.zeros(size, np.float32)}
    strategy._ensure_state()
    return strategy


def feed_updates(strategy, deltas, start=1):
    """Aggregate rounds whose global update is ``deltas[t]``; return the sync masks used."""
    used = []
    for t, delta in enumerate(deltas, start=start):
        sync = strategy.sync_mask.copy()
        used.append(sync)
        old = strategy.layout.flatten(strategy.global_arrays)
        new = old[sync] + np.asarray(delta, np.float32)[sync]
        strategy.global_arrays = strategy.aggregate_replies(
            t, [reply(1, 5, **{VALUES_KEY: new}), reply(2, 5, **{VALUES_KEY: new})]
        )
    return used


def test_oscillating_parameter_freezes_and_drifting_one_stays_active():
    strategy = make_strategy(size=2, threshold=0.5)
    feed_updates(strategy, [[0.1 * (-1) ** t, 0.1] for t in range(2)])
    assert strategy.sync_mask.tolist() == [False, True]
    assert strategy.period.tolist() == [1, 0]
    # Frozen for one round, then active again to be checked.
    feed_updates(strategy, [[0.0, 0.1]], start=3)
    assert strategy.sync_mask.tolist() == [True, True]
    np.testing.assert_allclose(np.abs(strategy.ema[1]) / strategy.abs_ema[1], 1.0, rtol=1e-5)


def test_ema_tracks_updates_not_values():
    strategy = make_strategy(size=1, alpha=0.5)
    strategy.global_arrays = {"w": np.array([50.0], np.float32)}
    feed_updates(strategy, [[0.2]])
    np.testing.assert_allclose(strategy.ema, [0.1], rtol=1e-4)  # float32 steps near 50


def test_freezing_period_grows_additively_while_stable_and_halves_otherwise():
    assert aimd_step(
        np.array([0, 3, 5, 4]), np.array([True, True, False, False]), np.array([True, True, True, False])
    ).tolist() == [1, 4, 2, 4]
    strategy = make_strategy(size=1, threshold=0.5, tighten_at=1.0)
    used = feed_updates(strategy, [[0.0]] * 9)  # never moves: stable at every check
    pattern = "".join("A" if m[0] else "F" for m in used)
    # Active one round to be checked, then frozen 1, 2, 3 rounds...
    assert pattern == "AFAFFAFFF"
    assert strategy.period.tolist() == [3]
    assert strategy.sync_mask.tolist() == [True]
    # An unstable check halves the period and keeps the scalar active.
    strategy.ema[:] = 1.0
    strategy.abs_ema[:] = 1.0
    feed_updates(strategy, [[0.3]], start=10)
    assert strategy.period.tolist() == [1]
    assert strategy.sync_mask.tolist() == [True]


def test_threshold_halves_every_round_while_frozen_fraction_is_high():
    strategy = make_strategy(size=10, threshold=0.4, tighten_at=0.8)
    feed_updates(strategy, [[0.0] * 10])
    assert strategy.threshold == 0.2


def test_rollback_hook_keeps_frozen_entries_at_their_value():
    import torch

    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight_mask = torch.zeros(6, 4, dtype=torch.bool)
    weight_mask[0] = True
    restore = rollback_hook(model, {"0.weight": weight_mask, "0.bias": torch.zeros(6, dtype=torch.bool)})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    restore(model)
    after = model.state_dict()
    torch.testing.assert_close(after["0.weight"][0], before["0.weight"][0])
    torch.testing.assert_close(after["0.weight"][1:], before["0.weight"][1:] + 1)
    torch.testing.assert_close(after["0.bias"], before["0.bias"] + 1)


def test_real_clients_roll_back_frozen_scalars_and_send_them_neither_way():
    strategy = APF(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3, alpha=0.5, threshold=0.5)
    sizes = []

    def on_receive(strat, job, client):
        check_consistent_view(strat, job, client)
        config = job.content.config_records["config"]
        if not config["sync-full"]:
            from fl_strategies.codec import decode_arrays

            down = decode_arrays(job.content.array_records["arrays"])
            sizes.append(
                (
                    len(down[VALUES_KEY]),
                    int(synced_positions(strat.known_masks).sum()),
                    int(strat.sync_mask.sum()),
                )
            )

    records, grid, _ = run_real_clients(strategy, APFClient, {"name": "apf"}, rounds=5, on_receive=on_receive)
    assert all(r["dropped"] == 0 for r in records[1:])
    assert records[-1]["frozen_fraction"] > 0
    # Down: the values of the positions synced last round only.
    assert sizes and all(sent == synced for sent, synced, _ in sizes)
    assert any(now < strategy.layout.size for _, _, now in sizes)
    # Every node's model equals the global one at the frozen positions (rolled back),
    # and the upload had exactly the active positions.
    frozen = ~strategy.sync_mask
    layout = strategy.layout
    for node_id in grid.node_ids:
        # The node keeps its trained values of the positions it did not upload: those
        # frozen in the last round (round 5's masks: known_masks after aggregation).
        held = grid.contexts[node_id].state.array_records["partial-sync-state"][HELD_KEY].numpy()
        was_frozen = ~synced_positions(strategy.known_masks)
        np.testing.assert_array_equal(held, layout.flatten(strategy.global_arrays)[was_frozen])
    assert frozen.any()
    assert model_arrays(tiny_model()).keys() == strategy.global_arrays.keys()
