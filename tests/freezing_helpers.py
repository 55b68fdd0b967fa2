"""Shared helpers of the GWPF/APF tests: a tiny model, real clients on an InlineGrid."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Message
from torch import nn
from torch.utils.data import TensorDataset

from clients.methods import ClientJob, model_arrays
from fl_strategies.base import ParsedReply, numpy_to_arrayrecord
from fl_strategies.partial_sync import synced_positions
from simulations.runtimes.inline import InlineGrid

SETTINGS = {
    "train": {
        "epochs": 1,
        "batch_size": 8,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.0,
        "weight_decay": 0.0,
    },
    "seed": 0,
}


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def reply(node_id: int, num_examples: int, **arrays: np.ndarray) -> ParsedReply:
    from flwr.app import MetricRecord

    return ParsedReply(
        node_id=node_id,
        num_examples=num_examples,
        arrays=dict(arrays),
        metrics=MetricRecord({"num-examples": num_examples}),
    )


def method_defaults(method_settings):
    """A method's settings as clients get them: the entry's defaults, then ``method_settings``."""
    import dataclasses

    from methods import get_method

    return {**dataclasses.asdict(get_method(method_settings["name"]).config()), **method_settings}


def run_real_clients(strategy, client_cls, method_settings, num_nodes=3, rounds=4, on_receive=None):
    """Run a strategy with real client classes on a tiny model; return records and grid.

    ``on_receive(strategy, job, client)`` is called right after each client applied a
    training message.
    """
    settings = {**SETTINGS, "method": method_defaults(method_settings)}
    generator = torch.Generator().manual_seed(1)
    data = [
        TensorDataset(
            torch.randn(24, 4, generator=generator), torch.randint(0, 3, (24,), generator=generator)
        )
        for _ in range(num_nodes)
    ]

    class Recording(client_cls):
        def receive(self, job):
            super().receive(job)
            if on_receive is not None and job.content.config_records["config"].get("sync-full") is not None:
                on_receive(strategy, job, self)

    def client_app(message, context):
        config = message.content.config_records["config"]
        index = context.node_config["partition-id"]
        job = ClientJob(
            settings=settings,
            model=tiny_model(),
            train_set=data[index],
            test_set=data[index],
            device=torch.device("cpu"),
            content=message.content,
            context=context,
            server_round=int(config.get("server-round", 0)),
            partition_id=index,
        )
        client = Recording(settings)
        if message.metadata.message_type == "train":
            return Message(client.train(job), reply_to=message)
        return Message(client.evaluate(job), reply_to=message)

    grid = InlineGrid(client_app, num_nodes)
    records: list[dict] = []
    result = strategy.start(
        grid, numpy_to_arrayrecord(model_arrays(tiny_model())), num_rounds=rounds, on_round_end=records.append
    )
    return records, grid, result


def check_consistent_view(strategy, job, client):
    """After receive, the node's model equals the global model where it must."""
    local = model_arrays(job.model)
    glob = strategy.global_arrays
    if job.content.config_records["config"]["sync-full"]:
        for key, value in glob.items():
            np.testing.assert_array_equal(local[key], value, err_msg=key)
    else:
        layout = strategy.layout
        synced = synced_positions(strategy.known_masks)
        np.testing.assert_array_equal(layout.flatten(local)[synced], layout.flatten(glob)[synced])
        for key in strategy.buffer_keys:
            np.testing.assert_array_equal(local[key], glob[key], err_msg=key)
    for name, mask in strategy.masks.items():
        np.testing.assert_array_equal(client.masks[name], mask, err_msg=name)
