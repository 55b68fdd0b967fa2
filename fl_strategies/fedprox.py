"""FedProx on fedlean's base."""

from __future__ import annotations

from logging import INFO
from typing import Any

from flwr.app import ConfigRecord

from .base import FedleanStrategy
from .flwr_compat import log

PROXIMAL_MU_KEY = "proximal-mu"


class FedProx(FedleanStrategy):
    """FedProx (Li et al., 2020): FedAvg whose clients add ``mu/2 * ||w - w_global||^2``.

    Parameters
    ----------
    proximal_mu : float (default: 0.01)
        Weight of the proximal term, sent to clients as ``proximal-mu`` every round.
    **kwargs
        Passed to :class:`fl_strategies.base.FedleanStrategy`.
    """

    method_name = "fedprox"

    def __init__(self, proximal_mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
        self.proximal_mu = proximal_mu

    def add_train_config(self, server_round: int, config: ConfigRecord) -> None:
        """Send the proximal weight with every training message."""
        config[PROXIMAL_MU_KEY] = float(self.proximal_mu)

    def summary(self) -> None:
        """Log the proximal weight."""
        log(INFO, "\t├──> FedProx proximal mu: %s", self.proximal_mu)
        super().summary()
