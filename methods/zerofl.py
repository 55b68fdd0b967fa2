"""``swat`` and ``zerofl``: SWAT-trained clients, dense (SWAT-in-FL) or sparse (ZeroFL) uplink.

Both need the names of the tensors SWAT sparsifies, which depend on the model: the
builder derives them with the rule the clients use (:func:`clients.swat.swat_layer_names`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clients.methods.swat import SwatClient
from clients.methods.zerofl import ZeroFLClient
from clients.swat import swat_layer_names
from fl_strategies.swat import Swat
from fl_strategies.zerofl import AGGREGATIONS, UPLINKS, ZeroFL

from .registry import BuildContext, MethodConfig, MethodEntry, register, require


@dataclass
class SwatMethodConfig(MethodConfig):
    """SWAT in FL: clients train with top-K weights and top-K activations, dense upload."""

    name: str = "swat"
    sparsity: float = 0.9  # fraction of weights and saved activations dropped per SWAT layer
    topk_period: int = 1  # recompute top-K every N batches: 1 = every batch, as the reference's
    #                                Linear (custom_linear.py); > 1 = ours: reuse in between (ref. Conv: 10)
    topk_warmup: int = 0  # ... and at each of the first N batches of a round (reference: none)
    sparsify_first: bool = False  # SWAT the first Conv/Linear too (reference: false)
    sparsify_last: bool = True  # SWAT the last Conv/Linear, the classifier (reference: true)
    eval_topk: bool = True  # evaluate with the top-K weights, as SWAT's inference does

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        require(0.0 <= self.sparsity < 1.0, "method.sparsity", self.sparsity, "must be in [0, 1)")
        require(self.topk_period >= 1, "method.topk_period", self.topk_period, "must be an integer >= 1")
        require(self.topk_warmup >= 0, "method.topk_warmup", self.topk_warmup, "must be an integer >= 0")

    def strategy_kwargs(self, ctx: BuildContext) -> dict[str, Any]:
        """Constructor arguments of :class:`~fl_strategies.swat.Swat`."""
        names = swat_layer_names(ctx.model(), self.sparsify_first, self.sparsify_last)
        return {
            "sparsity": self.sparsity,
            "sparse_keys": [f"{name}.weight" for name in names],
            "eval_topk": self.eval_topk,
            **ctx.common,
        }


@dataclass
class ZeroFLConfig(SwatMethodConfig):
    """ZeroFL: SWAT clients upload only their top-K (plus ``mask_ratio``) positions."""

    name: str = "zerofl"
    sparsity: float = 0.9  # SWAT sparsity (paper: 0.9 and 0.95)
    uplink: str = "topk_weights"  # topk_weights | diff_topk_weights | topk_diff
    mask_ratio: float = 0.0  # extra fraction sent: density = (1 - sparsity) + mask_ratio
    aggregation: str = "sender_mean"  # sender_mean: average over senders, unsent keep global (our
    #                                   reading); zero_fill: FedAvg with unsent = 0

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        super().check(run)
        require(self.uplink in UPLINKS, "method.uplink", self.uplink, f"must be one of {', '.join(UPLINKS)}")
        require(0.0 <= self.mask_ratio <= 1.0, "method.mask_ratio", self.mask_ratio, "must be in [0, 1]")
        require(
            self.aggregation in AGGREGATIONS,
            "method.aggregation",
            self.aggregation,
            f"must be one of {', '.join(AGGREGATIONS)}",
        )


register(
    MethodEntry(
        name="swat",
        config=SwatMethodConfig,
        client=SwatClient,
        summary="SWAT clients, dense upload",
        build=lambda cfg, ctx: Swat(**cfg.strategy_kwargs(ctx)),
    )
)
register(
    MethodEntry(
        name="zerofl",
        config=ZeroFLConfig,
        client=ZeroFLClient,
        summary="SWAT clients, sparse upload",
        build=lambda cfg, ctx: ZeroFL(
            uplink=cfg.uplink,
            mask_ratio=cfg.mask_ratio,
            aggregation=cfg.aggregation,
            **cfg.strategy_kwargs(ctx),
        ),
    )
)
