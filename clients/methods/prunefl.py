"""Client side of PruneFL: FedSparsify's masked training plus summed squared dense gradients.

The keep mask arrives explicitly (``prunefl-keep:<name>`` entries of the training
ArrayRecord; see :mod:`fl_strategies.prunefl`) because regrown weights re-enter at
exactly 0. During training a gradient hook on every prunable parameter adds ``g**2``
to a running sum; the hook sees the gradient before the training loop multiplies it
by the mask, so pruned positions get an importance too, which is what lets the
server regrow them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import Tensor

from fl_strategies.codec import decode_arrays, encode_arrays
from fl_strategies.fedsparsify import PRUNE_SCOPE_KEY
from fl_strategies.prunefl import SQGRAD_KEY, SQGRAD_REQUEST_KEY, split_keep
from fl_strategies.pruning import full_mask, prunable_names
from fl_strategies.wire import ARRAYS_KEY

from ..train import LoopStats, TrainHooks
from .base import ClientJob, load_arrays
from .fedsparsify import FedSparsifyClient


class PruneFLClient(FedSparsifyClient):
    """Masked training with an explicit mask; returns the summed squared dense gradients."""

    name = "prunefl"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.sqgrad: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def receive(self, job: ClientJob) -> None:
        """Load the values; take the mask from its explicit entries (else nothing is pruned)."""
        values, keep = split_keep(decode_arrays(job.content.array_records[ARRAYS_KEY]))
        load_arrays(job.model, values)
        self.names = prunable_names(values, str(job.config.get(PRUNE_SCOPE_KEY, "weights")))
        self.keep = {n: keep[n] for n in self.names} if keep else full_mask(values, self.names)

    def train_hooks(self, job: ClientJob) -> TrainHooks:
        """The mask as gradient masks, and a hook per prunable parameter summing ``g**2``."""
        params = dict(job.model.named_parameters())
        hooks = TrainHooks(
            grad_masks={n: torch.from_numpy(m).float() for n, m in self.keep.items() if n in params}
        )
        self.sqgrad = {}
        if bool(job.config.get(SQGRAD_REQUEST_KEY, False)):
            for name in self.names:
                self.sqgrad[name] = torch.zeros_like(params[name], device=job.device)
                self._handles.append(params[name].register_hook(self._accumulate(name)))
        return hooks

    def _accumulate(self, name: str) -> Any:
        def hook(grad: Tensor) -> None:
            self.sqgrad[name] += grad.detach().square()

        return hook

    def reply_arrays(self, job: ClientJob, stats: LoopStats) -> ArrayRecord:
        """The trained model; training is over, so the gradient hooks go."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return super().reply_arrays(job, stats)

    def train(self, job: ClientJob) -> RecordDict:
        """Score (round 0) or train; add the squared gradients when asked."""
        self.sqgrad = {}  # the client object may serve several jobs
        content = super().train(job)
        if self.sqgrad:
            content[SQGRAD_KEY] = encode_arrays(
                {n: g.cpu().numpy() for n, g in self.sqgrad.items()}, encoding="dense"
            )
        return content
