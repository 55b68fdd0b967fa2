"""Base strategy: reply validation, byte accounting, aggregation (hand-made clients)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fl_strategies import FedAvg, FedProx
from fl_strategies.base import TooFewRepliesError, numpy_to_arrayrecord, weighted_mean
from fl_strategies.codec import decode_arrays, encode_arrays
from fl_strategies.flwr_compat import nested_objects
from simulations.runtimes.inline import InlineGrid

GLOBAL = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32), "steps": np.array(0, np.int64)}


def good_reply(message, node_index, scale=1.0):
    arrays = {
        k: (v + scale * (node_index + 1)).astype(v.dtype)
        for k, v in decode_arrays(message.content.array_records["arrays"]).items()
    }
    return RecordDict(
        {
            "arrays": encode_arrays(arrays),
            "metrics": MetricRecord({"num-examples": 10 * (node_index + 1), "loss": 0.5, "accuracy": 0.8}),
        }
    )


def make_client(bad_kinds):
    """Client app: node i replies with bad_kinds[i] (or a good reply)."""

    def client_app(message, context):
        index = context.node_config["partition-id"]
        kind = bad_kinds.get(index)
        if message.metadata.message_type == "evaluate":
            return Message(
                RecordDict({"metrics": MetricRecord({"num-examples": 5, "loss": 1.0, "accuracy": 0.5})}),
                reply_to=message,
            )
        if kind == "raise":
            raise RuntimeError("client crashed")
        content = good_reply(message, index)
        arrays = decode_arrays(content.array_records["arrays"])
        metrics = content.metric_records["metrics"]
        if kind == "missing_metrics":
            content = RecordDict({"arrays": content.array_records["arrays"]})
        elif kind == "missing_arrays":
            content = RecordDict({"metrics": metrics})
        elif kind == "wrong_shape":
            arrays["w"] = np.ones((3, 4), np.float32)
            content = RecordDict({"arrays": encode_arrays(arrays), "metrics": metrics})
        elif kind == "wrong_dtype":
            arrays["w"] = np.ones((4, 3), np.int32)
            content = RecordDict({"arrays": encode_arrays(arrays), "metrics": metrics})
        elif kind == "nan":
            arrays["b"] = np.array([0, np.nan, 0], np.float32)
            content = RecordDict({"arrays": encode_arrays(arrays), "metrics": metrics})
        elif kind == "missing_key":
            del arrays["b"]
            content = RecordDict({"arrays": encode_arrays(arrays), "metrics": metrics})
        elif kind == "garbage":
            record = ArrayRecord({"w@sparse": Array(np.array([9, 9, 9], np.uint8))})
            content = RecordDict({"arrays": record, "metrics": metrics})
        elif kind in ("zero_examples", "huge_examples"):
            value = 0 if kind == "zero_examples" else 10**9
            content = RecordDict(
                {"arrays": content.array_records["arrays"], "metrics": MetricRecord({"num-examples": value})}
            )
        return Message(content, reply_to=message)

    return client_app


BAD_KINDS = [
    "raise",
    "missing_metrics",
    "missing_arrays",
    "wrong_shape",
    "wrong_dtype",
    "nan",
    "missing_key",
    "garbage",
    "zero_examples",
    "huge_examples",
]


def run_rounds(strategy, client_app, num_nodes, rounds=1):
    grid = InlineGrid(client_app, num_nodes)
    records = []
    result = strategy.start(
        grid, numpy_to_arrayrecord(GLOBAL), num_rounds=rounds, on_round_end=records.append
    )
    return result, records


def test_each_bad_reply_kind_is_dropped_with_a_log_line_and_round_completes(caplog):
    bad = {i: kind for i, kind in enumerate(BAD_KINDS)}
    num_nodes = len(BAD_KINDS) + 2  # two good clients: indices 10 and 11
    strategy = FedAvg(
        min_available_nodes=num_nodes, min_train_nodes=num_nodes, fraction_evaluate=0.0, max_num_examples=1000
    )
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result, records = run_rounds(strategy, make_client(bad), num_nodes)
    assert records[-1]["dropped"] == len(BAD_KINDS)
    dropped_text = "\n".join(strategy.dropped[1])
    for needle in [
        "client crashed",
        "no MetricRecord",
        "no ArrayRecord",
        "shape",
        "dtype",
        "non-finite",
        "missing ['b']",
        "undecodable",
        "not a positive",
        "implausible",
    ]:
        assert needle in dropped_text, needle
    assert sum("dropped reply from node" in r.getMessage() for r in caplog.records) == len(BAD_KINDS)
    # The round completed with the two good replies: weights 110 and 120, offsets 11 and 12.
    final = {k: v.numpy() for k, v in result.arrays.items()}
    expected_offset = (110 * 11 + 120 * 12) / 230
    np.testing.assert_allclose(final["w"], 1 + expected_offset, rtol=1e-6)
    assert final["steps"].dtype == np.int64 and final["steps"] == round(expected_offset)


def test_all_replies_bad_stops_the_run_by_default():
    strategy = FedAvg(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0)
    with pytest.raises(TooFewRepliesError, match=r"round 1: 0 usable .* of 2 sampled .*2 dropped"):
        run_rounds(strategy, make_client({0: "nan", 1: "raise"}), 2)


def test_all_replies_bad_with_skip_keeps_previous_model():
    strategy = FedAvg(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0)
    grid = InlineGrid(make_client({0: "nan", 1: "raise"}), 2)
    records: list = []
    result = strategy.start(
        grid,
        numpy_to_arrayrecord(GLOBAL),
        num_rounds=1,
        on_round_end=records.append,
        on_too_few_replies="skip",
    )
    assert records[-1]["dropped"] == 2 and records[-1]["skipped"] is True
    assert len(result.arrays) == 0  # Flower's Result: no round produced a model
    np.testing.assert_array_equal(strategy.global_arrays["w"], GLOBAL["w"])


def _flower_size(message):
    return sum(len(obj.deflate()) for obj in nested_objects(message).values())


def test_bytes_are_counted_from_flowers_serialization_of_every_message():
    sent, received = [], []

    def client_app(message, context):
        sent.append(_flower_size(message))
        reply = Message(good_reply(message, context.node_config["partition-id"]), reply_to=message)
        received.append(_flower_size(reply))
        return reply

    strategy = FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0)
    _, records = run_rounds(strategy, client_app, 3, rounds=2)
    payload = 4 * (12 + 3) + 8
    for rnd in (1, 2):
        record = records[rnd]
        assert record["bytes_down"] == sum(sent[3 * (rnd - 1) : 3 * rnd])
        assert record["bytes_up"] == sum(received[3 * (rnd - 1) : 3 * rnd])
        # three messages of the model plus per-array and per-message overhead
        assert 3 * payload < record["bytes_down"] < 3 * (payload + 3 * 600 + 2000)
    assert records[2]["cum_bytes_up"] == records[1]["bytes_up"] + records[2]["bytes_up"]


def test_evaluation_bytes_are_kept_apart_from_training_bytes():
    strategy = FedAvg(min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2)
    _, records = run_rounds(strategy, make_client({}), 2)
    assert records[1]["eval_bytes_down"] > 0 and records[1]["eval_bytes_up"] > 0
    assert records[1]["client_accuracy"] == pytest.approx(0.5)


def test_fedprox_sends_proximal_mu():
    seen = []

    def client_app(message, context):
        seen.append(message.content.config_records["config"]["proximal-mu"])
        return Message(good_reply(message, 0), reply_to=message)

    strategy = FedProx(proximal_mu=0.3, min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0)
    run_rounds(strategy, client_app, 2)
    assert seen == [0.3, 0.3]
    with pytest.raises(ValueError, match="proximal_mu"):
        FedProx(proximal_mu=-1)


def test_weighted_mean_by_hand():
    a = {"x": np.array([1.0, 2.0], np.float32)}
    b = {"x": np.array([3.0, 6.0], np.float32)}
    np.testing.assert_allclose(weighted_mean([a, b], [1, 3])["x"], [2.5, 5.0])


def test_run_config_travels_in_every_message():
    seen = []

    def client_app(message, context):
        seen.append(message.content.config_records["config"]["fedlean-run"])
        return Message(good_reply(message, 0), reply_to=message)

    strategy = FedAvg(
        client_config={"method": {"name": "fedavg"}},
        min_available_nodes=2,
        min_train_nodes=2,
        fraction_evaluate=0.0,
    )
    run_rounds(strategy, client_app, 2)
    assert seen == ['{"method": {"name": "fedavg"}}'] * 2


class PerNodeFedAvg(FedAvg):
    """FedAvg whose nodes each get their own marker array, train and evaluate."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.payload_calls: list[tuple[int, int, str]] = []
        self.decoded: list[tuple[int, str]] = []

    def node_payload(self, server_round, node_id, message_type, arrays, config):
        self.payload_calls.append((server_round, node_id, message_type))
        marked = ArrayRecord(dict(arrays.items()))
        marked["node"] = Array(np.array([node_id], np.int64))
        return RecordDict({"arrays": marked, "config": config})

    def expected_reply_arrays(self, server_round):
        return {**super().expected_reply_arrays(server_round), "node": (1,)}

    def decode_reply(self, server_round, content, key="arrays", expected_keys=None):
        self.decoded.append((server_round, key))
        return super().decode_reply(server_round, content, key, expected_keys)

    def aggregate_replies(self, server_round, replies):
        for reply in replies:
            assert int(reply.arrays["node"][0]) == reply.node_id
        merged = super().aggregate_replies(server_round, replies)
        return {k: v for k, v in merged.items() if k != "node"}


