"""PruneFL: initial mask from one client, readjustment every ``readjust_every`` rounds, fixed density."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict

from fl_strategies.base import numpy_to_arrayrecord
from fl_strategies.codec import decode_arrays, encode_arrays
from fl_strategies.prunefl import PruneFL
from fl_strategies.pruning import full_mask, prune_by_score, target_count
from simulations.runtimes.inline import InlineGrid

from .pruning_helpers import digits_run, known_receive, known_reply


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


RNG = np.random.default_rng(0)
GLOBAL = {
    "l1.weight": RNG.normal(size=(20, 15)).astype(np.float32),
    "l1.bias": RNG.normal(size=20).astype(np.float32),
    "l2.weight": RNG.normal(size=(5, 20)).astype(np.float32),
}
PRUNABLE = ("l1.weight", "l2.weight")
TOTAL = 20 * 15 + 5 * 20
SHAPES = {k: v.shape for k, v in GLOBAL.items()}


def test_mask_is_readjusted_exactly_every_k_rounds_from_summed_squared_gradients():
    s_f, every, rounds = 0.6, 3, 7
    sent = {}  # (round, partition) -> sqgrad the client sent
    seen_masks = {}  # round -> explicit mask each client read

    def client_app(message, context):
        config = message.content.config_records["config"]
        index = context.node_config["partition-id"]
        rng = np.random.default_rng(1000 * int(config["server-round"]) + index)
        if "prune-score" in config:
            arrays = decode_arrays(message.content.array_records["arrays"])
            scores = {k: rng.uniform(size=arrays[k].shape).astype(np.float32) for k in PRUNABLE}
            return Message(
                RecordDict({"scores": encode_arrays(scores), "metrics": MetricRecord({"num-examples": 5})}),
                reply_to=message,
            )
        values, keep = known_receive(message, context, PRUNABLE, SHAPES)
        seen_masks.setdefault(int(config["server-round"]), []).append(keep)
        sqgrad = {k: rng.exponential(size=values[k].shape).astype(np.float32) for k in PRUNABLE}
        sent[(int(config["server-round"]), index)] = sqgrad
        trained = {k: (v + 0.1).astype(v.dtype) for k, v in values.items()}
        return known_reply(
            message, trained, keep, 10, extra={"sqgrad": encode_arrays(sqgrad, encoding="dense")}
        )

    strategy = PruneFL(
        num_rounds=rounds,
        readjust_every=every,
        s_f=s_f,
        seed=0,
        min_available_nodes=2,
        min_train_nodes=2,
        fraction_evaluate=0.0,
    )
    masks, records = {}, []

    def on_round_end(record):
        records.append(record)
        masks[record["round"]] = {k: v.copy() for k, v in strategy.keep.items()}

    strategy.start(
        InlineGrid(client_app, 2), numpy_to_arrayrecord(GLOBAL), num_rounds=rounds, on_round_end=on_round_end
    )
    kept = TOTAL - target_count(TOTAL, s_f)
    for t in range(0, rounds + 1):
        # Density stays as configured, every round, round 0's initial mask included.
        assert sum(int(m.sum()) for m in masks[t].values()) == kept
    for t in range(1, rounds + 1):
        changed = any((masks[t][k] != masks[t - 1][k]).any() for k in PRUNABLE)
        assert changed == (t % every == 0), t
        assert records[t]["readjusted"] == int(t % every == 0)
        # Every client holds the server's current mask (regrown positions included).
        for keep in seen_masks[t]:
            for k in PRUNABLE:
                np.testing.assert_array_equal(keep[k], masks[t - 1][k])
    assert strategy.readjusted == [3, 6]
    # The readjusted mask keeps the largest sums of the squared gradients since the last one.
    for t in (3, 6):
        summed = {
            k: sum(sent[(r, i)][k].astype(np.float64) for r in range(t - every + 1, t + 1) for i in (0, 1))
            for k in PRUNABLE
        }
        expected = prune_by_score(summed, full_mask(GLOBAL, list(PRUNABLE)), s_f)
        for k in PRUNABLE:
            np.testing.assert_array_equal(masks[t][k], expected[k])
        assert records[t]["regrown"] > 0  # pruned positions came back


def test_reply_without_squared_gradients_is_dropped():
    def client_app(message, context):
        config = message.content.config_records["config"]
        if "prune-score" in config:
            arrays = decode_arrays(message.content.array_records["arrays"])
            scores = {k: np.abs(arrays[k]) for k in PRUNABLE}
            return Message(
                RecordDict({"scores": encode_arrays(scores), "metrics": MetricRecord({"num-examples": 5})}),
                reply_to=message,
            )
        values, keep = known_receive(message, context, PRUNABLE, SHAPES)
        return known_reply(message, values, keep, 10)

    strategy = PruneFL(
        num_rounds=1,
        readjust_every=1,
        s_f=0.5,
        min_available_nodes=1,
        min_train_nodes=1,
        fraction_evaluate=0.0,
    )
    records = []
    strategy.start(
        InlineGrid(client_app, 1),
        numpy_to_arrayrecord(GLOBAL),
        num_rounds=1,
        on_round_end=records.append,
        on_too_few_replies="skip",  # the only reply is dropped: keep the round's record
    )
    assert records[1]["dropped"] == 1 and "sqgrad" in strategy.dropped[1][0]


def test_five_round_digits_run_end_to_end(tmp_path: Path):
    summary, rounds, final = digits_run(
        tmp_path,
        "prunefl",
        ["num_rounds=5", "method.readjust_every=2", "method.s_f=0.5", "method.score_batches=2"],
    )
    assert summary["method"] == "prunefl" and summary["readjusted_rounds"] == [2, 4]
    assert [rounds[t]["readjusted"] for t in range(1, 6)] == [0, 1, 0, 1, 0]
    assert all(rounds[t]["sparsity"] == pytest.approx(0.5, abs=1e-4) for t in range(1, 6))
    assert summary["final_sparsity"] == pytest.approx(0.5, abs=1e-4)
    # Real clients' dense squared gradients give pruned positions an importance: some regrow.
    assert rounds[2]["regrown"] > 0 and rounds[1]["sqgrad_bytes"] > 0
    assert rounds[5]["central_accuracy"] > 0.5  # digits MLP at half density still learns
    # The readjusted mask goes down once (rounds 3 and 5), not with every message.
    assert [rounds[t]["mask_bytes"] > 0 for t in range(1, 6)] == [True, False, True, False, True]
    weights = [k for k in final.files if k.endswith("weight")]
    assert sum(int((final[k] == 0).sum()) for k in weights) >= 0.5 * sum(final[k].size for k in weights) - 1


def test_client_sums_dense_squared_gradients_pruned_positions_included():
    from types import SimpleNamespace

    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from clients.methods.prunefl import PruneFLClient
    from clients.train import make_optimizer, train_loop

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    names = ["0.weight", "2.weight"]
    client = PruneFLClient({})
    client.names = names
    client.keep = {
        n: (np.arange(p.numel()) % 2 == 0).reshape(p.shape) for n, p in model.named_parameters() if n in names
    }
    for name, p in model.named_parameters():
        if name in names:
            p.data.mul_(torch.from_numpy(client.keep[name]).float())
    data = TensorDataset(torch.randn(12, 6), torch.randint(0, 3, (12,)))
    batches = list(DataLoader(data, batch_size=4))
    params = dict(model.named_parameters())
    expected = {n: torch.zeros_like(params[n]) for n in names}
    for x, y in batches:  # lr = 0: every step sees the same weights
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), [params[n] for n in names])
        for n, g in zip(names, grads, strict=True):
            expected[n] += g.square()
    job = SimpleNamespace(model=model, config={"send-sqgrad": True}, device=torch.device("cpu"))
    hooks = client.train_hooks(job)
    train_loop(
        model,
        DataLoader(data, batch_size=4),
        make_optimizer(model.parameters(), "sgd", lr=0.0),
        1,
        torch.device("cpu"),
        hooks,
    )
    for n in names:
        torch.testing.assert_close(client.sqgrad[n], expected[n])
        assert (client.sqgrad[n][torch.from_numpy(~client.keep[n])] > 0).all()  # what lets them regrow
