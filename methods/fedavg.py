"""``fedavg`` and ``fedprox``: the dense baselines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clients.methods.base import ClientMethod
from clients.methods.fedprox import FedProxClient
from fl_strategies import FedAvg, FedProx

from .registry import BuildContext, MethodConfig, MethodEntry, register, require


@dataclass
class FedAvgConfig(MethodConfig):
    """FedAvg (McMahan et al., 2017): no knobs beyond the run's."""

    name: str = "fedavg"


@dataclass
class FedProxConfig(MethodConfig):
    """FedProx (Li et al., 2020): local loss + ``proximal_mu / 2 * ||w - w_global||^2``."""

    name: str = "fedprox"
    proximal_mu: float = 0.01

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        require(self.proximal_mu >= 0, "method.proximal_mu", self.proximal_mu, "must be >= 0")


register(
    MethodEntry(
        name="fedavg",
        config=FedAvgConfig,
        client=ClientMethod,
        summary="FedAvg, dense both ways",
        build=lambda cfg, ctx: FedAvg(**ctx.common),
    )
)
register(
    MethodEntry(
        name="fedprox",
        config=FedProxConfig,
        client=FedProxClient,
        summary="FedAvg + proximal term",
        build=lambda cfg, ctx: FedProx(proximal_mu=cfg.proximal_mu, **ctx.common),
    )
)

__all__ = ["BuildContext", "FedAvgConfig", "FedProxConfig"]
