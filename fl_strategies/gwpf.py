"""GWPF: gradient-wise parameter freezing with thawing (server side).

Reference: Dora233/GWPF (``sync_manager.py``, ``GWPF_Interlayer``), where ten
``torch.distributed`` workers all-reduce every 5 local steps and every worker computes
the same decision. Here the server decides, per trainable scalar (flat layout of
:mod:`fl_strategies.partial_sync`), after aggregating each round:

* the update of the aggregated model ``delta = new_global - old_global`` feeds
  ``ema``/``abs_ema`` (decay ``alpha``) of the *active* scalars; the reference aliases
  its "gradient" buffer to the last parameter values, so its EMA tracks values, not
  updates: not reproduced;
* freezing: an active scalar whose stepping rate ``|ema| / (abs_ema + eps)`` is below
  ``threshold`` gets ``freeze_len += 1``; ``active = (freeze_len == 0)``, so (as in the
  reference) a frozen scalar never becomes active again, it can only be thawed;
* tightening: while the frozen fraction exceeds ``tighten_at``, ``threshold`` is halved
  every round (the same threshold is the clients' vote threshold);
* thawing: each client sends one bit per frozen scalar (packed, 1 bit on the wire; the
  reference sends an int32 per scalar), 1 when its local drift of that scalar is
  consistent; where the votes reach ``thaw_quorum`` ``thaw_len += 1``, else
  ``thaw_len //= 2``. Scalars with ``thaw_len > 0`` are synced next round.

Timing. In the reference every frozen scalar votes at every sync, thawed ones too, and
the votes, the thaw decision and the sync of the thawed scalars share one exchange, so a
scalar voted for at every sync is synced at every sync and its ``thaw_len`` keeps
growing. A Flower round has one reply per client, so here the votes ride on the reply
and the thaw they decide applies to the next round; what keeps the reference's property
is that a thawed scalar (uploaded this round) still votes on the drift of its local
copy: repeated votes lengthen a thaw, and a scalar voted for in every round is synced in
every round after its first vote. The decision sequence (``thaw_len``, ``freeze_len``,
threshold) equals the reference's sync by sync for the same votes and updates
(``tests/test_gwpf_reference.py``, a port of ``sync_manager.py``'s decision loop).

Clients keep training frozen scalars locally (no rollback) and keep their local model
in ``context.state``; each round they upload the synced set ``active | thawed`` and the
vote bits. BatchNorm statistics are never frozen: averaged every round (the reference
never syncs them). No device is assumed (the reference hard-codes ``.cuda()``).
"""

from __future__ import annotations

import math
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ConfigRecord

from .base import ParsedReply
from .flwr_compat import log
from .partial_sync import MaskSpec, StabilityFreezingStrategy, ema_update, stability
from .wire import ARRAYS_KEY

#: ConfigRecord entry: the stability threshold, also the clients' vote threshold.
THRESHOLD_KEY = "gwpf-threshold"
#: Reply array: one thaw vote per frozen scalar (thawed ones included), packed bits.
VOTES_KEY = "gwpf-votes"

QUORUMS = ("any", "majority")
#: ``active`` (never frozen) over all scalars; ``thawed`` within the frozen ones.
GWPF_MASKS: MaskSpec = (("active", None, True), ("thawed", "active", False))


def parse_quorum(value: str | float) -> str | float:
    """``any``, ``majority``, or a fraction in (0, 1] of the replying clients."""
    if isinstance(value, str) and value in QUORUMS:
        return value
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"thaw_quorum must be 'any', 'majority' or a fraction in (0, 1], got {value!r}")
    return fraction


def quorum_reached(counts: np.ndarray, num_voters: int, quorum: str | float) -> np.ndarray:
    """Where enough of ``num_voters`` clients voted to thaw.

    ``any``: at least one vote (the reference's all-reduce SUM > 0); ``majority``:
    more than half; a fraction ``f``: at least ``f * num_voters`` votes (and one).
    """
    counts = np.asarray(counts)
    if quorum == "any":
        return counts >= 1
    if quorum == "majority":
        return 2 * counts > num_voters
    return (counts >= float(quorum) * num_voters - 1e-9) & (counts >= 1)


