"""APF's client: frozen scalars are rolled back to the global value after every step.

The rollback keeps a frozen scalar exactly at the value the node holds from the
server, so it need not be uploaded nor sent down while frozen; the node keeps its
model in ``context.state`` (see :mod:`clients.methods.partial_sync`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..train import TrainHooks
from .base import ClientJob
from .partial_sync import PartialSyncClient


def rollback_hook(model: nn.Module, frozen: dict[str, torch.Tensor]):
    """After-step callback restoring the frozen entries of each named parameter.

    Parameters
    ----------
    model : nn.Module
        The model being trained (its current values are the ones to keep).
    frozen : dict[str, torch.Tensor]
        Parameter name -> boolean tensor of the entries to hold fixed.

    """
    params = dict(model.named_parameters())
    held = []
    for name, mask in frozen.items():
        param = params[name]
        # The frozen entries' flat positions and values: writing them back touches those
        # entries only, not the whole tensor as a masked select would.
        at = torch.nonzero(mask.reshape(-1)).reshape(-1)
        if at.numel():
            held.append((param, at, param.detach().reshape(-1)[at].clone()))

    def restore(_: nn.Module) -> None:
        with torch.no_grad():
            for param, at, value in held:
                if param.is_contiguous():
                    param.view(-1).index_copy_(0, at, value)
                else:
                    flat = param.reshape(-1)
                    flat[at] = value
                    param.copy_(flat.view_as(param))

    return restore


class APFClient(PartialSyncClient):
    """APF's client side (see the module docstring)."""

    name = "apf"

    def train_hooks(self, job: ClientJob) -> TrainHooks:
        """Roll the frozen scalars back after every optimizer step."""
        frozen_flat = ~self.sync
        frozen = {
            name: torch.from_numpy(frozen_flat[sl].reshape(self.layout.shapes[name])).to(job.device)
            for name, sl in self.layout.slices.items()
        }
        return TrainHooks(after_step=[rollback_hook(job.model, frozen)])
