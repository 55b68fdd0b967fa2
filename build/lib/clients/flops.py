"""FLOPs of a model, counted by ``torch.utils.flop_counter`` (dense kernels)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, sample: torch.Tensor, training: bool = False) -> int:
    """FLOPs of one forward (``training=False``) or forward+backward pass on ``sample``.

    Counted on a copy in eval mode (no BatchNorm statistics update); divide by the
    batch size of ``sample`` for per-sample figures. Only matmul/conv-like ops are
    counted, as ``FlopCounterMode`` does.
    """
    model = copy.deepcopy(model).eval()
    with FlopCounterMode(display=False) as counter:
        out = model(sample)
        if training:
            logits = out[0] if isinstance(out, tuple) else out
            logits.sum().backward()
    return int(counter.get_total_flops())
