"""Client side of PruneFL: FedSparsify's masked training plus summed squared dense gradients.

The keep mask arrives as FedSparsify's does (known-mask encoding, see
:mod:`clients.methods.fedsparsify`); regrown weights re-enter at exactly 0. During
training a gradient hook on every prunable parameter adds ``g**2`` to a running sum;
the hook sees the gradient before the training loop multiplies it by the mask, so
pruned positions get an importance too, which is what lets the server regrow them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import Tensor

from fl_strategies.codec import encode_arrays
from fl_strategies.prunefl import SQGRAD_KEY, SQGRAD_REQUEST_KEY

from ..train import LoopStats, TrainHooks
from .base import ClientJob
from .fedsparsify import FedSparsifyClient


class PruneFLClient(FedSparsifyClient):
    """Masked training with an explicit mask; returns the summed squared dense gradients."""

    name = "prunefl"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.sqgrad: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

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
