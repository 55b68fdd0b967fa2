"""The server keeps one numpy copy of the global model: conversions per round are pinned."""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

import fl_strategies
from clients.methods.gwpf import GWPFClient
from fl_strategies import FedAvg
from fl_strategies.base import numpy_to_arrayrecord
from fl_strategies.codec import decode_arrays, encode_arrays
from fl_strategies.gwpf import GWPF
from simulations.runtimes.inline import InlineGrid
from tests.freezing_helpers import run_real_clients

COUNTED = ("arrayrecord_to_numpy", "numpy_to_arrayrecord", "encode_arrays")


@pytest.fixture
def conversions(monkeypatch):
    """Counts of the conversion helpers as every server module calls them."""
    counts: Counter[str] = Counter()
    for info in pkgutil.iter_modules(fl_strategies.__path__):
        module = importlib.import_module(f"fl_strategies.{info.name}")
        for name in COUNTED:
            if hasattr(module, name):
                original = getattr(module, name)

                def counted(*args, _original=original, _name=name, **kwargs):
                    counts[_name] += 1
                    return _original(*args, **kwargs)

                monkeypatch.setattr(module, name, counted)
    return counts


def echo_client(message, context):
    if message.metadata.message_type == "evaluate":
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": 5, "loss": 1.0})}), reply_to=message
        )
    arrays = decode_arrays(message.content.array_records["arrays"])
    return Message(
        RecordDict(
            {
                "arrays": encode_arrays({k: v + 1 for k, v in arrays.items()}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        ),
        reply_to=message,
    )


def fedavg_counts(rounds: int, counts: Counter[str]) -> dict[str, int]:
    counts.clear()
    initial = numpy_to_arrayrecord({"w": np.ones((4, 3), np.float32)})
    strategy = FedAvg(min_available_nodes=3, fraction_evaluate=1.0)
    strategy.start(
        InlineGrid(echo_client, 3),
        initial,
        num_rounds=rounds,
        evaluate_fn=lambda server_round, arrays: MetricRecord({"x": 1.0}),
    )
    return {name: counts[name] - (1 if name == "numpy_to_arrayrecord" else 0) for name in COUNTED}


def gwpf_counts(rounds: int, counts: Counter[str]) -> dict[str, int]:
    counts.clear()
    strategy = GWPF(min_available_nodes=3, fraction_evaluate=1.0, threshold=0.9)
    run_real_clients(strategy, GWPFClient, {"name": "gwpf"}, num_nodes=3, rounds=rounds)
    return {name: counts[name] - (1 if name == "numpy_to_arrayrecord" else 0) for name in COUNTED}


def per_round(run, counts):
    two, three = run(2, counts), run(3, counts)
    return {name: three[name] - two[name] for name in COUNTED}


def test_fedavg_converts_the_global_model_once_each_way_per_round(conversions):
    # Before: 3 ArrayRecord->numpy, 2 numpy->ArrayRecord and 2 codec encodes per round.
    assert per_round(fedavg_counts, conversions) == {
        "arrayrecord_to_numpy": 0,  # replies are decoded by the codec, the global stays numpy
        "numpy_to_arrayrecord": 1,  # the round's result for Flower's loop and evaluate_fn
        "encode_arrays": 1,  # one downlink, shared by the training and evaluation messages
    }
    # Once per run: the initial model to numpy.
    assert fedavg_counts(1, conversions)["arrayrecord_to_numpy"] == 1


def test_gwpf_converts_the_global_model_once_each_way_per_round(conversions):
    # Before: 2 ArrayRecord->numpy, 1 numpy->ArrayRecord and 4 codec encodes per round.
    assert per_round(gwpf_counts, conversions) == {
        "arrayrecord_to_numpy": 0,
        "numpy_to_arrayrecord": 1,
        # The partial payload, and one whole-model encoding shared by the evaluation
        # downlink and the dense-equivalent measurement.
        "encode_arrays": 2,
    }
