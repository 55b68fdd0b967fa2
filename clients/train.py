"""The one training loop and the one evaluation loop of fedlean.

Every method trains through :func:`train_loop`; what differs between methods is
expressed as :class:`TrainHooks` (gradient masks, proximal term, extra loss terms
such as knowledge distillation, a custom forward) or by replacing layers of the
model before training (:func:`replace_modules`, used for SWAT layers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

# (model, logits, batch) -> scalar loss term added to the task loss.
LossTerm = Callable[[nn.Module, Tensor, Sequence[Tensor]], Tensor]


@dataclass
class TrainHooks:
    """How a method changes the one training loop.

    Attributes
    ----------
    forward : Callable[[nn.Module, Tensor], Tensor] | None
        Maps (model, inputs) to logits; default ``model(inputs)``. Models that return
        ``(logits, features)`` are handled by taking the first element.
    loss_terms : list[LossTerm]
        Extra terms added to the cross-entropy loss (proximal term, KD, ...).
    grad_masks : Mapping[str, Tensor]
        Parameter name -> 0/1 mask. Gradients are multiplied by the mask before the
        optimizer step and the parameter is re-masked after it, so masked entries
        stay exactly zero even under momentum or weight decay.
    after_step : list[Callable[[nn.Module], None]]
        Called after every optimizer step (e.g. to accumulate statistics).
    clip_grad_norm : float | None
        Clip the gradients' total 2-norm to this value before every step; None
        takes the model's ``clip_grad_norm`` attribute if it has one (the
        Transformer LM's 0.25), else no clipping.
    """

    forward: Callable[[nn.Module, Tensor], Tensor] | None = None
    loss_terms: list[LossTerm] = field(default_factory=list)
    grad_masks: Mapping[str, Tensor] = field(default_factory=dict)
    after_step: list[Callable[[nn.Module], None]] = field(default_factory=list)
    clip_grad_norm: float | None = None


@dataclass
class LoopStats:
    """What one pass of training or evaluation measured.

    ``loss`` and ``accuracy`` are means over predicted targets: one per
    example for classification, one per token for a language model (labels
    of shape ``N x S``), so ``perplexity`` is ``exp(loss)`` per token.
    ``num_examples`` counts examples (sequences), not tokens.
    """

    loss: float
    accuracy: float
    num_examples: int
    steps: int = 0
    seconds: float = 0.0

    @property
    def perplexity(self) -> float:
        """``exp(loss)``: the per-token perplexity of a language model."""
        return math.exp(min(self.loss, 700.0))  # bounded: exp overflows past ~709


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when this process (or Ray actor) was given a GPU, else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def set_torch_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in this process (``None`` keeps torch's default).

    Small models on shared cores run fastest on one thread; several threads per
    process oversubscribe the cores (10x slower rounds were measured under load).
    """
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def make_optimizer(
    params: Iterator[nn.Parameter] | list,
    name: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """SGD or Adam with the given settings."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def logits_of(model: nn.Module, inputs: Tensor, forward: Callable | None = None) -> Tensor:
    """Logits of a model; models returning ``(logits, features)`` give their logits."""
    out = forward(model, inputs) if forward is not None else model(inputs)
    return out[0] if isinstance(out, tuple) else out


def proximal_term(global_params: Mapping[str, Tensor], mu: float) -> LossTerm:
    """FedProx's ``mu/2 * ||w - w_global||^2`` over the trainable parameters."""

    def term(model: nn.Module, logits: Tensor, batch: Sequence[Tensor]) -> Tensor:
        total = logits.new_zeros(())
        for name, param in model.named_parameters():
            if name in global_params:
                total = total + (param - global_params[name]).pow(2).sum()
        return 0.5 * mu * total

    return term


def train_loop(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    hooks: TrainHooks | None = None,
) -> LoopStats:
    """Train ``model`` in place for ``epochs`` passes over ``loader``.

    Batches are tuples whose first two items are inputs and labels; further items
    (e.g. sample indices) are passed to the loss terms untouched.
    """
    hooks = hooks or TrainHooks()
    criterion = nn.CrossEntropyLoss()
    clip = hooks.clip_grad_norm
    if clip is None:
        clip = getattr(model, "clip_grad_norm", None)
    params = dict(model.named_parameters())
    masks = {name: m.to(device) for name, m in hooks.grad_masks.items()}
    for name in masks:
        if name not in params:
            raise KeyError(f"gradient mask for unknown parameter '{name}'")
    model.to(device).train()
    start = time.perf_counter()
    total_loss, correct, seen, targets, steps = 0.0, 0, 0, 0, 0
    for _ in range(epochs):
        for batch in loader:
            batch = [t.to(device, non_blocking=True) for t in batch]
            inputs, labels = batch[0], batch[1]
            optimizer.zero_grad(set_to_none=True)
            logits = logits_of(model, inputs, hooks.forward)
            loss = criterion(logits, labels)
            for term in hooks.loss_terms:
                loss = loss + term(model, logits, batch)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            if masks:
                for name, mask in masks.items():
                    if params[name].grad is not None:
                        params[name].grad.mul_(mask)
            optimizer.step()
            if masks:
                with torch.no_grad():
                    for name, mask in masks.items():
                        params[name].mul_(mask)
            for callback in hooks.after_step:
                callback(model)
            # Per-target means: labels.numel() is the batch size for classification,
            # batch x sequence length for a language model.
            total_loss += float(loss.detach()) * labels.numel()
            correct += int((logits.detach().argmax(1) == labels).sum())
            seen += labels.size(0)
            targets += labels.numel()
            steps += 1
    targets = max(targets, 1)
    return LoopStats(
        total_loss / targets, correct / targets, seen // max(epochs, 1), steps, time.perf_counter() - start
    )


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
) -> LoopStats:
    """Loss and accuracy of ``model`` over ``loader``."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.to(device).eval()
    total_loss, correct, seen, targets = 0.0, 0, 0, 0
    start = time.perf_counter()
    for batch in loader:
        inputs, labels = batch[0].to(device), batch[1].to(device)
        logits = logits_of(model, inputs, forward)
        total_loss += float(criterion(logits, labels))
        correct += int((logits.argmax(1) == labels).sum())
        seen += labels.size(0)
        targets += labels.numel()
    return LoopStats(
        total_loss / max(targets, 1), correct / max(targets, 1), seen, seconds=time.perf_counter() - start
    )


def replace_modules(
    model: nn.Module,
    should_replace: Callable[[str, nn.Module], bool],
    make_replacement: Callable[[nn.Module], nn.Module],
) -> int:
    """Swap submodules in place (e.g. Conv2d/Linear -> SWAT layers); returns the count.

    The replacement must keep the same parameter names so that state dicts from
    the server still load.
    """
    targets = [
        (name, module) for name, module in model.named_modules() if name and should_replace(name, module)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make_replacement(module))
    return len(targets)
