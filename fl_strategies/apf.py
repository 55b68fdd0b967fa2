"""APF: adaptive parameter freezing (Chen et al., ICDCS 2021), server side.

The comparator of GWPF. Per trainable scalar (flat layout of
:mod:`fl_strategies.partial_sync`), after aggregating each round:

* the update of the aggregated model ``delta = new_global - old_global`` feeds
  ``ema``/``abs_ema`` (decay ``alpha``) of the scalars that were synced this round;
* a synced scalar whose stepping rate ``|ema| / (abs_ema + eps)`` is below
  ``threshold`` is stable: its freezing period grows by one round (additive increase)
  and it is frozen for that many rounds; an unstable one has its period halved
  (multiplicative decrease) and stays active. When the period ends the scalar is
  active again for a round, and checked again;
* while the frozen fraction exceeds ``tighten_at``, ``threshold`` is halved every round.

Frozen scalars are rolled back by the clients to the global value (they do not
train), so they are neither uploaded nor sent down while frozen. BatchNorm statistics
are never frozen. The period is counted in rounds (APF checks every ``freezing
check`` interval of local steps; a Flower round is our sync interval): **our reading**.
"""

from __future__ import annotations

from logging import INFO
from typing import Any

import numpy as np

from .base import ParsedReply
from .flwr_compat import log
from .partial_sync import StabilityFreezingStrategy, ema_update, stability


def aimd_step(period: np.ndarray, stable: np.ndarray, checked: np.ndarray) -> np.ndarray:
    """Freezing periods after a check: ``+1`` where stable, ``// 2`` where unstable.

    Only ``checked`` entries change.
    """
    out = period.copy()
    out[checked & stable] += 1
    out[checked & ~stable] //= 2
    return out


class APF(StabilityFreezingStrategy):
    """Adaptive parameter freezing: stable scalars frozen for an AIMD-controlled period.

    Parameters
    ----------
    alpha : float (default: 0.99)
        EMA decay of the aggregated updates.
    threshold : float (default: 0.05)
        Initial stability threshold (**our reading** of APF's setting).
    tighten_at : float (default: 0.8)
        Frozen fraction above which the threshold is halved, every round.
    eps : float (default: 1e-12)
        Added to ``abs_ema`` in the stepping rate.
    **kwargs
        Passed to :class:`fl_strategies.partial_sync.PartialSyncStrategy`.

    """

    method_name = "apf"

    def __init__(
        self,
        alpha: float = 0.99,
        threshold: float = 0.05,
        tighten_at: float = 0.8,
        eps: float = 1e-12,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha=alpha, threshold=threshold, tighten_at=tighten_at, eps=eps, **kwargs)
        self.period = np.zeros(0, np.int32)
        self.frozen_until = np.zeros(0, np.int64)

    def init_state(self, size: int) -> None:
        """All scalars active, periods and EMAs at zero."""
        super().init_state(size)
        self.period = np.zeros(size, np.int32)
        self.frozen_until = np.zeros(size, np.int64)

    def update_state(
        self, server_round: int, delta: np.ndarray, replies: list[ParsedReply]
    ) -> dict[str, float]:
        """Check the synced scalars, update their periods, set next round's mask."""
        # The checked scalars as flat positions (found once per mask set): gathering and
        # scattering at them is much cheaper than boolean-mask indexing over every scalar.
        checked = self.sync_positions
        ema_update(self.ema, self.abs_ema, delta, self.alpha, where=checked)
        stable = stability(self.ema[checked], self.abs_ema[checked], self.eps) < self.threshold
        period = self.period.copy()
        period[checked] = aimd_step(period[checked], stable, np.ones(checked.size, bool))
        self.period = period
        freeze = checked[stable]
        self.frozen_until[freeze] = server_round + self.period[freeze]
        next_active = self.frozen_until <= server_round
        frozen_fraction = 1.0 - float(next_active.mean()) if next_active.size else 0.0
        if frozen_fraction > self.tighten_at:
            self.threshold /= 2.0
        unfrozen = next_active & ~self.sync_mask
        self.masks = {"active": next_active}
        return {
            "frozen_fraction": frozen_fraction,
            "newly_frozen": int(freeze.size),
            "unfrozen_count": int(unfrozen.sum()),
            "mean_period": float(self.period.mean()) if self.period.size else 0.0,
            "threshold": float(self.threshold),
            "next_synced_fraction": float(next_active.mean()) if next_active.size else 1.0,
        }

    def summary_fields(self) -> dict[str, Any]:
        """Settings and the final state."""
        return {
            **super().summary_fields(),
            "alpha": self.alpha,
            "initial_threshold": self.initial_threshold,
            "final_threshold": self.threshold,
            "tighten_at": self.tighten_at,
        }

    def summary(self) -> None:
        """Log the settings."""
        log(
            INFO,
            "\t├──> APF alpha %s, threshold %s, tighten at %s",
            self.alpha,
            self.threshold,
            self.tighten_at,
        )
        super().summary()
