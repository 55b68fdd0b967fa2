"""FedSparsify strategies and baselines with hand-made clients; masked training; one real run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, Message, MetricRecord, RecordDict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.methods.fedsparsify import grasp_scores, snip_scores
from clients.train import TrainHooks, make_optimizer, train_loop
from fl_strategies.base import numpy_to_arrayrecord
from fl_strategies.codec import (
    VALUES_XOR_MIXED_PLANES,
    VALUES_XOR_ZLIB_PLANES,
    decode_arrays,
    encode_arrays,
    encode_known_values,
)
from fl_strategies.fedsparsify import FedSparsifyGlobal
from fl_strategies.fedsparsify_local import FedSparsifyLocal
from fl_strategies.oneshot import OneShot
from fl_strategies.prune_at_init import Snip
from fl_strategies.pruning import (
    full_mask,
    gather_known,
    known_names,
    magnitude_prune,
    majority_vote,
    mask_from_zeros,
    sparsity_at,
    target_count,
)
from fl_strategies.random_prune import RandomPrune
from simulations import CONF_DIR
from simulations.runtimes.inline import InlineGrid

from .pruning_helpers import digits_run, known_receive, known_reply

#: The XOR-coded known-value forms (all planes deflated, or noise planes raw).
XOR_FORMS = (VALUES_XOR_ZLIB_PLANES, VALUES_XOR_MIXED_PLANES)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models: one thread is faster, and much faster on a busy shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


RNG = np.random.default_rng(0)
GLOBAL = {
    "l1.weight": RNG.normal(size=(40, 30)).astype(np.float32),
    "l1.bias": RNG.normal(size=40).astype(np.float32),
    "l2.weight": RNG.normal(size=(10, 40)).astype(np.float32),
    "l2.bias": np.zeros(10, np.float32),
}
PRUNABLE = 40 * 30 + 10 * 40
PRUNABLE_NAMES = ("l1.weight", "l2.weight")
SHAPES = {k: v.shape for k, v in GLOBAL.items()}


def _receive(message, context):
    return known_receive(message, context, PRUNABLE_NAMES, SHAPES)


def _echo(message, context):
    """A client that sends back what it received, at the mask's positions."""
    arrays, keep = _receive(message, context)
    return known_reply(message, arrays, keep, 10)


def _run(strategy, client_app, num_nodes, rounds):
    records = []
    result = strategy.start(
        InlineGrid(client_app, num_nodes),
        numpy_to_arrayrecord(GLOBAL),
        num_rounds=rounds,
        on_round_end=records.append,
    )
    return result, records


# ------------------------------------------------------------------ Global
def test_global_follows_schedule_and_pruned_weights_never_regrow():
    seen_flags, snapshots = [], []

    def client_app(message, context):
        config = message.content.config_records["config"]
        seen_flags.append(bool(config["mask-from-zeros"]))
        arrays, keep = _receive(message, context)
        index = context.node_config["partition-id"]
        # Nonzero everywhere, pruned positions included: the wire carries the kept ones only.
        arrays = {k: (v + 0.1).astype(v.dtype) for k, v in arrays.items()}
        return known_reply(message, arrays, keep, 10 * (index + 1))

    strategy = FedSparsifyGlobal(
        num_rounds=5, s_f=0.8, min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0
    )
    original = strategy.aggregate_replies

    def spy(server_round, replies):
        out = original(server_round, replies)
        snapshots.append({k: out[k] != 0 for k in ("l1.weight", "l2.weight")})
        return out

    strategy.aggregate_replies = spy
    result, records = _run(strategy, client_app, 3, 5)
    for t in range(1, 6):
        expected = target_count(PRUNABLE, sparsity_at(t, 0.0, 0.8, 1, 5, 1, 3))
        assert records[t]["sparsity"] == pytest.approx(expected / PRUNABLE)
        assert records[t]["target_sparsity"] == pytest.approx(sparsity_at(t, 0.0, 0.8, 1, 5))
    assert records[5]["sparsity"] == pytest.approx(0.8, abs=1 / PRUNABLE)
    for before, after in zip(snapshots, snapshots[1:], strict=False):
        for name in before:
            assert not (after[name] & ~before[name]).any()  # nothing revived
    # s_1 = 0: the model sent in rounds 1 and 2 is unpruned, from round 3 on it is masked.
    assert seen_flags[:6] == [False] * 6 and all(seen_flags[6:])
    final = {k: v.numpy() for k, v in result.arrays.items()}
    assert np.count_nonzero(final["l1.bias"]) == 40  # biases are not pruned
    assert records[5]["nonzero_params"] == PRUNABLE - round(0.8 * PRUNABLE) + 50
    # Measured bytes fall as the model sparsifies, both ways: 20% density plus biases and
    # Flower's overhead (most of a message this small), no position set at all.
    assert records[5]["bytes_down"] < 0.5 * records[1]["bytes_down"]
    assert records[5]["bytes_up"] < 0.5 * records[1]["bytes_up"]
    summary = strategy.summary_fields()
    assert summary["final_sparsity"] == pytest.approx(0.8, abs=1 / PRUNABLE)
    # 20% density: bitmask + values ~ 0.23 of dense, plus ~450 B overhead per array.
    assert summary["final_model_sparse_mb"] < 0.5 * summary["final_model_dense_mb"]


