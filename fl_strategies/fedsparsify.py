"""FedSparsify-Global: FedAvg, then progressive global magnitude pruning at the server.

Stripelis et al., "Federated Progressive Sparsification (Purge-Merge-Tune)+", 2022.
Each round the server averages the clients' models, prunes the average to the
round's target sparsity ``s_t`` (:func:`fl_strategies.pruning.sparsity_at`) by
global unstructured magnitude pruning, and sends the pruned model on. Clients
train with the global mask enforced, so pruned weights stay exactly zero.

**The mask is free on the wire.** The server sends no mask: a client reads the mask
off the zeros of the prunable tensors it receives (``mask-from-zeros`` tells it the
model is masked), and the codec sends those zeros as one bit each inside the
sparse blob it uses for the values anyway. An unpruned weight that happens to be
exactly zero would be read as pruned; for the default scope (Conv/Linear weights,
randomly initialised, then averaged) this does not happen in practice, and the
server re-applies its own mask after every aggregation regardless.

This module also holds the base that the other server-side pruning methods
(:mod:`.fedsparsify_local`, :mod:`.oneshot`, :mod:`.random_prune`,
:mod:`.prune_at_init`) subclass: they change only :meth:`target_sparsity`,
:meth:`select_keep`, :meth:`initial_mask` or the reply format.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from .base import FedleanStrategy, ParsedReply
from .codec import encode_arrays
from .flwr_compat import log, nested_objects, no_object_id_recompute
from .pruning import (
    PRUNE_SCOPES,
    Mask,
    apply_mask,
    full_mask,
    magnitude_prune,
    mask_counts,
    prunable_names,
    sparsity_at,
    target_count,
)

# ConfigRecord entries (server -> client).
PRUNE_SCOPE_KEY = "prune-scope"  # str: which tensors are prunable (weights | all)
MASKED_KEY = "mask-from-zeros"  # bool: the zeros of the prunable tensors are the mask
LOCAL_SPARSITY_KEY = "local-sparsity"  # float: FedSparsify-Local's per-round target
SCORE_KEY = "prune-score"  # str: round-0 request for SNIP/GraSP scores
SCORE_BATCHES_KEY = "score-batches"  # int: batches to score on (0 = all local data)
GRASP_TEMPERATURE_KEY = "grasp-temperature"  # float: softmax temperature of GraSP
# RecordDict entries (client -> server) besides the model.
MASK_KEY = "mask"  # ArrayRecord of boolean keep masks (1 bit per parameter)
SCORES_KEY = "scores"  # ArrayRecord of importance scores (round 0 of SNIP/GraSP)

MB = 1e6

#: ``final arrays -> summary fields``; supplied by ``simulations`` (e.g. CPU
#: inference throughput, which needs the model class that ``fl_strategies`` lacks).
FinalModelFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, Any]]


def record_bytes(record: ArrayRecord) -> int:
    """Serialized size of one ArrayRecord, as Flower puts it on the wire."""
    with no_object_id_recompute():
        return sum(len(obj.deflate()) for obj in nested_objects(record).values())


class FedSparsifyGlobal(FedleanStrategy):
    """FedSparsify-Global: FedAvg plus progressive global magnitude pruning.

    Parameters
    ----------
    num_rounds : int
        Rounds of the run; the default end of the schedule (``T``).
    s_f : float (default: 0.9)
        Final sparsity over the prunable tensors.
    s_0 : float (default: 0.0)
        Initial sparsity.
    t_0 : int (default: 1)
        First pruning round.
    t_end : int | None (default: None)
        Round at which ``s_f`` is reached (``T`` of eq. 1); ``None`` = ``num_rounds``.
    frequency : int (default: 1)
        Prune every ``frequency`` rounds.
    exponent : float (default: 3.0)
        Exponent of the schedule.
    prune_scope : str (default: "weights")
        ``weights``: Conv/Linear weights (ndim >= 2); ``all``: every float parameter
        (the reference's choice, biases and BatchNorm affine parameters included).
    seed : int (default: 0)
        Seed of the method's own randomness (random pruning, scoring client).
    final_model_fn : FinalModelFn | None (default: None)
        Called once on the final model; its fields go into ``summary.json``.
    **kwargs
        Passed to :class:`fl_strategies.base.FedleanStrategy`.

    """

    method_name = "fedsparsify_global"

    def __init__(
        self,
        num_rounds: int,
        s_f: float = 0.9,
        s_0: float = 0.0,
        t_0: int = 1,
        t_end: int | None = None,
        frequency: int = 1,
        exponent: float = 3.0,
        prune_scope: str = "weights",
        seed: int = 0,
        final_model_fn: FinalModelFn | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= s_0 <= s_f < 1.0:
            raise ValueError(f"need 0 <= s_0 <= s_f < 1, got s_0={s_0}, s_f={s_f}")
        if prune_scope not in PRUNE_SCOPES:
            raise ValueError(f"prune_scope must be one of {PRUNE_SCOPES}, got {prune_scope!r}")
        self.num_rounds = int(num_rounds)
        self.s_f, self.s_0 = float(s_f), float(s_0)
        self.t_0 = int(t_0)
        self.t_end = int(t_end) if t_end is not None else self.num_rounds
        self.frequency = int(frequency)
        self.exponent = float(exponent)
        self.prune_scope = prune_scope
        self.seed = int(seed)
        self.final_model_fn = final_model_fn
        # Validates t_0/T/frequency/exponent once, before any round runs.
        sparsity_at(self.t_0, self.s_0, self.s_f, self.t_0, self.t_end, self.frequency, self.exponent)
        self.keep: Mask = {}
        self.mask_bytes: dict[int, int] = defaultdict(int)
        self.targets: dict[int, float] = {}

    # ------------------------------------------------------------ the method
    def target_sparsity(self, server_round: int) -> float:
        """Sparsity the global model has after round ``server_round`` (eq. 1)."""
        return sparsity_at(
            server_round, self.s_0, self.s_f, self.t_0, self.t_end, self.frequency, self.exponent
        )

    def select_keep(self, server_round: int, arrays: Mapping[str, np.ndarray], sparsity: float) -> Mask:
        """New keep mask at ``sparsity`` (default: global magnitude pruning)."""
        return magnitude_prune(arrays, self.keep, sparsity)

    def initial_mask(
        self, grid: Grid, arrays: dict[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]:
        """Mask the initial model before round 1 (default: nothing is pruned)."""
        return arrays

    @property
    def is_masked(self) -> bool:
        """Whether any prunable position is pruned."""
        return mask_counts(self.keep)[0] > 0

    # ------------------------------------------------------------------ hooks
    def add_train_config(self, server_round: int, config: ConfigRecord) -> None:
        """Tell clients the prunable scope and whether the model's zeros are a mask."""
        config[PRUNE_SCOPE_KEY] = self.prune_scope
        config[MASKED_KEY] = self.is_masked

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """FedAvg, then prune the average to this round's target sparsity."""
        merged = apply_mask(super().aggregate_replies(server_round, replies), self.keep)
        return self.prune(server_round, merged)

    def prune(self, server_round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Prune ``arrays`` to this round's target (never below the current sparsity)."""
        target = self.target_sparsity(server_round)
        self.targets[server_round] = target
        pruned, total = mask_counts(self.keep)
        if target_count(total, target) > pruned:
            self.keep = self.select_keep(server_round, arrays, target)
        return apply_mask(arrays, self.keep)

    def method_metrics(self, server_round: int) -> dict[str, float]:
        """Sparsity over the prunable tensors, nonzero parameters, mask bytes."""
        pruned, total = mask_counts(self.keep)
        return {
            "sparsity": pruned / total if total else 0.0,
            "target_sparsity": self.targets.get(server_round, self.target_sparsity(server_round)),
            "nonzero_params": self._nonzero_params(),
            "mask_bytes": int(self.mask_bytes.get(server_round, 0)),
        }

    def summary_fields(self) -> dict[str, Any]:
        """Final sparsity, model sizes dense vs codec-encoded, and ``final_model_fn``."""
        arrays = self.global_arrays
        pruned, total = mask_counts(self.keep)
        fields: dict[str, Any] = {
            "prune_scope": self.prune_scope,
            "s_f": self.s_f,
            "final_sparsity": pruned / total if total else 0.0,
            "prunable_params": total,
            "final_nonzero_params": self._nonzero_params(),
            "final_model_dense_mb": record_bytes(encode_arrays(arrays, encoding="dense")) / MB,
            "final_model_sparse_mb": record_bytes(encode_arrays(arrays, encoding="auto")) / MB,
            "total_mask_mb": sum(self.mask_bytes.values()) / MB,
        }
        if self.final_model_fn is not None:
            fields.update(self.final_model_fn(arrays))
        return fields

    def summary(self) -> None:
        """Log the schedule."""
        log(
            INFO,
            "\t├──> pruning: s_0=%s s_f=%s t_0=%s T=%s f=%s n=%s scope=%s",
            self.s_0,
            self.s_f,
            self.t_0,
            self.t_end,
            self.frequency,
            self.exponent,
            self.prune_scope,
        )
        super().summary()

    # ------------------------------------------------------- Flower's methods
    def prepare_initial(
        self, grid: Grid, arrays: dict[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]:
        """Start from an all-keep mask (or :meth:`initial_mask`'s)."""
        self.keep = full_mask(arrays, prunable_names(arrays, self.prune_scope))
        return self.initial_mask(grid, arrays, timeout)

    # --------------------------------------------------------------- helpers
    def _nonzero_params(self) -> int:
        return sum(
            int(np.count_nonzero(v))
            for v in self.global_arrays.values()
            if np.issubdtype(v.dtype, np.floating)
        )
