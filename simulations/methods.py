"""Server-side registry: method name -> strategy builder.

A builder takes the resolved run config and the keyword arguments common to every
fedlean strategy (sampling, client settings, plausibility bounds) and returns the
strategy. Register a method here and its client side in ``clients.methods``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fl_strategies import FedAvg, FedleanStrategy, FedProx

from .freezing_builders import build_apf, build_gwpf
from .gkt_builders import build_fedgkt
from .pruning_builders import PRUNING_BUILDERS
from .swat_builders import build_swat, build_zerofl

StrategyBuilder = Callable[[Mapping[str, Any], dict[str, Any]], FedleanStrategy]

STRATEGY_BUILDERS: dict[str, StrategyBuilder] = {
    "fedavg": lambda cfg, common: FedAvg(**common),
    "fedprox": lambda cfg, common: FedProx(
        proximal_mu=float(cfg["method"]["proximal_mu"]), **common
    ),
    **PRUNING_BUILDERS,
    "swat": build_swat,
    "zerofl": build_zerofl,
    "gwpf": build_gwpf,
    "apf": build_apf,
    "fedgkt": build_fedgkt,
}
