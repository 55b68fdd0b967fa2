"""Random pruning baseline: FedSparsify-Global's schedule, random instead of magnitude."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .fedsparsify import FedSparsifyGlobal
from .pruning import Mask, random_prune


class RandomPrune(FedSparsifyGlobal):
    """Prune uniformly random alive weights to the schedule's ``s_t`` each round.

    Parameters
    ----------
    **kwargs
        Passed to :class:`fl_strategies.fedsparsify.FedSparsifyGlobal`; its ``seed``
        seeds the choice of weights.

    """

    method_name = "random_prune"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rng = np.random.default_rng(self.seed)

    def select_keep(self, server_round: int, arrays: Mapping[str, np.ndarray], sparsity: float) -> Mask:
        """Random positions among the alive ones."""
        return random_prune(self.keep, sparsity, self.rng)