def test_xor_replies_decode_against_each_rounds_model():
    """XOR-coded replies decode exactly every round (the server's reference follows the model)."""
    sent: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def client_app(message, context):
        arrays, keep = _receive(message, context)
        index = context.node_config["partition-id"]
        # A small per-node step: the XOR form wins, and a stale reference would decode wrong.
        trained = {k: (v + 1e-3 * (index + 1)).astype(v.dtype) * (v != 0) for k, v in arrays.items()}
        trained = {k: np.where(keep[k], v, 0).astype(v.dtype) if k in keep else v for k, v in trained.items()}
        reply = known_reply(message, trained, keep, 10)
        names = known_names(trained)
        values = gather_known(trained, keep, names)
        reply.content.array_records["arrays"]["known-values"] = Array(
            encode_known_values(values, reference=gather_known(arrays, keep, names))
        )
        assert reply.content.array_records["arrays"]["known-values"].numpy()[0] in XOR_FORMS
        sent[(int(message.content.config_records["config"]["server-round"]), index)] = trained
        return reply

    strategy = FedSparsifyGlobal(
        num_rounds=4, s_f=0.7, min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0
    )
    received: list[list[dict[str, np.ndarray]]] = []
    original = strategy.aggregate_replies

    def spy(server_round, replies):
        received.append([r.arrays for r in replies])
        return original(server_round, replies)

    strategy.aggregate_replies = spy
    _run(strategy, client_app, 2, 4)
    assert len(received) == 4
    for server_round, replies in enumerate(received, start=1):
        expected = [sent[(server_round, i)] for i in range(2)]
        for arrays in replies:
            assert any(all(np.array_equal(arrays[k], e[k]) for k in e) for e in expected)


def test_oneshot_prunes_once_at_t_minus_ft_rounds():
    client_app = _echo
    strategy = OneShot(
        num_rounds=6, ft_rounds=2, s_f=0.9, min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0
    )
    _, records = _run(strategy, client_app, 2, 6)
    assert [records[t]["sparsity"] for t in range(1, 4)] == [0.0] * 3
    assert all(records[t]["sparsity"] == pytest.approx(0.9, abs=1e-3) for t in (4, 5, 6))
    with pytest.raises(ValueError, match="ft_rounds"):
        OneShot(num_rounds=5, ft_rounds=5)


def test_random_prune_is_not_magnitude_and_hits_the_count():
    client_app = _echo
    strategy = RandomPrune(
        num_rounds=2, s_f=0.5, seed=3, min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0
    )
    result, records = _run(strategy, client_app, 1, 2)
    assert records[2]["sparsity"] == pytest.approx(0.5)
    magnitude = magnitude_prune(GLOBAL, full_mask(GLOBAL, ["l1.weight", "l2.weight"]), 0.5)
    assert any((strategy.keep[n] != magnitude[n]).any() for n in magnitude)


