"""GWPF's client: trains everything, uploads the synced set and one thaw bit per frozen scalar.

Frozen scalars keep training locally (no rollback, unlike APF). For each frozen
scalar the client tracks, across rounds in ``context.state``, EMAs of its own local
change per round ``d = before - after`` (``ema_f``, ``abs_ema_f``, decay ``vote_alpha``,
default ``alpha``) and votes to thaw it when ``|ema_f| / (abs_ema_f + eps) >= threshold``
(the server's current threshold), i.e. when its local drift is consistent.

Every frozen scalar votes every round, thawed ones (uploaded this round) included, on
the drift of the local copy it keeps training: so repeated votes lengthen a thaw, as in
the reference, where all frozen scalars vote at every sync. The EMAs start when a
scalar is frozen (active scalars hold none; GWPF never unfreezes) and run until the
node is resynced with a full message.

``vote_min_rounds`` (default 2, **our reading**): a scalar votes only once its EMAs
hold that many rounds. With one observation the rate is exactly 1 for any nonzero
change, so every frozen scalar would vote after one round; the reference never meets
this case because it accumulates over the 5 local steps between two syncs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fl_strategies.gwpf import GWPF_MASKS, THRESHOLD_KEY, VOTES_KEY
from fl_strategies.partial_sync import as_positions, ema_update, stability

from ..train import LoopStats
from .base import ClientJob
from .partial_sync import PartialSyncClient


def thaw_votes(
    ema_f: np.ndarray,
    abs_ema_f: np.ndarray,
    obs: np.ndarray,
    d: np.ndarray,
    frozen: np.ndarray,
    alpha: float,
    threshold: float,
    min_rounds: int = 2,
    eps: float = 1e-12,
) -> np.ndarray:
    """Fold one round's local change into the drift EMAs of the frozen scalars and vote.

    Parameters
    ----------
    ema_f, abs_ema_f, obs : np.ndarray
        Per-scalar EMAs of the local change since freezing and of its magnitude, and the
        number of rounds they hold; updated in place at the ``frozen`` positions.
    d : np.ndarray
        This round's local change ``before - after`` of every scalar.
    frozen : np.ndarray
        The frozen scalars (``~active``), thawed ones included: a boolean mask, or their
        flat positions in increasing order.
    alpha, threshold, min_rounds, eps
        EMA decay, vote threshold, minimum rounds held, epsilon.

    Returns
    -------
    np.ndarray
        One boolean per frozen scalar (flat order): 1 = thaw it (or keep it thawed).

    """
    # At flat positions: a boolean-mask pass over every scalar costs several times more
    # than gathering and scattering the frozen ones (same float32 operations per entry).
    at = as_positions(frozen)
    ema_update(ema_f, abs_ema_f, d, alpha, where=at)
    obs[at] += 1
    return (stability(ema_f[at], abs_ema_f[at], eps) >= threshold) & (obs[at] >= min_rounds)


class GWPFClient(PartialSyncClient):
    """GWPF's client side (see the module docstring)."""

    name = "gwpf"
    mask_spec = GWPF_MASKS
    extra_state = ("ema_f", "abs_ema_f", "obs")

    def extra_domain(self, masks: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The frozen scalars: the drift EMAs of active ones are zero (they start at freezing)."""
        if masks is getattr(self, "masks", None):
            return self.frozen_positions()
        return np.flatnonzero(~masks["active"])

    def extra_reply(self, job: ClientJob, flat_after: np.ndarray) -> dict[str, np.ndarray]:
        """The packed thaw votes, one bit per frozen scalar."""
        alpha = self.method["vote_alpha"]
        alpha = float(self.method["alpha"] if alpha is None else alpha)
        votes = thaw_votes(
            self.extra["ema_f"],
            self.extra["abs_ema_f"],
            self.extra["obs"],
            (self.flat_before - flat_after).astype(np.float32),
            self.frozen_positions(),
            alpha,
            float(job.config[THRESHOLD_KEY]),
            int(self.method["vote_min_rounds"]),
            float(self.method["eps"]),
        )
        return {VOTES_KEY: votes}

    def reply_metrics(self, job: ClientJob, stats: LoopStats) -> dict[str, float | int]:
        """Synced scalars and the number of thaw votes."""
        votes = int(self.upload(job)[VOTES_KEY].sum())
        return {**super().reply_metrics(job, stats), "thaw-votes": votes}
