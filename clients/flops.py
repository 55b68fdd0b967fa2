"""FLOPs of a model, counted by ``torch.utils.flop_counter`` (dense kernels)."""

from __future__ import annotations

import copy
import hashlib
import inspect

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["cached_flops", "count_flops", "flops_description"]


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


def flops_description(model: nn.Module, sample: torch.Tensor) -> dict[str, object]:
    """What :func:`count_flops` of ``model`` on ``sample`` depends on (a cache key).

    The module tree (``repr``: every layer with its hyper-parameters), the name,
    shape and dtype of every parameter and buffer, the sample's shape and dtype, the
    torch version, and the source files of the model's own (non-torch) module
    classes, so that an edited ``forward`` does not meet an old figure.
    """
    sources = set()
    for module in model.modules():
        if not type(module).__module__.startswith("torch."):
            try:
                sources.add(inspect.getsourcefile(type(module)) or "")
            except TypeError:  # a class without a source file (built in)
                sources.add(type(module).__qualname__)
    hashes = {}
    for path in sorted(sources):
        try:
            with open(path, "rb") as fh:
                hashes[path] = hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            hashes[path] = None
    tensors = [(name, list(t.shape), str(t.dtype)) for name, t in model.state_dict().items()]
    return {
        "torch": torch.__version__,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "structure": hashlib.sha256(repr(model).encode()).hexdigest(),
        "tensors": hashlib.sha256(repr(tensors).encode()).hexdigest(),
        "sample": [list(sample.shape), str(sample.dtype)],
        "sources": hashes,
    }


def cached_flops(model: nn.Module, sample: torch.Tensor) -> tuple[int, int]:
    """``(forward, forward+backward)`` FLOPs of ``model`` on ``sample``, via :mod:`clients.cache`.

    The same figures as :func:`count_flops` (``training=False`` / ``True``); counted
    once per :func:`flops_description` and read from disk afterwards.
    """
    from clients import cache

    description = flops_description(model, sample)
    hit = cache.load("flops", description)
    if hit is not None and set(hit) == {"flops"} and hit["flops"].shape == (2,):
        return int(hit["flops"][0]), int(hit["flops"][1])
    figures = count_flops(model, sample, training=False), count_flops(model, sample, training=True)
    cache.store("flops", description, {"flops": np.asarray(figures, dtype=np.int64)})
    return figures