# ------------------------------------------------------------------- Local
def test_local_majority_vote_with_one_mask_per_reply():
    n_clients = 3

    def client_app(message, context):
        index = context.node_config["partition-id"]
        config = message.content.config_records["config"]
        target = config["local-sparsity"]
        arrays, global_keep = _receive(message, context)
        arrays = {k: (v + 0.01 * (index + 1)).astype(v.dtype) if v.any() else v for k, v in arrays.items()}
        rng = np.random.default_rng(index)
        noisy = {k: arrays[k] * rng.uniform(0.5, 1.5, arrays[k].shape) for k in global_keep}
        keep = magnitude_prune(noisy, global_keep, target)
        return known_reply(message, arrays, global_keep, 10 * (index + 1), local_keep=keep)

    strategy = FedSparsifyLocal(
        num_rounds=4,
        s_f=0.75,
        mv_average="nnz",
        min_available_nodes=n_clients,
        min_train_nodes=n_clients,
        fraction_evaluate=0.0,
    )
    captured = {}
    original = strategy.aggregate_replies

    def spy(server_round, replies):
        old_keep = dict(strategy.keep)
        out = original(server_round, replies)
        captured[server_round] = (replies, old_keep, dict(strategy.keep), out)
        return out

    strategy.aggregate_replies = spy
    grid = InlineGrid(client_app, n_clients)
    records = []
    strategy.start(grid, numpy_to_arrayrecord(GLOBAL), num_rounds=4, on_round_end=records.append)
    for t in (2, 3, 4):
        replies, old_keep, new_keep, out = captured[t]
        assert len(replies) == n_clients
        masks = [r.mask for r in replies]
        merged, keep = majority_vote(
            [r.arrays for r in replies], masks, [r.num_examples for r in replies], "nnz"
        )
        for reply in replies:
            # Identify the client by its node, not by reply order: its own local mask.
            index = grid.contexts[reply.node_id].node_config["partition-id"]
            assert reply.num_examples == 10 * (index + 1)
            for name in PRUNABLE_NAMES:
                assert not (reply.mask[name] & ~old_keep[name]).any()  # within the global mask
                assert not reply.arrays[name][~reply.mask[name]].any()
        for name in PRUNABLE_NAMES:
            np.testing.assert_array_equal(new_keep[name], keep[name] & old_keep[name])
            np.testing.assert_allclose(out[name], merged[name] * new_keep[name])
    # One mask per reply, within the global mask's kept positions: under one bit each,
    # plus Flower's per-array overhead.
    assert 0 < records[2]["mask_bytes"] < n_clients * (PRUNABLE / 8 + 600)
    assert records[4]["sparsity"] > 0.6


def test_local_reply_without_or_outside_its_mask_is_dropped():
    def client_app(message, context):
        arrays, keep = _receive(message, context)
        index = context.node_config["partition-id"]
        if index == 0:
            return known_reply(message, arrays, keep, 10)  # no local mask
        reply = known_reply(message, arrays, keep, 10, local_keep=keep)
        if index == 1:
            # A position set claiming more positions than the global mask keeps.
            big = np.ones(PRUNABLE + 64, dtype=bool)
            from fl_strategies.codec import encode_positions

            reply.content["arrays"]["local-mask@positions"] = Array(encode_positions(big))
        return reply

    strategy = FedSparsifyLocal(num_rounds=1, min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0)
    _, records = _run(strategy, client_app, 3, 1)
    assert records[1]["dropped"] == 2
    reasons = " ".join(strategy.dropped[1])
    assert "'local-mask@positions' missing" in reasons and "'local-mask@positions':" in reasons


# ----------------------------------------------------------------- SNIP
def test_snip_round_zero_asks_one_client_and_fixes_the_mask():
    requests = []

    def client_app(message, context):
        config = message.content.config_records["config"]
        arrays = decode_arrays(message.content.array_records["arrays"])
        if "prune-score" in config:
            requests.append((context.node_config["partition-id"], config["prune-score"]))
            scores = {
                k: np.arange(arrays[k].size, dtype=np.float32).reshape(arrays[k].shape)
                for k in ("l1.weight", "l2.weight")
            }
            return Message(
                RecordDict({"scores": encode_arrays(scores), "metrics": MetricRecord({"num-examples": 5})}),
                reply_to=message,
            )
        assert config["mask-from-zeros"]
        return _echo(message, context)

    strategy = Snip(
        num_rounds=3, s_f=0.5, seed=1, min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0
    )
    _, records = _run(strategy, client_app, 3, 3)
    assert len(requests) == 1 and requests[0][1] == "snip"
    assert records[0]["bytes_down"] > 4 * PRUNABLE and records[0]["bytes_up"] > 4 * PRUNABLE
    assert records[3]["cum_bytes_up"] == sum(records[t]["bytes_up"] for t in range(4))
    # Pooled over both tensors, the 800 lowest scores are 0..399 in each of them.
    np.testing.assert_array_equal(strategy.keep["l1.weight"].reshape(-1), np.arange(1200) >= 400)
    assert not strategy.keep["l2.weight"].any()
    assert all(records[t]["sparsity"] == 0.5 for t in (1, 2, 3))


