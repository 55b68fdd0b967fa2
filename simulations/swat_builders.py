"""Strategy builders of the SWAT-based methods (``swat``, ``zerofl``).

They need the names of the tensors SWAT sparsifies, which depend on the model: the
builder derives them with the same rule the clients use (``clients.swat``), so the
server never imports client code at run time beyond this composition step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clients.models import build_model
from clients.swat import swat_layer_names
from fl_strategies.swat import Swat
from fl_strategies.zerofl import ZeroFL


def swat_weight_keys(cfg: Mapping[str, Any]) -> list[str]:
    """State-dict names of the weights of the layers SWAT replaces in this run's model."""
    from simulations.app.compose import model_dims  # compose imports the registry that imports us

    dims = model_dims(cfg)
    model = build_model(dims["name"], dims["in_channels"], dims["num_classes"],
                        dims["image_size"])
    method = cfg["method"]
    names = swat_layer_names(model, bool(method.get("sparsify_first", False)),
                             bool(method.get("sparsify_last", True)))
    return [f"{name}.weight" for name in names]


def swat_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments of :class:`fl_strategies.swat.Swat` from ``cfg['method']``."""
    method = cfg["method"]
    return {"sparsity": float(method.get("sparsity", 0.9)),
            "sparse_keys": swat_weight_keys(cfg),
            "eval_topk": bool(method.get("eval_topk", True))}


def build_swat(cfg: Mapping[str, Any], common: dict[str, Any]) -> Swat:
    """``method=swat``: SWAT-trained clients, dense upload."""
    return Swat(**swat_kwargs(cfg), **common)


def build_zerofl(cfg: Mapping[str, Any], common: dict[str, Any]) -> ZeroFL:
    """``method=zerofl``: SWAT-trained clients, sparse upload."""
    method = cfg["method"]
    return ZeroFL(uplink=str(method.get("uplink", "topk_weights")),
                  mask_ratio=float(method.get("mask_ratio", 0.0)),
                  aggregation=str(method.get("aggregation", "sender_mean")), **swat_kwargs(cfg),
                  **common)
