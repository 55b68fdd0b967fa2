"""ZeroFL: uplink selection, wire format, sparse aggregation, strategy and client."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch.utils.data import TensorDataset

from fl_strategies.base import numpy_to_arrayrecord
from fl_strategies.codec import (
    FORM_INDICES,
    CodecError,
    decode_arrays,
    decode_positions,
    encode_arrays,
    encode_positions,
    encode_sent,
)
from fl_strategies.swat import Swat, topk_mask, topk_weights_only
from fl_strategies.zerofl import (
    SENT_SUFFIX,
    ZeroFL,
    aggregate_sparse,
    pack_sent,
    select_uplink,
    topk_exact,
    unpack_sent,
    uplink_density,
)
from simulations import CONF_DIR
from simulations.runtimes.inline import InlineGrid

LOCAL = np.array([[0.9, -0.1, 0.4], [0.05, -0.7, 0.2]], np.float32)
GLOBAL = np.array([[0.8, -0.1, 0.1], [0.05, -0.7, 0.6]], np.float32)
# |w| = [[.9, .1, .4], [.05, .7, .2]]; diff = [[0.1, 0, 0.3], [0, 0, -0.4]]


def test_uplink_density_and_exact_topk():
    assert uplink_density(0.9, 0.0) == pytest.approx(0.1)
    assert uplink_density(0.9, 0.2) == pytest.approx(0.3)
    assert uplink_density(0.5, 0.7) == 1.0
    # Ties are cut by position so the budget is exact: 2 of 6 zeros -> first two.
    assert topk_exact(np.zeros(6), 0.3).tolist() == [True, True, False, False, False, False]


def test_each_uplink_sends_exactly_the_intended_positions():
    density = 0.5  # 3 of 6 positions
    values, mask = select_uplink(LOCAL, GLOBAL, "topk_weights", density)
    assert mask.tolist() == [[True, False, True], [False, True, False]]  # |w|: .9 .7 .4
    np.testing.assert_allclose(values[mask], [0.9, 0.4, -0.7])

    values, mask = select_uplink(LOCAL, GLOBAL, "diff_topk_weights", density)
    assert mask.tolist() == [[True, False, True], [False, True, False]]
    np.testing.assert_allclose(values[mask], [0.1, 0.3, 0.0], atol=1e-6)

    values, mask = select_uplink(LOCAL, GLOBAL, "topk_diff", density)
    assert mask.tolist() == [[True, False, True], [False, False, True]]  # |d|: .4 .3 .1
    np.testing.assert_allclose(values[mask], [0.1, 0.3, -0.4], atol=1e-6)

    with pytest.raises(ValueError, match="uplink"):
        select_uplink(LOCAL, GLOBAL, "random", density)


def test_zero_valued_sent_positions_survive_the_codec():
    # diff_topk_weights sends the top-3 weight -0.7, whose update is exactly 0.
    values, mask = select_uplink(LOCAL, GLOBAL, "diff_topk_weights", 0.5)
    assert mask[1, 1] and values[1, 1] == 0.0
    record = encode_arrays(pack_sent("w", values, mask))
    assert list(record) == ["w" + SENT_SUFFIX]  # one blob per tensor: positions and values
    dense, sent = unpack_sent(decode_arrays(record), "w", LOCAL.shape)
    np.testing.assert_array_equal(sent, mask)  # the 0-valued position is still "sent"
    np.testing.assert_allclose(dense, np.where(mask, values, 0))


def _position_set(blob):
    length = int(blob[:4].view("<u4")[0])
    return blob[4 : 4 + length]


def test_indices_are_sent_when_smaller_than_a_bitmask():
    big = np.zeros((100, 100), np.float32)
    big[3, 7], big[50, 50] = 2.0, 0.0
    mask = np.zeros_like(big, dtype=bool)
    mask[3, 7] = mask[50, 50] = True
    wire = pack_sent("w", big, mask)
    assert set(wire) == {"w" + SENT_SUFFIX}
    blob = wire["w" + SENT_SUFFIX]
    positions = _position_set(blob)
    assert positions[0] == FORM_INDICES and positions.size == 1 + 8  # form byte, two uint32
    assert decode_positions(positions, big.size).tolist() == [307, 5050]
    assert blob.size == 4 + 9 + 1 + 8  # length, positions, value form, two raw float32
    dense, sent = unpack_sent(decode_arrays(encode_arrays(wire)), "w", big.shape)
    assert sent.sum() == 2 and sent[50, 50] and dense[3, 7] == 2.0


def test_sent_values_are_bit_exact_and_compressed_when_that_is_smaller():
    rng = np.random.default_rng(3)
    update = (rng.standard_normal((64, 800)) * 1e-3).astype(np.float32)
    mask = topk_exact(update, 0.1)
    update[mask.nonzero()[0][:50], mask.nonzero()[1][:50]] = 0.0  # sent zeros stay sent
    mask[0, :3] = True
    blob = encode_sent(update, mask)
    raw = 4 + _position_set(blob).size + 1 + 4 * int(mask.sum())
    assert blob.size < raw - 0.1 * 4 * int(mask.sum())  # byte planes: > 10 % below raw float32
    dense, sent = unpack_sent({"w" + SENT_SUFFIX: blob}, "w", update.shape)
    np.testing.assert_array_equal(sent, mask)
    np.testing.assert_array_equal(dense.view(np.uint32), np.where(mask, update, 0).view(np.uint32))


def test_sent_blob_is_decoded_within_the_receivers_sizes():
    mask = np.zeros(1000, bool)
    mask[::10] = True
    blob = encode_sent(np.ones(1000, np.float32), mask)
    with pytest.raises(CodecError):
        unpack_sent({"w" + SENT_SUFFIX: blob}, "w", (990,))  # position 990 does not exist
    with pytest.raises(CodecError, match="longer"):
        # values claiming more bytes than 100 positions need: inflated no further than 400 bytes
        forged = np.concatenate([blob[: 4 + int(blob[:4].view("<u4")[0])], [2], _zlib_of(10**6)])
        unpack_sent({"w" + SENT_SUFFIX: forged.astype(np.uint8)}, "w", (1000,))
    with pytest.raises(CodecError, match="cannot hold"):
        unpack_sent({"w" + SENT_SUFFIX: blob[:8]}, "w", (1000,))


def _zlib_of(num_bytes):
    import zlib

    return np.frombuffer(zlib.compress(bytes(num_bytes)), np.uint8)


def _wire(*indices, size=6, values=(1.0, 2.0)):
    mask = np.zeros(size, bool)
    mask[list(indices)] = True
    dense = np.zeros(size, np.float32)
    dense[mask] = values[: int(mask.sum())]
    return encode_sent(dense, mask)


def _forged(positions, values):
    head = np.asarray([positions.size], "<u4").view(np.uint8)
    tail = np.asarray(values, "<f4").view(np.uint8)
    return np.concatenate([head, positions, [1], tail]).astype(np.uint8)


@pytest.mark.parametrize("broken", ["count", "repeat", "range", "missing", "dtype"])
def test_inconsistent_wire_entries_are_rejected(broken):
    wire = {"w" + SENT_SUFFIX: _wire(0, 5)}
    if broken == "count":
        wire["w" + SENT_SUFFIX] = _forged(
            encode_positions(np.eye(1, 6, 0, bool)[0] | np.eye(1, 6, 5, bool)[0]), [1.0]
        )
    elif broken == "repeat":
        repeated = np.concatenate([[FORM_INDICES], np.array([5, 5], "<u4").view(np.uint8)]).astype(np.uint8)
        wire["w" + SENT_SUFFIX] = _forged(repeated, [1.0, 2.0])
    elif broken == "range":
        wire["w" + SENT_SUFFIX] = _wire(0, 6, size=7)
    elif broken == "missing":
        del wire["w" + SENT_SUFFIX]
    else:
        wire["w" + SENT_SUFFIX] = np.ones((2, 3), bool)
    with pytest.raises(ValueError):
        unpack_sent(wire, "w", (2, 3))


# Three clients, four positions: p0 sent by all, p1 by clients 0 and 2, p2 by client 1
# only, p3 by nobody. Weights (num-examples) 1, 2, 3.
G = np.array([10.0, 20.0, 30.0, 40.0], np.float32)
VALUES = [
    np.array([1.0, 2.0, 0.0, 0.0], np.float32),
    np.array([4.0, 0.0, 6.0, 0.0], np.float32),
    np.array([7.0, 0.0, 0.0, 0.0], np.float32),
]
MASKS = [
    np.array([True, True, False, False]),
    np.array([True, False, True, False]),
    np.array([True, True, False, False]),
]
WEIGHTS = [1.0, 2.0, 3.0]


def test_aggregate_sparse_by_hand():
    merged = aggregate_sparse(G, VALUES, MASKS, WEIGHTS, additive=False)
    expected = [
        (1 * 1 + 2 * 4 + 3 * 7) / 6,  # all: weighted mean 5.0
        (1 * 2 + 3 * 0) / 4,  # clients 0 and 2; client 2 sent an exact 0
        6.0,  # client 1 alone
        40.0,
    ]  # nobody: previous global value
    np.testing.assert_allclose(merged, expected)
    assert merged.dtype == np.float32
    merged = aggregate_sparse(G, VALUES, MASKS, WEIGHTS, additive=True)
    np.testing.assert_allclose(merged, [15.0, 20.5, 36.0, 40.0])
    # zero_fill: FedAvg of the uploads, unsent = 0, divided by all weights (6)
    merged = aggregate_sparse(G, VALUES, MASKS, WEIGHTS, False, "zero_fill")
    np.testing.assert_allclose(merged, [5.0, 2 / 6, 2.0, 0.0])
    merged = aggregate_sparse(G, VALUES, MASKS, WEIGHTS, True, "zero_fill")
    np.testing.assert_allclose(merged, [15.0, 20 + 2 / 6, 32.0, 40.0], rtol=1e-6)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_sparse(G, VALUES, MASKS, WEIGHTS, False, "median")


def test_topk_weights_and_diff_topk_weights_agree_under_sender_mean():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(8, 8)).astype(np.float32)
    locals_ = [base + rng.normal(scale=0.1, size=base.shape).astype(np.float32) for _ in range(3)]
    merged = {}
    for uplink in ("topk_weights", "diff_topk_weights"):
        sent = [select_uplink(w, base, uplink, 0.2) for w in locals_]
        merged[uplink] = aggregate_sparse(
            base, [v for v, _ in sent], [m for _, m in sent], WEIGHTS, uplink != "topk_weights"
        )
    np.testing.assert_allclose(merged["topk_weights"], merged["diff_topk_weights"], atol=1e-6)


def _hand_client(uplink_values, masks, dense_bias):
    """Client app: node i sends VALUES[i] at MASKS[i] for 'w' and a dense 'b'."""

    def client_app(message, context):
        i = context.node_config["partition-id"]
        arrays = {**pack_sent("w", uplink_values[i], masks[i]), "b": dense_bias[i]}
        content = RecordDict(
            {
                "arrays": encode_arrays(arrays),
                "metrics": MetricRecord(
                    {"num-examples": int(WEIGHTS[i]), "flops-dense": 100.0, "flops-swat": 30.0}
                ),
            }
        )
        return Message(content, reply_to=message)

    return client_app


@pytest.mark.parametrize("uplink", ["topk_weights", "topk_diff"])
def test_strategy_aggregates_three_hand_made_clients(uplink):
    initial = {"w": G, "b": np.zeros(2, np.float32)}
    biases = [
        np.array([1.0, 1.0], np.float32),
        np.array([2.0, 2.0], np.float32),
        np.array([4.0, 4.0], np.float32),
    ]
    strategy = ZeroFL(
        uplink=uplink,
        sparsity=0.5,
        mask_ratio=0.0,
        sparse_keys=["w"],
        min_available_nodes=3,
        min_train_nodes=3,
        fraction_evaluate=0.0,
    )
    grid = InlineGrid(_hand_client(VALUES, MASKS, biases), 3)
    records = []
    result = strategy.start(grid, numpy_to_arrayrecord(initial), num_rounds=1, on_round_end=records.append)
    final = {k: v.numpy() for k, v in result.arrays.items()}
    # Node order in a round is Flower's sampling order; weights follow partition ids.
    additive = uplink != "topk_weights"
    np.testing.assert_allclose(final["w"], aggregate_sparse(G, VALUES, MASKS, WEIGHTS, additive))
    np.testing.assert_allclose(final["b"], [(1 + 4 + 12) / 6] * 2)
    record = records[-1]
    assert record["dropped"] == 0
    assert record["uplink_density"] == pytest.approx(6 / 12)
    assert record["uplink_coverage"] == pytest.approx(3 / 4)
    assert record["flops_train_dense"] == 300.0 and record["flops_train_swat"] == 90.0


def test_strategy_drops_replies_over_budget_or_with_dense_sparse_tensors():
    initial = {"w": G, "b": np.zeros(2, np.float32)}
    masks = [np.ones(4, bool), MASKS[1], MASKS[2]]  # client 0 sends 4 > 2 positions

    def client_app(message, context):
        i = context.node_config["partition-id"]
        if i == 1:  # a plain dense 'w': not the protocol
            arrays = {"w": VALUES[1], "b": np.zeros(2, np.float32)}
        else:
            arrays = {**pack_sent("w", VALUES[i], masks[i]), "b": np.zeros(2, np.float32)}
        return Message(
            RecordDict({"arrays": encode_arrays(arrays), "metrics": MetricRecord({"num-examples": 3})}),
            reply_to=message,
        )

    strategy = ZeroFL(
        sparsity=0.5, sparse_keys=["w"], min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0
    )
    result = strategy.start(InlineGrid(client_app, 3), numpy_to_arrayrecord(initial), num_rounds=1)
    reasons = "\n".join(strategy.dropped[1])
    assert "more than the 2" in reasons and "needs 'w@sent'" in reasons
    final = {k: v.numpy() for k, v in result.arrays.items()}
    np.testing.assert_allclose(final["w"], np.where(MASKS[2], VALUES[2], G))


def test_swat_central_evaluation_sees_topk_weights():
    seen = []

    def evaluate_fn(server_round, arrays):
        seen.append(arrays["w"].numpy().copy())
        return MetricRecord({"accuracy": 0.0})

    def client_app(message, context):
        arrays = decode_arrays(message.content.array_records["arrays"])
        return Message(
            RecordDict({"arrays": encode_arrays(arrays), "metrics": MetricRecord({"num-examples": 1})}),
            reply_to=message,
        )

    w = np.array([0.1, -0.9, 0.3, 0.5], np.float32)
    strategy = Swat(
        sparsity=0.5, sparse_keys=["w"], min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0
    )
    strategy.start(
        InlineGrid(client_app, 1), numpy_to_arrayrecord({"w": w}), num_rounds=1, evaluate_fn=evaluate_fn
    )
    np.testing.assert_allclose(seen[0], [0.0, -0.9, 0.0, 0.5])
    assert topk_mask(w, 0.5).tolist() == [False, True, False, True]
    np.testing.assert_allclose(topk_weights_only({"w": w}, ["w"], 0.5)["w"], seen[0])


def _client_job(method_settings, model):
    from clients.methods import ClientJob
    from tests.freezing_helpers import method_defaults

    settings = {
        "method": method_defaults(method_settings),
        "seed": 0,
        "model": {"name": "mlp", "in_channels": 1, "num_classes": 10, "image_size": 8},
        "train": {
            "epochs": 1,
            "batch_size": 16,
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.0,
            "weight_decay": 0.0,
        },
    }
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 1, 8, 8), torch.randint(0, 10, (48,)))
    content = RecordDict(
        {
            "arrays": encode_arrays({k: v.numpy() for k, v in model.state_dict().items()}),
            "config": ConfigRecord({"server-round": 1, "fedlean-run": json.dumps(settings)}),
        }
    )
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return settings, ClientJob(
        settings=settings,
        model=model,
        train_set=data,
        test_set=data,
        device=torch.device("cpu"),
        content=content,
        context=context,
        server_round=1,
        partition_id=0,
    )


@pytest.mark.parametrize("uplink", ["topk_weights", "diff_topk_weights", "topk_diff"])
def test_client_uplink_round_trip_through_strategy_parse(uplink):
    from clients.models import build_model
    from methods import get_method

    method = {
        "name": "zerofl",
        "sparsity": 0.9,
        "topk_period": 10,
        "topk_warmup": 0,
        "sparsify_first": True,
        "sparsify_last": True,
        "uplink": uplink,
        "mask_ratio": 0.05,
    }
    model = build_model("mlp", 1, 10, 8)
    initial = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    settings, job = _client_job(method, model)
    client = get_method("zerofl").client_class()(settings)
    reply = client.train(job)
    metrics = reply.metric_records["metrics"]
    assert metrics["uplink-density"] == pytest.approx(0.15, abs=1e-3)
    assert 0 < metrics["flops-swat"] < metrics["flops-dense"]
    keys = ["net.1.weight", "net.3.weight", "net.5.weight"]
    wire = decode_arrays(reply.array_records["arrays"])
    assert {k + SENT_SUFFIX for k in keys} <= set(wire)
    assert {"net.1.bias", "net.3.bias", "net.5.bias"} <= set(wire)
    assert not set(keys) & set(wire)  # weights never go up dense

    strategy = ZeroFL(uplink=uplink, sparsity=0.9, mask_ratio=0.05, sparse_keys=keys)
    strategy.global_arrays = initial
    message = Message(reply, dst_node_id=1, message_type="train")
    parsed = strategy.parse_train_reply(1, message)
    trained = {k: v.detach().numpy() for k, v in job.model.state_dict().items()}
    for key in keys:
        sent = parsed.sent[key]
        assert sent.sum() == int(np.ceil(0.15 * sent.size - 1e-9))
        target = trained[key] if uplink == "topk_weights" else trained[key] - initial[key]
        ranked = trained[key] if uplink != "topk_diff" else trained[key] - initial[key]
        np.testing.assert_array_equal(sent, topk_exact(ranked, 0.15))
        np.testing.assert_allclose(parsed.arrays[key][sent], target[sent], atol=1e-6)
    merged = strategy.aggregate_replies(1, [parsed])
    for key in keys:  # one client: sent positions take its value, others stay global
        expect = np.where(parsed.sent[key], trained[key], initial[key])
        np.testing.assert_allclose(merged[key], expect, atol=1e-6)


def test_sparse_uplink_is_several_times_smaller_than_dense_on_the_wire():
    from clients.models import build_model
    from fl_strategies.wire import message_bytes
    from methods import get_method

    sizes = {}
    for name in ("swat", "zerofl"):
        method = {
            "name": name,
            "sparsity": 0.9,
            "sparsify_first": True,
            "uplink": "topk_weights",
            "mask_ratio": 0.0,
        }
        settings, job = _client_job(method, build_model("mlp", 1, 10, 8))
        reply = get_method(name).client_class()(settings).train(job)
        sizes[name] = message_bytes(Message(reply, dst_node_id=1, message_type="train"))
    # bitmask (1/32) + 10% values + dense biases: about 7x smaller
    assert sizes["swat"] / sizes["zerofl"] > 6.5


def test_experiment_configs_compose():
    from hydra import compose, initialize_config_dir

    conf = CONF_DIR
    expected = {
        "zerofl_cifar10": ("cifar10", "resnet18", 1.0, 700),
        "zerofl_cifar10_iid": ("cifar10", "resnet18", 1000.0, 700),
        "zerofl_femnist": ("femnist", "resnet18", None, 1000),
        "zerofl_speechcommands": ("speech_commands", "resnet18", 1.0, 200),
        "zerofl_speechcommands_iid": ("speech_commands", "resnet18", 1000.0, 200),
    }
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        for name, (dataset, model, alpha, rounds) in expected.items():
            cfg = compose("config", overrides=[f"+experiment={name}"])
            assert cfg.dataset.name == dataset and cfg.model.name == model
            assert cfg.method.name == "zerofl" and cfg.num_rounds == rounds
            assert cfg.num_clients == 100 and int(cfg.fraction_train * 100) == 10
            if alpha is not None:
                assert cfg.partition.name == "dirichlet" and cfg.partition.alpha == alpha
        # The dense-upload comparator is one override away, without ZeroFL's keys.
        swat = compose("config", overrides=["+experiment=zerofl_cifar10", "method=swat"])
        assert swat.method.name == "swat" and "uplink" not in swat.method


def test_swat_and_zerofl_run_end_to_end_through_the_client_app(tmp_path):
    from hydra import compose, initialize_config_dir

    from simulations.runtimes.simulation import run_from_config

    conf = CONF_DIR
    small = ["num_clients=3", "num_rounds=1", "local_epochs=1", "fraction_evaluate=0", "save_model=false"]
    rounds = {}
    for method in (["method=swat"], ["method=zerofl", "method.uplink=topk_diff", "method.mask_ratio=0.1"]):
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = compose("config", overrides=[*small, *method])
        out = tmp_path / method[0]
        run_from_config(cfg, out, quiet=True)
        lines = (out / "rounds.jsonl").read_text().splitlines()
        rounds[method[0]] = json.loads(lines[-1])
    swat, zerofl = rounds["method=swat"], rounds["method=zerofl"]
    assert swat["dropped"] == zerofl["dropped"] == 0  # server and clients agree on keys
    assert zerofl["uplink_density"] == pytest.approx(0.2, abs=1e-3)
    assert 0 < zerofl["flops_train_swat"] < zerofl["flops_train_dense"]
    # mlp, first layer dense (reference default): 2 of 3 weight tensors go sparse
    assert 2.5 < swat["bytes_up"] / zerofl["bytes_up"] < 3.5


def test_zerofl_wire_tool_measures_a_reply_below_swats(capsys):
    from simulations.tools.zerofl_wire import main

    main(["--model", "mlp", "--channels", "1", "--image-size", "8", "--values", "gaussian-update"])
    report = json.loads(capsys.readouterr().out)
    assert report["params_sparsified"] > 0 and report["bytes_zerofl"] < report["bytes_swat"]
    assert report["ratio_measured"] == pytest.approx(report["bytes_swat"] / report["bytes_zerofl"], rel=1e-3)
    assert report["ratio_bitmask_float32"] < report["ratio_ideal_float32"]


def _topk_by_stable_sort(array: np.ndarray, density: float) -> np.ndarray:
    """The top-K selection as first written: a full stable argsort by decreasing magnitude."""
    from fl_strategies.swat import topk_keep_count

    flat = np.abs(array).reshape(-1)
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[: topk_keep_count(flat.size, density)]] = True
    return mask.reshape(array.shape)


def test_topk_exact_selects_what_a_stable_sort_selects_on_ties():
    rng = np.random.default_rng(11)
    for trial in range(2000):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 12)))
        # Few distinct magnitudes (many ties, signed zeros), sometimes NaNs or infinities.
        array = (rng.integers(-4, 5, size=shape) * rng.choice([0.5, 1.0, 1e-3])).astype(np.float32)
        if trial % 3 == 0:
            array[rng.random(shape) < 0.2] = -0.0
        if trial % 5 == 0:
            array[rng.random(shape) < 0.3] = np.nan
        if trial % 7 == 0:
            array[rng.random(shape) < 0.1] = -np.inf
        density = float(rng.choice([rng.random(), 0.1, 0.05, 1.0]))
        expected = _topk_by_stable_sort(array, density)
        np.testing.assert_array_equal(topk_exact(array, density), expected, err_msg=f"trial {trial}")
    update = np.zeros((256, 256), np.float32)
    update[rng.random(update.shape) < 0.02] = 1e-3  # mostly zero: the budget is cut among ties
    np.testing.assert_array_equal(topk_exact(update, 0.1), _topk_by_stable_sort(update, 0.1))


def test_aggregate_sparse_equals_the_dense_masked_sums_bit_for_bit():
    rng = np.random.default_rng(5)
    for _ in range(100):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        base = rng.standard_normal(shape).astype(np.float32)
        base[rng.random(shape) < 0.1] = -0.0  # kept as is, or 0.0 after a zero update
        n = int(rng.integers(1, 6))
        masks = [rng.random(shape) < rng.random() for _ in range(n)]
        # Unsent entries hold junk (0 in decoded replies, anything here): they must not count.
        values = [rng.standard_normal(shape).astype(np.float32) for _ in masks]
        weights = [float(rng.integers(1, 90)) for _ in masks]
        num, den = np.zeros(shape), np.zeros(shape)
        for value, mask, weight in zip(values, masks, weights, strict=True):
            num += np.where(mask, value.astype(np.float64), 0.0) * weight
            den += mask * weight
        sent = den > 0
        mean = np.divide(num, den, out=np.zeros_like(num), where=sent)
        for additive in (False, True):
            expected = (base + mean) if additive else np.where(sent, mean, base.astype(np.float64))
            got = aggregate_sparse(base, values, masks, weights, additive)
            assert got.dtype == np.float32 and got.tobytes() == expected.astype(np.float32).tobytes()
        zero_fill = aggregate_sparse(base, values, masks, weights, False, "zero_fill")
        assert zero_fill.tobytes() == (num / sum(weights)).astype(np.float32).tobytes()


def _random_topk_mask(rng: np.random.Generator, size: int, density: float) -> np.ndarray:
    return topk_exact(rng.standard_normal(size).astype(np.float32), density)


@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.3, 0.6])
def test_sent_positions_are_as_small_as_the_full_search_on_topk_masks(density):
    from fl_strategies.codec import _sent_positions

    rng = np.random.default_rng(int(density * 100))
    for size in (300, 2560, 65536):
        mask = _random_topk_mask(rng, size, density)
        fast, full = _sent_positions(mask), encode_positions(mask)
        np.testing.assert_array_equal(decode_positions(fast, size), np.flatnonzero(mask))
        # Within 2 % (and 64 bytes, what a full search on a small mask may save) of
        # trying every zlib/LZMA form at their top presets.
        assert fast.size <= 1.02 * full.size + 64, (size, fast[0], fast.size, full[0], full.size)


def test_sent_positions_exploit_structure_where_a_mask_has_it():
    from fl_strategies.codec import _sent_positions

    rows = np.zeros((256, 256), bool)
    rows[::7] = True  # whole rows: long runs the run-length and LZMA forms compress
    clustered = np.zeros(65536, bool)
    clustered[1000:7000] = True
    periodic = np.zeros(65536, bool)
    periodic[::9] = True  # regular gaps: LZMA's match search wins by far
    for mask in (rows.reshape(-1), clustered, periodic, np.ones(4096, bool), np.zeros(4096, bool)):
        fast, full = _sent_positions(mask), encode_positions(mask)
        np.testing.assert_array_equal(decode_positions(fast, mask.size), np.flatnonzero(mask))
        # Runs and regular gaps go to the run-length forms: far below the plain bitmask,
        # and about as small as the full search.
        assert fast.size <= 1.02 * full.size + 64 and fast.size < 0.1 * (mask.size / 8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_sent_values_round_trip_bit_exact_in_each_dtype(dtype):
    rng = np.random.default_rng(2)
    for size, density in ((5, 0.4), (3000, 0.1), (65536, 0.1)):
        values = (rng.standard_normal(size) * 1e-2).astype(dtype)
        values[rng.random(size) < 0.1] = 0.0  # sent zeros
        values[rng.random(size) < 0.05] = -0.0
        mask = _random_topk_mask(rng, size, density)
        blob = encode_sent(values, mask)
        dense, sent = unpack_sent({"w" + SENT_SUFFIX: blob}, "w", (size,), dtype)
        np.testing.assert_array_equal(sent, mask)
        expected = np.where(mask, values, np.zeros((), dtype))
        assert dense.dtype == dtype and dense.tobytes() == expected.tobytes()


def test_sent_blob_is_smaller_than_level_9_over_all_planes_on_trained_like_weights():
    import zlib

    rng = np.random.default_rng(9)
    weights = (rng.standard_normal((256, 256)) * 0.05).astype(np.float32)
    mask = topk_exact(weights, 0.1)
    blob = encode_sent(weights, mask)
    sent = weights.reshape(-1)[mask.reshape(-1)].view(np.uint32)
    one_stream = zlib.compress(np.ascontiguousarray(sent.view(np.uint8).reshape(-1, 4).T).tobytes(), 9)
    values_bytes = blob.size - 4 - _position_set(blob).size - 1
    assert values_bytes < len(one_stream)  # one block per byte plane beats one level-9 stream