def test_snip_and_grasp_scores_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    batches = [(torch.randn(6, 5), torch.randint(0, 3, (6,))) for _ in range(2)]
    names = ["0.weight", "2.weight"]
    params = dict(model.named_parameters())

    def loss_fn(temperature=1.0):
        return sum(nn.functional.cross_entropy(model(x) / temperature, y) for x, y in batches)

    grads = torch.autograd.grad(loss_fn(), [params[n] for n in names])
    snip = snip_scores(model, batches, names, torch.device("cpu"))
    for name, g in zip(names, grads, strict=True):
        torch.testing.assert_close(snip[name], (g * params[name]).abs().detach())

    # GraSP: w * (H g) with H, g of the temperature-scaled loss, via autograd's hvp.
    temperature = 3.0
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    shapes = [params[n].shape for n in names]

    def loss_of(vector):
        chunks = torch.split(vector, [int(np.prod(s)) for s in shapes])
        originals = {n: params[n].data.clone() for n in names}
        weights = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        out = sum(
            nn.functional.cross_entropy(
                torch.func.functional_call(model, {**dict(model.named_parameters()), **weights}, (x,))
                / temperature,
                y,
            )
            for x, y in batches
        )
        for n in names:
            params[n].data = originals[n]
        return out

    vec = flat.clone().requires_grad_(True)
    g = torch.autograd.grad(loss_of(vec), vec)[0].detach()
    _, hg = torch.autograd.functional.hvp(loss_of, flat, g)
    grasp = grasp_scores(model, batches, names, torch.device("cpu"), temperature)
    expected = (flat * hg).split([int(np.prod(s)) for s in shapes])
    for name, e, s in zip(names, expected, shapes, strict=True):
        torch.testing.assert_close(grasp[name], e.reshape(s), rtol=1e-4, atol=1e-7)


# ------------------------------------------------------- masked training
def test_masked_training_keeps_zeros_zero_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    arrays = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    names = ["1.weight", "3.weight"]
    keep = magnitude_prune(arrays, full_mask(arrays, names), 0.7)
    for name, mask in keep.items():
        model.state_dict()[name].mul_(torch.from_numpy(mask).float())
    # The client's view: the mask read off the zeros of what it received.
    derived = mask_from_zeros({k: v.detach().numpy() for k, v in model.state_dict().items()}, names)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = TensorDataset(torch.randn(64, 1, 4, 4), torch.randint(0, 4, (64,)))
    optimizer = make_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9, weight_decay=0.05)
    hooks = TrainHooks(grad_masks={n: torch.from_numpy(m).float() for n, m in derived.items()})
    train_loop(model, DataLoader(data, batch_size=8), optimizer, 3, torch.device("cpu"), hooks)
    after = model.state_dict()
    for name in names:
        pruned = torch.from_numpy(~keep[name])
        assert torch.count_nonzero(after[name][pruned]) == 0
        assert not torch.equal(after[name][~pruned], before[name][~pruned])  # it did train
    # Without the mask, momentum and weight decay would revive the zeros.
    model2 = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    model2.load_state_dict(before)
    opt2 = make_optimizer(model2.parameters(), "sgd", lr=0.1, momentum=0.9, weight_decay=0.05)
    train_loop(model2, DataLoader(data, batch_size=8), opt2, 1, torch.device("cpu"))
    assert torch.count_nonzero(model2.state_dict()["1.weight"][torch.from_numpy(~keep["1.weight"])]) > 0


