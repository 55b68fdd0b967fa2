"""SWAT in FL: clients train with SWAT layers, upload the whole (dense) model.

The comparator for ZeroFL's uplink savings (:mod:`fl_strategies.zerofl`): same
client-side sparse training, dense upload, FedAvg aggregation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO
from typing import Any

import numpy as np

from .base import FedleanStrategy, ParsedReply, scalar_metric
from .flwr_compat import log

#: Client metrics (per reply): training FLOPs this round, dense and as SWAT's sparse
#: operations would need them (see ``clients.swat``).
FLOPS_DENSE_KEY = "flops-dense"
FLOPS_SWAT_KEY = "flops-swat"


def topk_keep_count(numel: int, keep: float) -> int:
    """``ceil(keep * numel)`` (at least 1), robust to float noise such as ``0.3 * 10``.

    The same rule as ``clients.swat.topk_keep_count`` (SWAT's reference top-K).
    """
    return min(numel, max(1, int(np.ceil(keep * numel - 1e-9))))


def topk_mask(array: np.ndarray, keep: float) -> np.ndarray:
    """Boolean mask of the top-K entries of ``array`` by magnitude.

    ``k = ceil(keep * size)``; every entry with ``|x| >=`` the k-th largest magnitude
    is kept, so ties at the threshold are all kept (SWAT's reference rule).
    """
    magnitude = np.abs(array).reshape(-1)
    k = topk_keep_count(magnitude.size, keep)
    threshold = np.partition(magnitude, magnitude.size - k)[magnitude.size - k]
    return (np.abs(array) >= threshold).reshape(array.shape)


def topk_weights_only(
    arrays: Mapping[str, np.ndarray], keys: Iterable[str], keep: float
) -> dict[str, np.ndarray]:
    """Copy of ``arrays`` with the named tensors zeroed outside their top-K (SWAT inference)."""
    out = dict(arrays)
    for key in keys:
        out[key] = np.where(topk_mask(out[key], keep), out[key], 0).astype(out[key].dtype)
    return out


class Swat(FedleanStrategy):
    """SWAT-trained clients (Raihan & Aamodt, 2020) with a dense upload and FedAvg.

    Clients replace the model's Conv2d/Linear layers by SWAT layers (top-K weights in
    the forward pass, top-K activations for the weight gradient), train, and send the
    dense model back. The server averages as FedAvg does.

    Parameters
    ----------
    sparsity : float (default: 0.9)
        SWAT's sparsity (fraction of weights and activations dropped), in [0, 1).
    sparse_keys : Iterable[str] (default: ())
        Names of the weight tensors of the SWAT layers (e.g. ``layer1.0.conv1.weight``).
        The builder derives them from the model with ``clients.swat.swat_layer_names``.
    eval_topk : bool (default: True)
        Central evaluation uses the top-K weights of the SWAT layers, as SWAT's
        inference does (the reference sparsifies weights at test time too). False
        evaluates the dense global model.
    **kwargs
        Passed to :class:`fl_strategies.base.FedleanStrategy`.

    """

    method_name = "swat"

    def __init__(
        self, sparsity: float = 0.9, sparse_keys: Iterable[str] = (), eval_topk: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = float(sparsity)
        self.sparse_keys = tuple(sparse_keys)
        self.eval_topk = bool(eval_topk)
        self.flops: dict[int, dict[str, float]] = {}

    @property
    def keep(self) -> float:
        """Fraction of weights SWAT keeps active (``1 - sparsity``)."""
        return 1.0 - self.sparsity

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """FedAvg; also sum the clients' training FLOPs of the round."""
        self.record_flops(server_round, replies)
        return super().aggregate_replies(server_round, replies)

    def record_flops(self, server_round: int, replies: list[ParsedReply]) -> None:
        """Sum the replies' dense and SWAT training FLOPs for :meth:`method_metrics`."""
        dense = sum(scalar_metric(r.metrics, FLOPS_DENSE_KEY) for r in replies)
        sparse = sum(scalar_metric(r.metrics, FLOPS_SWAT_KEY) for r in replies)
        self.flops[server_round] = {"flops_train_dense": dense, "flops_train_swat": sparse}

    def method_metrics(self, server_round: int) -> dict[str, float]:
        """Round totals (all sampled clients) of training FLOPs, dense and SWAT."""
        flops = self.flops.get(server_round)
        if not flops:
            return {"sparsity": self.sparsity}
        ratio = (
            flops["flops_train_swat"] / flops["flops_train_dense"]
            if flops["flops_train_dense"]
            else float("nan")
        )
        return {"sparsity": self.sparsity, **flops, "flops_swat_fraction": ratio}

    def summary_fields(self) -> dict[str, Any]:
        """Sparsity, the sparsified tensors and the run's FLOPs totals."""
        dense = sum(f["flops_train_dense"] for f in self.flops.values())
        sparse = sum(f["flops_train_swat"] for f in self.flops.values())
        return {
            "sparsity": self.sparsity,
            "swat_tensors": len(self.sparse_keys),
            "total_flops_train_dense": dense,
            "total_flops_train_swat": sparse,
        }

    def summary(self) -> None:
        """Log SWAT's settings."""
        log(
            INFO,
            "\t├──> SWAT sparsity: %s over %d tensors, eval_topk=%s",
            self.sparsity,
            len(self.sparse_keys),
            self.eval_topk,
        )
        super().summary()

    def central_view(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Central evaluation sees the top-K weights, as SWAT's forward does."""
        if self.eval_topk and self.sparse_keys:
            return topk_weights_only(arrays, self.sparse_keys, self.keep)
        return arrays
