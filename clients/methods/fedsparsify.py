"""Client side of the pruning methods (FedSparsify Global/Local, OneShot, Random, SNIP, GraSP).

One client serves them all; the server's ConfigRecord says what to do:

* ``mask-from-zeros``: the zeros of the received prunable tensors are the global
  mask; train with it enforced (:attr:`clients.train.TrainHooks.grad_masks`), so
  pruned weights stay exactly zero (no mask travels down);
* ``local-sparsity`` (FedSparsify-Local): after training, prune the local model to
  this sparsity by global magnitude pruning and send the keep mask as packed bits
  (``mask`` ArrayRecord) next to the values;
* ``prune-score`` (round 0 of SNIP/GraSP/PruneFL): do not train; return the importance
  of every prunable weight of the received model on the local data (``scores``).

What is prunable is decided by :func:`fl_strategies.pruning.is_prunable` with the
server's ``prune-scope``, the same rule as on the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from fl_strategies.codec import decode_arrays, encode_arrays
from fl_strategies.fedsparsify import (
    GRASP_TEMPERATURE_KEY,
    LOCAL_SPARSITY_KEY,
    MASK_KEY,
    MASKED_KEY,
    PRUNE_SCOPE_KEY,
    SCORE_BATCHES_KEY,
    SCORE_KEY,
    SCORES_KEY,
)
from fl_strategies.pruning import (
    Mask,
    apply_mask,
    full_mask,
    magnitude_prune,
    mask_from_zeros,
    prunable_names,
)
from fl_strategies.wire import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY

from ..train import LoopStats, TrainHooks, logits_of
from .base import ClientJob, ClientMethod, load_arrays, model_arrays

#: Method names whose client side is :class:`FedSparsifyClient`.
PRUNING_METHODS = ("fedsparsify_global", "fedsparsify_local", "oneshot", "random_prune", "snip", "grasp")


def _batches(loader: torch.utils.data.DataLoader, limit: int) -> list[Sequence[Tensor]]:
    """The first ``limit`` batches of ``loader`` (all of them for ``limit = 0``)."""
    out = []
    for batch in loader:
        out.append(batch)
        if limit and len(out) >= limit:
            break
    return out


def _summed_gradients(
    model: nn.Module,
    batches: list[Sequence[Tensor]],
    names: Sequence[str],
    device: torch.device,
    temperature: float = 1.0,
) -> tuple[list[nn.Parameter], list[Tensor]]:
    """The named parameters and their loss gradients (logits / temperature) summed over batches."""
    model.to(device).train()
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    grads = [torch.zeros_like(p) for p in chosen]
    for batch in batches:
        inputs, labels = batch[0].to(device), batch[1].to(device)
        loss = F.cross_entropy(logits_of(model, inputs) / temperature, labels)
        for acc, g in zip(grads, torch.autograd.grad(loss, chosen), strict=True):
            acc += g
    return chosen, grads


def snip_scores(
    model: nn.Module, batches: list[Sequence[Tensor]], names: Sequence[str], device: torch.device
) -> dict[str, Tensor]:
    """SNIP's connection sensitivity ``|g * w|``, ``g`` summed over the batches."""
    chosen, grads = _summed_gradients(model, batches, names, device)
    return {n: (g * p).abs().detach() for n, g, p in zip(names, grads, chosen, strict=True)}


def squared_gradient_scores(
    model: nn.Module, batches: list[Sequence[Tensor]], names: Sequence[str], device: torch.device
) -> dict[str, Tensor]:
    """PruneFL's importance: the squared gradient of each batch's loss, summed over the batches."""
    model.to(device).train()
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    acc = [torch.zeros_like(p) for p in chosen]
    for batch in batches:
        inputs, labels = batch[0].to(device), batch[1].to(device)
        loss = F.cross_entropy(logits_of(model, inputs), labels)
        for total, g in zip(acc, torch.autograd.grad(loss, chosen), strict=True):
            total += g.square()
    return {n: a.detach() for n, a in zip(names, acc, strict=True)}


