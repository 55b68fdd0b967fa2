"""GWPF/APF bookkeeping: the cached dense-equivalent bytes are exact, index paths match masks."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from clients.methods.apf import APFClient
from clients.methods.gwpf import GWPFClient, thaw_votes
from fl_strategies.apf import APF
from fl_strategies.flwr_compat import ARRAY_CHUNK_SIZE
from fl_strategies.gwpf import GWPF
from fl_strategies.partial_sync import ema_update
from fl_strategies.wire import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, RUN_CONFIG_KEY, message_bytes

from .freezing_helpers import run_real_clients


def fresh_dense_bytes(strategy, records, node_id) -> int:
    """What the figure was before caching: serialize the whole-model message now."""
    message = Message(
        content=RecordDict({ARRAYS_KEY: strategy.downlink_record(), **records}),
        message_type=MessageType.TRAIN,
        dst_node_id=node_id,
    )
    return message_bytes(message)


class Checked:
    """Mixin: every dense figure the strategy reports is compared with a fresh measurement."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pairs: list[tuple[int, int]] = []
        self.remeasured: list[bool] = []

    def dense_message_bytes(self, records, node_id):
        before = self._dense_cache
        cached = super().dense_message_bytes(records, node_id)
        self.remeasured.append(self._dense_cache is not before)
        self.pairs.append((cached, fresh_dense_bytes(self, records, node_id)))
        return cached


class CheckedGWPF(Checked, GWPF):
    pass


class CheckedAPF(Checked, APF):
    pass


@pytest.mark.parametrize(
    ("strategy_cls", "client_cls", "name"),
    [(CheckedGWPF, GWPFClient, "gwpf"), (CheckedAPF, APFClient, "apf")],
)
def test_cached_dense_bytes_equal_a_fresh_measurement_every_round(strategy_cls, client_cls, name):
    strategy = strategy_cls(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3, threshold=0.9)
    records, _, _ = run_real_clients(strategy, client_cls, {"name": name}, rounds=4)
    # Down and up every round, each equal to serializing the whole-model message anew.
    assert len(strategy.pairs) == 8
    assert all(cached == fresh for cached, fresh in strategy.pairs), strategy.pairs
    # The model's part is measured again only when its encoded layout changes: round 1's
    # model (zero BatchNorm statistics, sent sparse) differs from the trained ones after.
    assert strategy.remeasured[0] and not any(strategy.remeasured[2:])
    assert all(r["dense_equiv_bytes"] > 0 for r in records if r["round"] >= 1)


def test_cached_dense_bytes_follow_sparse_encoding_and_duplicate_objects():
    """Equal arrays/chunks are sent once and sparse forms change sizes: both are noticed."""
    strategy = CheckedGWPF(fraction_evaluate=0.0)
    rng = np.random.default_rng(0)
    big = ARRAY_CHUNK_SIZE // 4 + 10  # float32 entries: two chunks
    models = [
        # Identical arrays (one object) and identical chunks within an array.
        {"a": np.ones(8, np.float32), "b": np.ones(8, np.float32), "c": np.ones(big, np.float32)},
        # Same keys, shapes and dtypes; every array and chunk now distinct.
        {
            "a": rng.random(8, dtype=np.float32),
            "b": rng.random(8, dtype=np.float32),
            "c": rng.random(big, dtype=np.float32),
        },
        # Mostly zeros: the codec sends 'c' sparse, of another byte length.
        {
            "a": rng.random(8, dtype=np.float32),
            "b": rng.random(8, dtype=np.float32),
            "c": np.zeros(big, np.float32),
        },
    ]
    config = ConfigRecord({"server-round": 3, RUN_CONFIG_KEY: "{}"})
    metrics = MetricRecord({"num-examples": 12, "loss": 0.5})
    for model in models:
        strategy.global_arrays = model
        strategy.dense_message_bytes({CONFIG_KEY: config}, 7)
        strategy.dense_message_bytes({METRICS_KEY: metrics}, 123456789)
    assert all(cached == fresh for cached, fresh in strategy.pairs), strategy.pairs
    assert strategy.remeasured == [True, False] * 3
    # The duplicates really are counted once: the first model's message is smaller.
    assert strategy.pairs[0][0] < strategy.pairs[2][0]


