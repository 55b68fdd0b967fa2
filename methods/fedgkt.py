"""``fedgkt``: a small edge CNN on clients, a large CNN on the server, distillation both ways.

:mod:`fl_strategies.fedgkt` never imports torch models; the builder makes the server
half (:class:`clients.methods.fedgkt.GKTServer`) from ``method.*`` and hands it over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clients.methods.fedgkt import FedGKTClient, GKTServer
from clients.models import MODEL_NAMES, build_model
from clients.train import make_optimizer, pick_device
from fl_strategies.fedgkt import FedGKT

from .registry import BuildContext, ConfigError, MethodConfig, MethodEntry, register, require


@dataclass
class FedGKTConfig(MethodConfig):
    """FedGKT (He et al., 2020); defaults as FedML's ``simulation/mpi/fedgkt``.

    One difference stays by default: FedML initialises the edge stem from a pretrained
    ResNet-56, fedlean from random weights (``edge_stem_checkpoint`` to match FedML).
    """

    name: str = "fedgkt"
    temperature: float = 3.0  # KD temperature T, both directions
    alpha: float = 1.0  # KD weight: client CE + alpha*KD; server KD + alpha*CE (FedML)
    epochs_client: int = 1  # edge epochs per round (replaces local_epochs)
    epochs_server: int = 20  # server epochs per round over all uploaded features
    distill_on_server: bool = True  # server loss adds KD toward the client logits
    float16: bool = True  # features/logits as float16 on the wire, both directions
    server_model: str = "resnet56_server"  # or resnet110_server
    server_optimizer: str = "adam"  # sgd | adam
    server_lr: float = 0.001
    server_momentum: float = 0.9  # sgd only
    server_weight_decay: float = 0.0001
    server_batch_size: int | None = None  # None = batch_size
    server_device: str | None = None  # None = the run's device (auto: CUDA when available)
    # State-dict file whose conv1/bn1/layer1 parameters initialise every edge model. FedML copies
    # them from a ResNet-56 pretrained on the dataset; None = random init (fedlean's default).
    edge_stem_checkpoint: str | None = None

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        require(self.temperature > 0, "method.temperature", self.temperature, "must be > 0")
        require(self.alpha >= 0, "method.alpha", self.alpha, "must be >= 0 (a loss weight)")
        for key in ("epochs_client", "epochs_server"):
            require(getattr(self, key) >= 1, f"method.{key}", getattr(self, key), "must be an integer >= 1")
        require(
            self.server_model in MODEL_NAMES,
            "method.server_model",
            self.server_model,
            f"unknown model; known: {sorted(MODEL_NAMES)}",
        )
        require(
            self.server_optimizer in ("sgd", "adam"),
            "method.server_optimizer",
            self.server_optimizer,
            "must be 'sgd' or 'adam'",
        )
        require(self.server_lr > 0, "method.server_lr", self.server_lr, "must be > 0")
        require(
            self.server_batch_size is None or self.server_batch_size >= 1,
            "method.server_batch_size",
            self.server_batch_size,
            "must be null or an integer >= 1",
        )
        # Deployed clients read their own copy; only a local run can check the server's.
        local = str(run.get("backend", {}).get("name", "inline")) != "deployment"
        require(
            self.edge_stem_checkpoint is None or not local or Path(self.edge_stem_checkpoint).is_file(),
            "method.edge_stem_checkpoint",
            self.edge_stem_checkpoint,
            "no such file",
        )


def edge_feature_shape(edge: torch.nn.Module, dims: Mapping[str, Any]) -> tuple[int, ...]:
    """Shape of one sample's features from the edge model; ConfigError if it has none."""
    size = int(dims["image_size"])
    was_training = edge.training
    edge.eval()
    with torch.no_grad():
        out = edge(torch.zeros(1, int(dims["in_channels"]), size, size))
    edge.train(was_training)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ConfigError(
            f"model.name={dims['name']!r}: fedgkt needs an edge model whose forward "
            "returns (logits, features), e.g. model=resnet8_56"
        )
    return tuple(out[1].shape[1:])


def build_fedgkt(cfg: FedGKTConfig, ctx: BuildContext) -> FedGKT:
    """FedGKT strategy with its server model, optimizer and device from ``cfg``."""
    dims = ctx.dims
    feature_shape = edge_feature_shape(ctx.model(), dims)
    server_model = build_model(
        cfg.server_model, feature_shape[0], int(dims["num_classes"]), int(dims["image_size"])
    )
    device = pick_device(str(cfg.server_device or ctx.run.get("device", "auto")))
    optimizer = make_optimizer(
        server_model.parameters(),
        cfg.server_optimizer,
        cfg.server_lr,
        cfg.server_momentum,
        cfg.server_weight_decay,
    )
    server = GKTServer(
        server_model,
        optimizer,
        device,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        epochs=cfg.epochs_server,
        batch_size=int(cfg.server_batch_size or ctx.run["batch_size"]),
        distill=cfg.distill_on_server,
        seed=int(ctx.run["seed"]),
        feature_shape=feature_shape,
        name=cfg.server_model,
    )
    return FedGKT(
        server=server,
        num_classes=int(dims["num_classes"]),
        feature_shape=feature_shape,
        float16=cfg.float16,
        **ctx.common,
    )


register(
    MethodEntry(
        name="fedgkt",
        config=FedGKTConfig,
        client=FedGKTClient,
        build=build_fedgkt,
        summary="edge CNN + server CNN, distillation both ways",
    )
)
