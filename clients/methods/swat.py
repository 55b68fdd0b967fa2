"""SWAT's client: swap Conv2d/Linear for SWAT layers, train, upload the dense model."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch

from fl_strategies.swat import FLOPS_DENSE_KEY, FLOPS_SWAT_KEY

from ..flops import count_flops
from ..models import build_from_dims
from ..swat import SwatConfig, swat_flops, swat_layer_names, swatify
from ..train import LoopStats
from .base import ClientJob, ClientMethod


def swat_config(method: dict[str, Any]) -> SwatConfig:
    """SWAT layer settings from the method's settings (:class:`methods.zerofl.SwatMethodConfig`)."""
    return SwatConfig(
        sparsity=float(method["sparsity"]),
        period=int(method["topk_period"]),
        warmup=int(method["topk_warmup"]),
    )


def swat_names(model: torch.nn.Module, method: dict[str, Any]) -> list[str]:
    """Module names SWAT replaces under the method's settings."""
    return swat_layer_names(model, bool(method["sparsify_first"]), bool(method["sparsify_last"]))


@lru_cache(maxsize=8)
def dense_train_flops_per_sample(model_json: str) -> int:
    """Dense forward+backward FLOPs of one sample (``torch.utils.flop_counter``)."""
    dims = json.loads(model_json)
    model = build_from_dims(dims)
    sample = torch.zeros(1, int(dims["in_channels"]), int(dims["image_size"]), int(dims["image_size"]))
    return count_flops(model, sample, training=True)


class SwatClient(ClientMethod):
    """Trains with SWAT layers (``clients.swat``) and sends the whole model back.

    Method settings: ``sparsity``, ``topk_period``, ``topk_warmup``,
    ``sparsify_first``, ``sparsify_last``. Evaluation also runs the SWAT model, so it
    sees the top-K weights, as SWAT's inference does.
    """

    name = "swat"

    def receive(self, job: ClientJob) -> None:
        """Load the global model, then swap its layers for SWAT layers."""
        super().receive(job)
        self.swat_names = swat_names(job.model, self.method)
        swatify(job.model, swat_config(self.method), self.swat_names)

    def reply_metrics(self, job: ClientJob, stats: LoopStats) -> dict[str, float | int]:
        """Training FLOPs of the round: dense, and with SWAT's sparse operations.

        Dense = ``torch.utils.flop_counter`` per sample x samples trained. SWAT = dense
        minus the SWAT layers' dense share plus what their nonzeros need (counted by the
        layers during training). Masked dense kernels run here: no real speed-up.
        """
        samples = len(job.train_set) * int(self.settings["train"]["epochs"])
        per_sample = dense_train_flops_per_sample(json.dumps(self.settings["model"], sort_keys=True))
        dense = per_sample * samples
        layers_dense, layers_swat = swat_flops(job.model)
        return {FLOPS_DENSE_KEY: float(dense), FLOPS_SWAT_KEY: float(dense - layers_dense + layers_swat)}
