"""PruneFL baseline: an initial mask from one client, readjusted from aggregated squared gradients.

Jiang et al., "Model Pruning Enables Efficient Federated Learning on Edge Devices"
(IEEE TNNLS, 2022), as used as a baseline by FedSparsify (Stripelis et al., 2022,
which readjusts every 50 rounds and reports PruneFL at sparsity 0.3). **This module is
fedlean's reading of the method, not a port of its code**; ``docs/prunefl.md`` lists
where it departs from the paper.

**Round 0 (initial pruning on one client).** One client, picked with ``seed``, scores
the initial model on its own data with PruneFL's importance measure, the squared
gradient summed over its mini-batches (``prune-score = prunefl``); the server keeps the
``1 - s_f`` most important prunable positions. The paper's initial phase also trains
on that client through several reconfigurations; here it is one scoring pass.

**Adaptive readjustment.** Every round each client sums, over its local steps, the
squared *dense* gradient of every prunable position (pruned ones included, taken
before the mask is applied) and returns it (``sqgrad`` ArrayRecord). The server sums
these over clients and rounds; after round ``t`` with ``t % readjust_every == 0`` it
picks a new mask from that sum and starts a new accumulation. PruneFL chooses the
mask maximising importance per unit of training time. Under a time cost linear in
the number of kept parameters and with the mask size fixed at the configured density
(as in FedSparsify's use of the baseline), that is the mask of the largest summed
squared gradients; the paper's search over the mask size with measured per-layer
times is not implemented. Pruned positions may regrow: they re-enter at 0.

**The mask travels as FedSparsify's does** (:mod:`fl_strategies.fedsparsify`): both
sides hold it, values travel at its kept positions only, and its change (the
readjustment's pruned and regrown positions) goes down once to each node. A regrown
weight re-enters at exactly 0, which the mask, not the zeros, says is alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message

from .base import ParsedReply, ReplyError, decode_reply_arrays
from .fedsparsify import record_bytes
from .prune_at_init import PruneAtInit
from .pruning import apply_mask, prune_by_score

# ConfigRecord entries (server -> client).
SQGRAD_REQUEST_KEY = "send-sqgrad"  # bool: return the summed squared dense gradients
# RecordDict entry (client -> server) besides the model.
SQGRAD_KEY = "sqgrad"  # ArrayRecord: sum over local steps of g**2 per prunable position


@dataclass
class GradReply(ParsedReply):
    """A training reply with the client's summed squared gradients."""

    sqgrad: dict[str, np.ndarray] = field(default_factory=dict)


class PruneFL(PruneAtInit):
    """Fixed-density mask from one client's importance, readjusted every ``readjust_every`` rounds.

    Parameters
    ----------
    readjust_every : int (default: 50)
        Rounds between mask readjustments (FedSparsify's setting: 50).
    **kwargs
        Passed to :class:`fl_strategies.prune_at_init.PruneAtInit` (``s_f`` = the
        sparsity kept throughout, ``score_batches`` of the initial client, ``seed``).

    """

    method_name = "prunefl"
    score_name = "prunefl"

    def __init__(self, readjust_every: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if readjust_every < 1:
            raise ValueError(f"readjust_every must be >= 1, got {readjust_every}")
        self.readjust_every = int(readjust_every)
        self.importance: dict[str, np.ndarray] = {}
        self.readjusted: list[int] = []
        self.regrown: dict[int, int] = {}
        self.sqgrad_bytes: dict[int, int] = {}

    def add_train_config(self, server_round: int, config: ConfigRecord) -> None:
        """Also ask for the squared gradients."""
        super().add_train_config(server_round, config)
        config[SQGRAD_REQUEST_KEY] = True

    def parse_train_reply(self, server_round: int, message: Message) -> GradReply:
        """Validate the values as usual, then the squared gradients (finite, >= 0)."""
        reply = super().parse_train_reply(server_round, message)
        shapes = {name: keep.shape for name, keep in self.keep.items()}
        sqgrad = decode_reply_arrays(message.content, SQGRAD_KEY, shapes)
        self.sqgrad_bytes[server_round] = self.sqgrad_bytes.get(server_round, 0) + record_bytes(
            message.content.array_records[SQGRAD_KEY]
        )
        for name, value in sqgrad.items():
            if value.shape != self.keep[name].shape or not np.issubdtype(value.dtype, np.floating):
                raise ReplyError(
                    f"sqgrad '{name}' is {value.dtype}{value.shape}, expected float{self.keep[name].shape}"
                )
            if (value < 0).any():
                raise ReplyError(f"sqgrad '{name}' has negative entries")
        return GradReply(
            reply.node_id, reply.num_examples, reply.arrays, reply.metrics, reply.content, sqgrad=sqgrad
        )

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """Accumulate the clients' squared gradients, then FedAvg and maybe readjust."""
        for reply in replies:
            for name, value in reply.sqgrad.items():  # type: ignore[attr-defined]
                acc = self.importance.get(name)
                value = value.astype(np.float64)
                self.importance[name] = value if acc is None else acc + value
        return super().aggregate_replies(server_round, replies)

    def prune(self, server_round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """At rounds multiple of ``readjust_every``: the mask of the largest summed ``g**2``."""
        self.targets[server_round] = self.s_f
        if server_round % self.readjust_every == 0 and self.importance:
            everything = {n: np.ones_like(m, dtype=bool) for n, m in self.keep.items()}
            new_keep = prune_by_score(self.importance, everything, self.s_f)
            self.regrown[server_round] = int(
                sum(np.count_nonzero(new_keep[n] & ~self.keep[n]) for n in new_keep)
            )
            self.keep = new_keep
            self.readjusted.append(server_round)
            self.importance = {}
        return apply_mask(arrays, self.keep)

    def method_metrics(self, server_round: int) -> dict[str, float]:
        """FedSparsify's fields plus whether (and how much) the mask was readjusted."""
        return {
            **super().method_metrics(server_round),
            "readjusted": int(server_round in self.readjusted),
            "regrown": self.regrown.get(server_round, 0),
            "sqgrad_bytes": self.sqgrad_bytes.get(server_round, 0),
        }

    def summary_fields(self) -> dict[str, Any]:
        """FedSparsify's fields plus the readjustment rounds."""
        return {
            **super().summary_fields(),
            "readjust_every": self.readjust_every,
            "readjusted_rounds": list(self.readjusted),
        }