# --------------------------------------------------------- known-mask wire
def test_mask_travels_once_per_change_and_a_node_that_lost_it_gets_it_whole():
    """OneShot prunes after round 3: only round 4 carries the mask (its change against
    mask 0); a node whose state is wiped before round 5 fails that round and is sent
    the whole mask in round 6; a reply following another mask is dropped, and its node
    is sent the whole mask next."""
    down = {}  # (round, partition) -> (mask-base, mask-id, flips sent, message bytes)

    def client_app(message, context):
        config = message.content.config_records["config"]
        index, rnd = context.node_config["partition-id"], int(config["server-round"])
        record = message.content.array_records["arrays"]
        down[(rnd, index)] = (int(config["mask-base"]), int(config["mask-id"]), "prune-mask@flips" in record)
        if rnd == 5 and index == 1:
            context.state = RecordDict()  # a restarted node: the mask it held is gone
        arrays, keep = _receive(message, context)
        if rnd == 6 and index == 2:
            return known_reply(message, arrays, keep, 10, mask_id=0)  # follows a stale mask
        assert all(np.count_nonzero(arrays[n][~keep[n]]) == 0 for n in keep)
        return known_reply(message, arrays, keep, 10)

    strategy = OneShot(
        num_rounds=7, ft_rounds=4, s_f=0.9, min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0
    )
    _, records = _run(strategy, client_app, 3, 7)
    for i in range(3):
        assert [down[(t, i)][2] for t in (1, 2, 3)] == [False] * 3  # nothing pruned: mask 0, untold
        assert down[(4, i)] == (0, 1, True)  # the change, once
    assert down[(5, 0)] == (1, 1, False) and down[(5, 1)] == (1, 1, False)
    assert records[5]["dropped"] == 1 and "holds mask" in strategy.dropped[5][0]
    assert down[(6, 1)] == (0, 1, True)  # the whole mask again, as a change of mask 0
    assert down[(6, 0)] == (1, 1, False)
    assert records[6]["dropped"] == 1 and "follows mask 0" in strategy.dropped[6][0]
    # Node 1's round-6 reply confirmed mask 1; node 2's dropped one confirmed nothing.
    assert down[(7, 0)] == down[(7, 1)] == (1, 1, False) and down[(7, 2)] == (0, 1, True)
    with_mask = [records[t]["mask_bytes"] > 0 for t in range(1, 8)]
    assert with_mask == [False, False, False, True, False, True, True]
    # Round 4 carries the 90%-sparse model's values only: no position set per message.
    nonzero = records[4]["nonzero_params"]
    assert records[5]["bytes_down"] < 3 * (4 * nonzero + 6000)
    assert records[5]["bytes_up"] < 2 * (4 * nonzero + 6000)  # two valid replies


def test_reply_with_wrong_value_count_is_dropped_before_decoding():
    def client_app(message, context):
        arrays, keep = _receive(message, context)
        reply = known_reply(message, arrays, keep, 10)
        if context.node_config["partition-id"] == 0:
            blob = reply.content["arrays"]["known-values"].numpy()
            reply.content["arrays"]["known-values"] = Array(np.concatenate([blob, blob[1:9]]))
        return reply

    strategy = FedSparsifyGlobal(
        num_rounds=2, min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0
    )
    _, records = _run(strategy, client_app, 2, 2)
    assert records[1]["dropped"] == 1 and "'known-values'" in strategy.dropped[1][0]


def test_paper_formula_counts_nonzeros_and_one_bit_per_parameter_per_mask():
    strategy = FedSparsifyGlobal(
        num_rounds=3, s_f=0.5, min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0
    )
    models = []
    strategy.aggregate_replies = (lambda original: lambda t, r: models.append(original(t, r)) or models[-1])(
        strategy.aggregate_replies
    )
    _, records = _run(strategy, _echo, 2, 3)
    params = sum(v.size for v in GLOBAL.values())
    sent = [GLOBAL, *models]  # the model sent in round t is the one made in round t - 1
    for t in (1, 2, 3):
        nonzeros = sum(int(np.count_nonzero(v)) for v in sent[t - 1].values())
        masked = any((v == 0).any() for k, v in sent[t - 1].items() if k in PRUNABLE_NAMES)
        # Two messages down, two echoed replies up (same nonzeros), a mask with each message down.
        expected = 2 * 4 * nonzeros + 2 * (params + 7) // 8 * masked + 2 * 4 * nonzeros
        assert records[t]["paper_formula_bytes"] == expected
    assert strategy.summary_fields()["paper_formula_bytes"] == sum(
        records[t]["paper_formula_bytes"] for t in (1, 2, 3)
    )