def test_index_paths_do_the_same_float_operations_as_masks():
    rng = np.random.default_rng(1)
    n = 1000
    frozen = rng.random(n) < 0.4
    ema, abs_ema = rng.standard_normal(n).astype(np.float32), rng.random(n).astype(np.float32)
    delta = rng.standard_normal(n).astype(np.float32)
    by_mask = [ema.copy(), abs_ema.copy()]
    for average, value in zip(by_mask, (delta, np.abs(delta)), strict=True):
        np.copyto(average, 0.9 * average + (1.0 - 0.9) * value, where=frozen)
    by_index = [ema.copy(), abs_ema.copy()]
    ema_update(*by_index, delta, 0.9, where=np.flatnonzero(frozen))
    for want, got in zip(by_mask, by_index, strict=True):
        np.testing.assert_array_equal(got, want)
    # The votes are the same whether the frozen set comes as a mask or as positions.
    state = [np.zeros(n, np.float32) for _ in range(3)]
    other = [a.copy() for a in state]
    for _ in range(3):
        d = rng.standard_normal(n).astype(np.float32)
        a = thaw_votes(*state, d, frozen, 0.99, 0.5)
        b = thaw_votes(*other, d, np.flatnonzero(frozen), 0.99, 0.5)
        np.testing.assert_array_equal(a, b)
        assert a.shape == (int(frozen.sum()),)
    for want, got in zip(state, other, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.any(state[2][~frozen])  # active scalars hold no drift


def make_gwpf_client(size: int, masks: dict[str, np.ndarray]) -> GWPFClient:
    from clients.methods.partial_sync import _layout
    from fl_strategies.partial_sync import synced_positions

    client = GWPFClient({"method": {}})
    client.layout = _layout((("w", (size,)),))
    client.masks = masks
    client.sync = synced_positions(masks)
    client.sync_at = np.flatnonzero(client.sync)
    client._frozen_at = None
    return client


@pytest.mark.parametrize("stray", [False, True])
def test_node_state_round_trips_exactly(stray):
    """Saved compactly (unsynced values, packed masks, EMAs at frozen scalars), loaded exactly.

    ``stray``: an EMA entry outside the frozen scalars (never made by GWPF's own updates)
    is kept too: that array is then stored whole.
    """
    from types import SimpleNamespace

    from flwr.app import Context, RecordDict

    rng = np.random.default_rng(2)
    n = 1000
    active = rng.random(n) < 0.6
    thawed = ~active & (rng.random(n) < 0.3)
    masks = {"active": active, "thawed": thawed}
    client = make_gwpf_client(n, masks)
    frozen = ~active
    client.extra = {
        name: np.where(frozen, rng.standard_normal(n), 0.0).astype(np.float32)
        for name in ("ema_f", "abs_ema_f", "obs")
    }
    client.extra["ema_f"][np.flatnonzero(frozen)[0]] = -0.0  # kept as -0.0
    if stray:
        client.extra["obs"][np.flatnonzero(active)[0]] = 3.0
    flat = rng.standard_normal(n).astype(np.float32)
    job = SimpleNamespace(
        context=Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config={}),
        server_round=4,
    )
    client._save_state(job, flat)
    stored = job.context.state.array_records["partial-sync-state"]
    whole = sorted(k for k in stored if k.startswith("extra/"))
    assert whole == (["extra/obs"] if stray else [])
    loaded = make_gwpf_client(n, masks)
    held, got_masks, extra = loaded._load_state(job, 4)
    for name in masks:
        np.testing.assert_array_equal(got_masks[name], masks[name])
    unsynced = ~(active | thawed)
    np.testing.assert_array_equal(held[unsynced], flat[unsynced])
    assert not held[~unsynced].any()  # the next partial message fills these in
    for name, value in client.extra.items():
        np.testing.assert_array_equal(extra[name].view(np.uint32), value.view(np.uint32), err_msg=name)
