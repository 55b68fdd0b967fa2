"""Client side of a method: what a client does with a train or evaluate message.

:class:`ClientMethod` is plain FedAvg: load the global model, train with the one
loop, send the whole model back through the codec. Methods subclass it and override
the hooks that differ (:meth:`receive`, :meth:`train_hooks`, :meth:`reply_arrays`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fl_strategies.codec import decode_arrays, encode_arrays
from fl_strategies.wire import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, NUM_EXAMPLES_KEY

from ..data.batches import batch_loader
from ..train import LoopStats, TrainHooks, evaluate_model, make_optimizer, train_loop


@dataclass
class ClientJob:
    """Everything one ClientApp call works with."""

    settings: Mapping[str, Any]  # the run's client-side settings (from the message)
    model: nn.Module  # a fresh copy of the model, on CPU
    train_set: TensorDataset
    test_set: TensorDataset
    device: torch.device
    content: RecordDict  # the server's message content
    context: Context  # node_config and the node's persistent state
    server_round: int
    partition_id: int

    @property
    def config(self) -> ConfigRecord:
        """The ConfigRecord the server sent."""
        return self.content.config_records[CONFIG_KEY]

    def loader(self, train: bool = True) -> DataLoader:
        """Seeded loader: the same seed, round and partition give the same batches."""
        train_cfg = self.settings["train"]
        generator = torch.Generator().manual_seed(self.batch_seed())
        dataset = self.train_set if train else self.test_set
        return batch_loader(
            dataset, batch_size=int(train_cfg["batch_size"]), shuffle=train, generator=generator
        )

    def batch_seed(self) -> int:
        """Seed of this client's randomness this round."""
        return int(self.settings["seed"]) * 1_000_003 + self.server_round * 1009 + self.partition_id


def model_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state dict as numpy arrays (parameters and buffers)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray], strict: bool = True) -> None:
    """Load numpy arrays into the model's state dict."""
    state = {k: torch.from_numpy(np.require(v, requirements="C")) for k, v in arrays.items()}
    model.load_state_dict(state, strict=strict)


class ClientMethod:
    """FedAvg's client: the base every method's client side builds on.

    Parameters
    ----------
    settings : Mapping[str, Any]
        The run's client-side settings, as sent in the message (see
        ``simulations.app.compose.client_settings``).
    """

    name = "fedavg"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        self.method = dict(settings.get("method", {}))

    # ------------------------------------------------------------------ hooks
    def receive(self, job: ClientJob) -> None:
        """Load the global model the server sent into ``job.model``."""
        load_arrays(job.model, decode_arrays(job.content.array_records[ARRAYS_KEY]))

    def train_hooks(self, job: ClientJob) -> TrainHooks:
        """Hooks for the training loop (default: none)."""
        return TrainHooks()

    def reply_arrays(self, job: ClientJob, stats: LoopStats) -> ArrayRecord:
        """What goes back up (default: the whole model through the codec)."""
        return encode_arrays(model_arrays(job.model), encoding=self.settings.get("encoding", "auto"))

    def reply_metrics(self, job: ClientJob, stats: LoopStats) -> dict[str, float | int]:
        """Extra metrics to report (default: none)."""
        return {}

    def make_optimizer(self, job: ClientJob) -> torch.optim.Optimizer:
        """The optimizer from the run's training settings."""
        cfg = self.settings["train"]
        return make_optimizer(
            job.model.parameters(),
            cfg["optimizer"],
            float(cfg["lr"]),
            float(cfg.get("momentum", 0.0)),
            float(cfg.get("weight_decay", 0.0)),
        )

    # ------------------------------------------------------------- the calls
    def train(self, job: ClientJob) -> RecordDict:
        """Receive, train, reply."""
        self.receive(job)
        job.model.to(job.device)
        stats = train_loop(
            job.model,
            job.loader(train=True),
            self.make_optimizer(job),
            int(self.settings["train"]["epochs"]),
            job.device,
            self.train_hooks(job),
        )
        job.model.cpu()
        metrics = {
            NUM_EXAMPLES_KEY: len(job.train_set),
            "loss": stats.loss,
            "accuracy": stats.accuracy,
            "seconds": stats.seconds,
        }
        metrics.update(self.reply_metrics(job, stats))
        return RecordDict({ARRAYS_KEY: self.reply_arrays(job, stats), METRICS_KEY: MetricRecord(metrics)})

    def load_for_evaluation(self, job: ClientJob) -> None:
        """Put the model to evaluate into ``job.model`` (default: the received one)."""
        self.receive(job)

    def evaluate(self, job: ClientJob) -> RecordDict:
        """Evaluate the model on the client's local test split."""
        self.load_for_evaluation(job)
        stats = evaluate_model(job.model, job.loader(train=False), job.device)
        return RecordDict(
            {
                METRICS_KEY: MetricRecord(
                    {NUM_EXAMPLES_KEY: stats.num_examples, "loss": stats.loss, "accuracy": stats.accuracy}
                )
            }
        )