# --------------------------------------------- one real run (ClientApp, digits)
@pytest.mark.parametrize("method", ["fedsparsify_local", "grasp"])
def test_real_run_on_digits(tmp_path: Path, method: str):
    summary, records, final = digits_run(
        tmp_path, method, ["num_rounds=3", "method.s_f=0.6", "method.benchmark_seconds=0.02"]
    )
    weights = [k for k in final.files if k.endswith("weight")]
    zeros = sum(int((final[k] == 0).sum()) for k in weights)
    total = sum(final[k].size for k in weights)
    assert summary["final_sparsity"] == pytest.approx(records[3]["sparsity"])
    assert zeros / total >= summary["final_sparsity"] - 1e-9
    if method == "grasp":
        assert summary["final_sparsity"] == pytest.approx(0.6, abs=1e-4)
        assert records[0]["bytes_up"] > 0  # the scoring reply is counted
    else:
        assert records[3]["mask_bytes"] > 0
        assert records[3]["bytes_up"] < records[1]["bytes_up"]
    assert summary["total_bytes"] < summary["paper_formula_bytes"]
    assert summary["final_model_sparse_mb"] < summary["final_model_dense_mb"]
    assert summary["inference_csr_max_abs_diff"] < 1e-4
    assert summary["inference_csr_b64_items_s"] > 0


# ------------------------------- real clients: every reply as sparse as the mask sent
#: Per method, overrides that make the mask exist after round 1 of a 3-round run.
SPARSE_REPLY_METHODS = {
    "fedsparsify_global": [],
    "oneshot": ["method.ft_rounds=1"],
    "random_prune": [],
    "snip": ["method.score_batches=2"],
    "grasp": ["method.score_batches=2"],
    "prunefl": ["method.score_batches=2", "method.readjust_every=2"],
}


@pytest.mark.parametrize("method", sorted(SPARSE_REPLY_METHODS))
def test_real_clients_reply_exactly_as_sparse_as_the_mask_sent(tmp_path: Path, method: str, monkeypatch):
    """Real ``FedSparsifyClient`` s on digits: the trained model is exactly as sparse as the mask.

    The wire carries values at the mask's kept positions only, so the check is made
    where a client could go wrong: the model it trained, at the moment it replies
    (client seam), against the server's mask when the message was sent, per tensor;
    and the mask the client holds is the server's, exactly.
    """
    from hydra import compose, initialize_config_dir

    from clients.methods.base import model_arrays
    from clients.methods.fedsparsify import FedSparsifyClient
    from simulations.app.client_app import app as client_app
    from simulations.app.compose import compose_run, execute_plan

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(
            "config",
            overrides=[
                f"method={method}",
                "num_clients=3",
                "num_rounds=3",
                "local_epochs=1",
                "fraction_evaluate=0",
                "central_eval=false",
                "method.s_f=0.6",
                "method.benchmark_seconds=0",
                *SPARSE_REPLY_METHODS[method],
            ],
        )
    plan = compose_run(cfg, tmp_path)
    trained = []  # (round, node, held mask, trained model) at reply time
    original = FedSparsifyClient.reply_arrays

    def spy(self, job, stats):
        trained.append((job.server_round, job.context.node_id, dict(self.keep), model_arrays(job.model)))
        return original(self, job, stats)

    monkeypatch.setattr(FedSparsifyClient, "reply_arrays", spy)
    sent = {}

    def recording_client(message, context):
        config = message.content.config_records["config"]
        if "prune-score" not in config:
            keep = {k: v.copy() for k, v in plan.strategy.keep.items()}
            sent[(int(config["server-round"]), context.node_id)] = keep
        reply = client_app(message, context)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        return reply

    execute_plan(plan, InlineGrid(recording_client, 3), quiet=True)
    checked = set()
    for rnd, node, held, model in trained:
        sent_keep = sent[(rnd, node)]
        assert set(held) == set(sent_keep) and held
        if all(m.all() for m in sent_keep.values()):
            continue
        for name, keep in sent_keep.items():
            np.testing.assert_array_equal(held[name], keep)  # the client holds the server's mask
            revived = ~keep & (model[name] != 0)
            assert not revived.any(), (
                f"round {rnd} node {node} {name}: {int(revived.sum())} pruned weights trained nonzero"
            )
            assert (model[name][keep] != 0).any()  # it trained real values
        checked.add(rnd)
    # Not vacuous: the masked rounds of each method were checked (3 replies each).
    expected_rounds = {
        "fedsparsify_global": {3},
        "oneshot": {3},
        "random_prune": {3},
        "snip": {1, 2, 3},
        "grasp": {1, 2, 3},
        "prunefl": {1, 2, 3},
    }[method]
    assert expected_rounds <= checked
    assert sum(1 for r, *_ in trained if r in expected_rounds) == 3 * len(expected_rounds)


