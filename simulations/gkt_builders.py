"""Composition of a FedGKT run: the server model, its optimizer and device, injected.

:mod:`fl_strategies.fedgkt` never imports ``clients``; this builder (registered in
:data:`simulations.methods.STRATEGY_BUILDERS`) makes the server half
(:class:`clients.methods.fedgkt.GKTServer`) from ``method.*`` and hands it over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from clients.methods.fedgkt import GKTServer
from clients.models import build_model
from clients.train import make_optimizer, pick_device
from fl_strategies.fedgkt import FedGKT
from simulations.app.config import ConfigError


def edge_feature_shape(dims: Mapping[str, Any]) -> tuple[int, ...]:
    """Shape of one sample's features from the edge model; ConfigError if it has none."""
    edge = build_model(dims["name"], int(dims["in_channels"]), int(dims["num_classes"]),
                       int(dims["image_size"])).eval()
    size = int(dims["image_size"])
    with torch.no_grad():
        out = edge(torch.zeros(1, int(dims["in_channels"]), size, size))
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ConfigError(f"model.name={dims['name']!r}: fedgkt needs an edge model whose forward "
                          "returns (logits, features), e.g. model=resnet8_56")
    return tuple(out[1].shape[1:])


def build_fedgkt(cfg: Mapping[str, Any], common: dict[str, Any]) -> FedGKT:
    """FedGKT strategy with its server model, optimizer and device from ``cfg``."""
    method = cfg["method"]
    dims = common["client_config"]["model"]
    feature_shape = edge_feature_shape(dims)
    server_model = build_model(method["server_model"], feature_shape[0], int(dims["num_classes"]),
                               int(dims["image_size"]))
    device = pick_device(str(method.get("server_device") or cfg.get("device", "auto")))
    optimizer = make_optimizer(
        server_model.parameters(), method["server_optimizer"], float(method["server_lr"]),
        float(method.get("server_momentum", 0.0)), float(method.get("server_weight_decay", 0.0)))
    server = GKTServer(
        server_model, optimizer, device,
        temperature=float(method["temperature"]), alpha=float(method["alpha"]),
        epochs=int(method["epochs_server"]),
        batch_size=int(method.get("server_batch_size") or cfg["batch_size"]),
        distill=bool(method["distill_on_server"]), seed=int(cfg["seed"]),
        feature_shape=feature_shape, name=method["server_model"])
    return FedGKT(server=server, num_classes=int(dims["num_classes"]),
                  feature_shape=feature_shape, float16=bool(method["float16"]), **common)