def test_node_payload_reaches_each_sampled_node_and_every_reply_decodes_through_the_hook():
    seen: dict[str, dict[int, int]] = {"train": {}, "evaluate": {}}

    def client_app(message, context):
        node = int(decode_arrays(message.content.array_records["arrays"])["node"][0])
        kind = message.metadata.message_type
        seen[kind][message.metadata.dst_node_id] = node
        if kind == "evaluate":
            return Message(
                RecordDict({"metrics": MetricRecord({"num-examples": 5, "loss": 1.0})}), reply_to=message
            )
        content = good_reply(message, context.node_config["partition-id"])
        arrays = {**decode_arrays(content.array_records["arrays"]), "node": np.array([node])}
        content["arrays"] = encode_arrays(arrays)
        return Message(content, reply_to=message)

    strategy = PerNodeFedAvg(min_available_nodes=3, fraction_train=1.0, fraction_evaluate=1.0)
    run_rounds(strategy, client_app, 3, rounds=2)
    # Each sampled node received its own payload, both kinds of message, both rounds.
    for kind in ("train", "evaluate"):
        assert len(seen[kind]) == 3 and all(dst == node for dst, node in seen[kind].items())
    assert sorted(c[2] for c in strategy.payload_calls) == ["evaluate"] * 6 + ["train"] * 6
    # Every training reply was decoded through decode_reply.
    assert strategy.decoded == [(1, "arrays")] * 3 + [(2, "arrays")] * 3


def test_scalar_metric_reads_numbers_and_ignores_lists_and_flags():
    from fl_strategies.base import scalar_metric

    metrics = MetricRecord({"flops": 12, "loss": 0.5, "odd": [1.0, 2.0]})
    assert scalar_metric(metrics, "flops") == 12.0
    assert scalar_metric(metrics, "loss") == 0.5
    assert scalar_metric(metrics, "odd", default=-1.0) == -1.0  # float([..]) would raise
    assert scalar_metric(metrics, "absent") == 0.0