# --------------------------------------------------- the paper's setups compose
PAPER_SETUPS = {
    "fedsparsify_fmnist": ("fashion_mnist", "fc2_fedsparsify", 2, 10, 1.0, 200, 32),
    "fedsparsify_fmnist_100": ("fashion_mnist", "fc2_fedsparsify", 2, 100, 0.1, 200, 32),
    "fedsparsify_cifar10": ("cifar10", "cnn6_fedsparsify", 5, 10, 1.0, 200, 32),
    "fedsparsify_cifar10_100": ("cifar10", "cnn6_fedsparsify", 5, 100, 0.1, 200, 32),
    "fedsparsify_cifar100": ("cifar100", "vgg16_fedsparsify", 50, 10, 1.0, 100, 128),
    "fedsparsify_cifar100_100": ("cifar100", "vgg16_fedsparsify", 50, 100, 0.1, 100, 128),
}


@pytest.mark.parametrize("experiment", sorted(PAPER_SETUPS))
def test_paper_setups_compose_validate_and_build(experiment, monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from clients.models import model_dims
    from methods import BuildContext, get_method
    from simulations.app.config import validate_config

    conf = str(CONF_DIR)
    dataset, model, classes, clients, fraction, rounds, batch = PAPER_SETUPS[experiment]
    for method in ("fedsparsify_global", "fedsparsify_local", "oneshot", "fedavg"):
        with initialize_config_dir(config_dir=conf, version_base=None):
            cfg = OmegaConf.to_container(
                compose("config", overrides=[f"+experiment={experiment}", f"method={method}"]), resolve=True
            )
        assert (cfg["dataset"]["name"], cfg["model"]["name"], cfg["method"]["name"]) == (
            dataset,
            model,
            method,
        )
        assert cfg["partition"] == {"name": "pathological", "classes_per_partition": classes}
        assert (cfg["num_clients"], cfg["fraction_train"], cfg["num_rounds"]) == (clients, fraction, rounds)
        assert (cfg["batch_size"], cfg["local_epochs"], cfg["seed"]) == (batch, 4, 1990)
        # Everything but the data files (absent here) validates.
        monkeypatch.setattr("clients.data.validate_data_source", lambda *args: None)
        typed = validate_config(cfg)
        common = {"min_available_nodes": clients, "fraction_evaluate": 0.0}
        ctx = BuildContext(run=typed.cfg, common=common, dims=model_dims(typed.cfg))
        strategy = get_method(method).build(typed.method, ctx)
        assert strategy.method_name == method


# ---------------------------------------------------- report: paper-formula column
def test_report_shows_the_paper_formula_column_for_pruning_rows(tmp_path: Path):
    import csv

    from simulations.tools import report as rep

    from .test_report import column, fake_run, fake_suite, row_of

    suite = fake_suite(tmp_path / "s", "s")
    for seed, paper in ((0, 40e6), (1, 60e6)):
        fake_run(suite / "fedavg" / f"seed{seed}", "fedavg", seed, [0.1, 0.9], 50, 50, label="fedavg")
        fake_run(
            suite / "g" / f"seed{seed}",
            "fedsparsify_global",
            seed,
            [0.1, 0.9],
            10,
            20 + 10 * seed,
            label="g",
            paper_formula_bytes=int(paper),
        )
    text = rep.report([suite])
    mb, ratio = column(text, "paper-formula MB"), column(text, "× paper")
    cells = row_of(text, "g")
    assert (cells[mb], cells[ratio]) == ("50.00 ± 14.14", "0.700")  # 35 MB measured over 50 MB
    assert (row_of(text, "fedavg")[mb], row_of(text, "fedavg")[ratio]) == ("-", "-")
    with (suite / "report.csv").open() as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert float(rows["g"]["paper_formula_mb_mean"]) == pytest.approx(50.0)
    assert float(rows["g"]["ratio_total_mb_vs_paper"]) == pytest.approx(0.7)
    # A table without any pruning method has no such column.
    plain = fake_suite(tmp_path / "p", "p")
    fake_run(plain / "fedavg" / "seed0", "fedavg", 0, [0.1, 0.9], 50, 50, label="fedavg")
    assert "paper-formula" not in rep.report([plain])