def thaw_step(thaw_len: np.ndarray, thaw: np.ndarray) -> np.ndarray:
    """``thaw_len + 1`` where thawed, ``thaw_len // 2`` elsewhere."""
    return np.where(thaw, thaw_len + 1, thaw_len // 2).astype(thaw_len.dtype)


class GWPF(StabilityFreezingStrategy):
    """Gradient-wise parameter freezing with thawing.

    Parameters
    ----------
    alpha : float (default: 0.99)
        EMA decay of the aggregated updates (reference value).
    threshold : float (default: 0.5)
        Initial stability threshold (reference value); also the vote threshold.
    tighten_at : float (default: 0.8)
        Frozen fraction above which the threshold is halved, every round.
    thaw_quorum : str | float (default: "any")
        ``any`` (reference), ``majority`` or a fraction in (0, 1] of the replies.
    eps : float (default: 1e-12)
        Added to ``abs_ema`` in the stepping rate.
    **kwargs
        Passed to :class:`fl_strategies.partial_sync.PartialSyncStrategy`.

    """

    method_name = "gwpf"
    mask_spec = GWPF_MASKS

    def __init__(
        self,
        alpha: float = 0.99,
        threshold: float = 0.5,
        tighten_at: float = 0.8,
        thaw_quorum: str | float = "any",
        eps: float = 1e-12,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha=alpha, threshold=threshold, tighten_at=tighten_at, eps=eps, **kwargs)
        self.thaw_quorum = parse_quorum(thaw_quorum)
        self.freeze_len = np.zeros(0, np.int32)
        self.thaw_len = np.zeros(0, np.int32)

    def init_state(self, size: int) -> None:
        """All scalars active, counters and EMAs at zero."""
        super().init_state(size)
        self.freeze_len = np.zeros(size, np.int32)
        self.thaw_len = np.zeros(size, np.int32)

    @property
    def active(self) -> np.ndarray:
        """Scalars never frozen (this round)."""
        return self.masks["active"]

    def add_train_config(self, server_round: int, config: ConfigRecord) -> None:
        """Send the current threshold: clients vote with it."""
        config[THRESHOLD_KEY] = float(self.threshold)

    def extra_reply_arrays(self) -> dict[str, tuple[int, ...]]:
        """One vote bit per frozen scalar, thawed (uploaded) ones included."""
        if not self.masks:
            return {VOTES_KEY: (0,)}
        return {VOTES_KEY: (int(self.active.size - np.count_nonzero(self.active)),)}

    def update_state(
        self, server_round: int, delta: np.ndarray, replies: list[ParsedReply]
    ) -> dict[str, float]:
        """Thaw from the votes, freeze from the EMAs, tighten; set next round's masks."""
        active = self.active
        # Flat positions, found once and reused: indexing with them is much cheaper than
        # with the boolean masks, whose True entries are scattered.
        frozen = np.flatnonzero(~active)
        active_at = np.flatnonzero(active)
        # Vote counts over the frozen scalars only (the votes' own order).
        counts = np.zeros(frozen.size, np.int64)
        vote_bytes, vote_bits = 0, len(replies) * counts.size
        for reply in replies:
            counts += reply.arrays[VOTES_KEY]
            record = reply.content.array_records.get(ARRAYS_KEY)
            if record is not None:
                vote_bytes += sum(len(record[k].data) for k in record if k.startswith(VOTES_KEY))
        thaw = quorum_reached(counts, len(replies), self.thaw_quorum)
        self.thaw_len[frozen] = thaw_step(self.thaw_len[frozen], thaw)
        ema_update(self.ema, self.abs_ema, delta, self.alpha, where=active_at)
        rate = stability(self.ema[active_at], self.abs_ema[active_at], self.eps)
        newly_frozen = active_at[rate < self.threshold]
        self.freeze_len[newly_frozen] += 1
        next_active = self.freeze_len == 0
        frozen_fraction = 1.0 - float(next_active.mean()) if next_active.size else 0.0
        if frozen_fraction > self.tighten_at:
            self.threshold /= 2.0
        thawed = ~next_active & (self.thaw_len > 0)
        self.masks = {"active": next_active, "thawed": thawed}
        return {
            "frozen_fraction": frozen_fraction,
            "thawed_count": int(thawed.sum()),
            "newly_frozen": int(newly_frozen.size),
            "votes_cast": int(counts.sum()),
            # Serialized payload of all replies' vote vectors, and the bits they hold.
            "vote_bytes": vote_bytes,
            "vote_bits": vote_bits,
            "threshold": float(self.threshold),
            "next_synced_fraction": float(self.sync_mask.mean()) if delta.size else 1.0,
        }

    def summary_fields(self) -> dict[str, Any]:
        """Settings and the final state."""
        return {
            **super().summary_fields(),
            "alpha": self.alpha,
            "initial_threshold": self.initial_threshold,
            "final_threshold": self.threshold,
            "tighten_at": self.tighten_at,
            "thaw_quorum": self.thaw_quorum,
        }

    def summary(self) -> None:
        """Log the settings."""
        log(
            INFO,
            "\t├──> GWPF alpha %s, threshold %s, tighten at %s, thaw quorum %s",
            self.alpha,
            self.threshold,
            self.tighten_at,
            self.thaw_quorum,
        )
        super().summary()