def grasp_scores(
    model: nn.Module,
    batches: list[Sequence[Tensor]],
    names: Sequence[str],
    device: torch.device,
    temperature: float = 200.0,
) -> dict[str, Tensor]:
    """GraSP's importance ``w * Hg`` (GraSP prunes the largest ``-w * Hg``).

    ``g`` is the gradient of the temperature-scaled loss summed over the batches,
    ``Hg`` the Hessian-gradient product by double backpropagation, as in GraSP's code.
    """
    chosen, grad_w = _summed_gradients(model, batches, names, device, temperature)
    hg = [torch.zeros_like(p) for p in chosen]
    for batch in batches:
        inputs, labels = batch[0].to(device), batch[1].to(device)
        loss = F.cross_entropy(logits_of(model, inputs) / temperature, labels)
        grad_f = torch.autograd.grad(loss, chosen, create_graph=True)
        z = sum((gw * gf).sum() for gw, gf in zip(grad_w, grad_f, strict=True))
        for acc, h in zip(hg, torch.autograd.grad(z, chosen), strict=True):
            acc += h
    return {n: (p * h).detach() for n, p, h in zip(names, chosen, hg, strict=True)}


class FedSparsifyClient(ClientMethod):
    """Masked training, optional local pruning, round-0 scoring."""

    name = "fedsparsify"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.names: list[str] = []
        self.keep: Mask = {}

    def receive(self, job: ClientJob) -> None:
        """Load the model; read the global mask off its zeros when the server says so."""
        arrays = decode_arrays(job.content.array_records[ARRAYS_KEY])
        load_arrays(job.model, arrays)
        self.names = prunable_names(arrays, str(job.config.get(PRUNE_SCOPE_KEY, "weights")))
        masked = bool(job.config.get(MASKED_KEY, False))
        self.keep = mask_from_zeros(arrays, self.names) if masked else full_mask(arrays, self.names)

    def train_hooks(self, job: ClientJob) -> TrainHooks:
        """Enforce the global mask (gradients and weights of pruned positions stay 0)."""
        if not bool(job.config.get(MASKED_KEY, False)):
            return TrainHooks()
        params = dict(job.model.named_parameters())
        return TrainHooks(
            grad_masks={n: torch.from_numpy(m).float() for n, m in self.keep.items() if n in params}
        )

    def reply_arrays(self, job: ClientJob, stats: LoopStats) -> ArrayRecord:
        """The trained model, pruned locally to ``local-sparsity`` when asked."""
        arrays = model_arrays(job.model)
        if LOCAL_SPARSITY_KEY in job.config:
            self.keep = magnitude_prune(arrays, self.keep, float(job.config[LOCAL_SPARSITY_KEY]))
            arrays = apply_mask(arrays, self.keep)
        return encode_arrays(arrays, encoding=self.settings.get("encoding", "auto"))

    def train(self, job: ClientJob) -> RecordDict:
        """Score (round 0 of SNIP/GraSP) or train; add the mask for FedSparsify-Local."""
        if SCORE_KEY in job.config:
            return self.score(job)
        content = super().train(job)
        if LOCAL_SPARSITY_KEY in job.config:
            content[MASK_KEY] = encode_arrays(self.keep)
        return content

    def score(self, job: ClientJob) -> RecordDict:
        """Importance of every prunable weight of the received model on local data."""
        self.receive(job)
        batches = _batches(job.loader(train=True), int(job.config.get(SCORE_BATCHES_KEY, 0)))
        kind = str(job.config[SCORE_KEY])
        if kind == "snip":
            scores = snip_scores(job.model, batches, self.names, job.device)
        elif kind == "grasp":
            scores = grasp_scores(
                job.model,
                batches,
                self.names,
                job.device,
                float(job.config.get(GRASP_TEMPERATURE_KEY, 200.0)),
            )
        elif kind == "prunefl":
            scores = squared_gradient_scores(job.model, batches, self.names, job.device)
        else:
            raise ValueError(f"unknown {SCORE_KEY} {kind!r}; known: snip, grasp, prunefl")
        job.model.cpu()
        arrays = {n: s.cpu().numpy() for n, s in scores.items()}
        seen = sum(int(b[1].shape[0]) for b in batches)
        return RecordDict(
            {
                SCORES_KEY: encode_arrays(arrays, encoding="dense"),
                METRICS_KEY: MetricRecord({NUM_EXAMPLES_KEY: max(seen, 1)}),
            }
        )
