"""FedAvg on fedlean's base: Flower's FedAvg with measured bytes and validated replies."""

from __future__ import annotations

from .base import FedleanStrategy


class FedAvg(FedleanStrategy):
    """Federated Averaging (McMahan et al., 2017), the baseline every method is judged by.

    All behaviour comes from :class:`fl_strategies.base.FedleanStrategy`: the whole
    model goes down and up, the new global model is the ``num-examples``-weighted mean.
    """

    method_name = "fedavg"
