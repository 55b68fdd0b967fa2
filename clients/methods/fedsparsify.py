"""Client side of the pruning methods (FedSparsify Global/Local, OneShot, Random, SNIP, GraSP).

One client serves them all; the server's ConfigRecord says what to do:

* ``mask-id`` / ``mask-base`` (every training message): the values of the float32
  arrays arrive at the positions of the global keep mask only (``known-values``). The
  node holds the mask it last received in ``context.state``; the message changes mask
  ``mask-base`` (0: the all-keep mask) into mask ``mask-id`` (``prune-mask@flips``).
  It trains with that mask enforced (:attr:`clients.train.TrainHooks.grad_masks`), so
  pruned weights stay exactly zero, and replies with the values at the same positions
  (XOR-coded against the received ones where smaller), echoing ``mask-id``;
* ``local-sparsity`` (FedSparsify-Local): after training, prune the local model to
  this sparsity by global magnitude pruning; the reply's values follow that local
  mask, sent once as a position set within the global mask (``local-mask@positions``);
* ``prune-score`` (round 0 of SNIP/GraSP/PruneFL): do not train; return the importance
  of every prunable weight of the received model on the local data (``scores``).

What is prunable is decided by :func:`fl_strategies.pruning.is_prunable` with the
server's ``prune-scope``, the same rule as on the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from fl_strategies.codec import (
    CodecError,
    decode_arrays,
    decode_known_values,
    decode_positions,
    encode_arrays,
    encode_known_values,
    encode_positions,
)
from fl_strategies.fedsparsify import (
    FULL_MASK_ID,
    GRASP_TEMPERATURE_KEY,
    KNOWN_VALUES_KEY,
    LOCAL_MASK_KEY,
    LOCAL_SPARSITY_KEY,
    MASK_BASE_KEY,
    MASK_FLIPS_KEY,
    MASK_ID_KEY,
    MASKED_KEY,
    PRUNE_SCOPE_KEY,
    SCORE_BATCHES_KEY,
    SCORE_KEY,
    SCORES_KEY,
)
from fl_strategies.pruning import (
    Mask,
    flat_mask,
    full_mask,
    gather_known,
    known_count,
    known_names,
    magnitude_prune,
    mask_from_zeros,
    prunable_names,
    scatter_known,
    unflat_mask,
)
from fl_strategies.wire import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, NUM_EXAMPLES_KEY

from ..train import LoopStats, TrainHooks, logits_of
from .base import ClientJob, ClientMethod, load_arrays, model_arrays

#: Keys of the node's persistent state (``context.state``): the mask it holds and its id.
MASK_STATE_KEY = "fedsparsify-mask"
MASK_STATE_ID_KEY = "fedsparsify-mask-id"

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
        self.mask_id: int | None = None
        self.known_shapes: dict[str, tuple[int, ...]] = {}
        self.received: dict[str, np.ndarray] = {}
        # The known values as received (gathered at ``keep``): the reply's XOR reference.
        self.received_values = np.zeros(0, np.float32)

    def receive(self, job: ClientJob) -> None:
        """Load the model: known values at the held mask after its change, or (evaluation) by codec."""
        config = job.config
        if MASK_ID_KEY not in config:
            arrays = decode_arrays(job.content.array_records[ARRAYS_KEY])
            load_arrays(job.model, arrays)
            self.names = prunable_names(arrays, str(config.get(PRUNE_SCOPE_KEY, "weights")))
            masked = bool(config.get(MASKED_KEY, False))
            self.keep = mask_from_zeros(arrays, self.names) if masked else full_mask(arrays, self.names)
            self.mask_id = None
            return
        # Names, shapes and dtypes only: views of the state, no copy.
        model = {k: v.detach().cpu().numpy() for k, v in job.model.state_dict().items()}
        self.names = prunable_names(model, str(config.get(PRUNE_SCOPE_KEY, "weights")))
        record = job.content.array_records[ARRAYS_KEY]
        keep = self._held_mask(job, int(config[MASK_BASE_KEY]), model)
        mask_id = int(config[MASK_ID_KEY])
        if MASK_FLIPS_KEY in record:
            flat = flat_mask(keep)
            flat[decode_positions(record[MASK_FLIPS_KEY].numpy(), flat.size)] ^= True
            keep = unflat_mask(flat, keep)
        elif int(config[MASK_BASE_KEY]) != mask_id:
            raise CodecError(f"mask {mask_id} differs from mask {config[MASK_BASE_KEY]} but no change came")
        self.known_shapes = {n: model[n].shape for n in known_names(model)}
        count = known_count(self.known_shapes, keep)
        values = decode_known_values(record[KNOWN_VALUES_KEY].numpy(), count, np.float32)
        others = {k: v.shape for k, v in model.items() if k not in self.known_shapes}
        rest = decode_arrays(
            ArrayRecord({k: v for k, v in record.items() if k not in (KNOWN_VALUES_KEY, MASK_FLIPS_KEY)}),
            others,
        )
        self.received = scatter_known(values, self.known_shapes, keep)
        self.received_values = values
        load_arrays(job.model, {**rest, **self.received})
        self.keep, self.mask_id = keep, mask_id
        if mask_id == int(config[MASK_BASE_KEY]) != FULL_MASK_ID:
            # The state already holds this mask (_held_mask checked it): no rewrite.
            return
        job.context.state[MASK_STATE_KEY] = ArrayRecord(
            {n: Array(np.require(m, requirements="C")) for n, m in keep.items()}
        )
        job.context.state[MASK_STATE_ID_KEY] = ConfigRecord({"id": mask_id})

    def _held_mask(self, job: ClientJob, base: int, model: Mapping[str, np.ndarray]) -> Mask:
        """The mask ``base`` from the node's state (mask 0: nothing pruned); CodecError if not held."""
        if base == FULL_MASK_ID:
            return full_mask(model, self.names)
        state = job.context.state
        held = None
        if MASK_STATE_ID_KEY in state.config_records and MASK_STATE_KEY in state.array_records:
            held = int(state.config_records[MASK_STATE_ID_KEY]["id"])
        if held != base:
            raise CodecError(f"message changes mask {base}, this node holds mask {held}")
        stored = state.array_records[MASK_STATE_KEY]
        if set(stored) != set(self.names):
            raise CodecError("held mask covers other tensors than the prunable ones")
        return {n: stored[n].numpy().astype(bool, copy=False) for n in self.names}

    def train_hooks(self, job: ClientJob) -> TrainHooks:
        """Enforce the global mask (gradients and weights of pruned positions stay 0)."""
        if all(m.all() for m in self.keep.values()):
            return TrainHooks()
        params = dict(job.model.named_parameters())
        return TrainHooks(
            grad_masks={n: torch.from_numpy(m).float() for n, m in self.keep.items() if n in params}
        )

    def reply_arrays(self, job: ClientJob, stats: LoopStats) -> ArrayRecord:
        """Values at the mask's positions (Local: the local mask, sent within the global one)."""
        arrays = model_arrays(job.model)
        encoding = self.settings.get("encoding", "auto")
        if self.mask_id is None:
            return encode_arrays(arrays, encoding=encoding)
        record = encode_arrays({k: v for k, v in arrays.items() if k not in self.known_shapes}, encoding)
        keep = self.keep
        if LOCAL_SPARSITY_KEY in job.config:
            keep = magnitude_prune(arrays, self.keep, float(job.config[LOCAL_SPARSITY_KEY]))
            within = np.compress(flat_mask(self.keep), flat_mask(keep))  # = [global mask], faster
            # zlib forms only: LZMA was ~3% smaller on these masks (~0.2% of the reply) at
            # ~2.5x the time, paid per client per round.
            record[LOCAL_MASK_KEY] = Array(encode_positions(within, fast=True, use_lzma=False))
        names = list(self.known_shapes)
        values = gather_known(arrays, keep, names)
        # At the received mask the reference is what came in; a local mask gathers its own.
        reference = self.received_values if keep is self.keep else gather_known(self.received, keep, names)
        record[KNOWN_VALUES_KEY] = Array(encode_known_values(values, reference))
        return record

    def train(self, job: ClientJob) -> RecordDict:
        """Score (round 0 of SNIP/GraSP) or train; echo the mask the reply follows."""
        if SCORE_KEY in job.config:
            return self.score(job)
        content = super().train(job)
        if self.mask_id is not None:
            content[CONFIG_KEY] = ConfigRecord({MASK_ID_KEY: self.mask_id})
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
