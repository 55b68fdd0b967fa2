"""CPU inference throughput of a pruned model: dense format vs sparse (CSR) format.

A pruned model stored densely (zeros in dense tensors) runs exactly as many
multiply-adds as the unpruned one, so it is *not* faster: its dense-format
throughput is the dense baseline. The sparse format here replaces every
``nn.Linear`` with :class:`CSRLinear` (``torch.sparse`` CSR weight, ``torch.sparse.mm``);
convolutions stay dense (PyTorch has no sparse convolution on CPU), so for CNNs only
the classifier layers change. Both are measured the same way: items per second over a
fixed wall-clock window after a warm-up, in ``torch.inference_mode``, with a fixed
number of CPU threads.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from clients.methods import load_arrays
from clients.models import build_from_dims
from clients.train import replace_modules


class CSRLinear(nn.Module):
    """Inference-only ``nn.Linear`` whose weight is a CSR sparse tensor."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        with warnings.catch_warnings():  # "CSR support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            self.weight_csr = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        """``x @ W.T + b`` with ``W`` sparse."""
        flat = x.reshape(-1, self.in_features)
        out = torch.sparse.mm(self.weight_csr, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def to_csr(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every Linear layer in CSR format; and their count."""
    sparse = copy.deepcopy(model).eval()
    count = replace_modules(sparse, lambda _, m: isinstance(m, nn.Linear), CSRLinear)
    return sparse, count


@torch.inference_mode()
def items_per_second(model: nn.Module, inputs: Tensor, seconds: float = 1.0, warmup: float = 0.05) -> float:
    """Inputs processed per second by ``model`` on repeated batches ``inputs``."""
    model.eval()
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        model(inputs)
    batches, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        model(inputs)
        batches += 1
    return batches * inputs.shape[0] / elapsed


def inference_report(
    model: nn.Module,
    input_shape: tuple[int, ...],
    seconds: float = 1.0,
    batch_sizes: tuple[int, ...] = (1, 64),
    threads: int = 1,
    repeats: int = 5,
) -> dict[str, Any]:
    """Throughput (items/s) of ``model`` in dense and in CSR format, per batch size.

    Parameters
    ----------
    model : nn.Module
        The (pruned) model, on CPU.
    input_shape : tuple[int, ...]
        Shape of one input (e.g. ``(1, 8, 8)``).
    seconds : float (default: 1.0)
        Measuring time per format and batch size, split into ``repeats`` windows.
    batch_sizes : tuple[int, ...] (default: (1, 64))
        Batch sizes to measure.
    threads : int (default: 1)
        ``torch.set_num_threads`` during the measurement (restored after).
    repeats : int (default: 5)
        Alternating dense/CSR windows; the medians are reported.

    """
    model = model.cpu().eval()
    sparse, csr_layers = to_csr(model)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    report: dict[str, Any] = {"inference_threads": threads, "inference_csr_layers": csr_layers}
    try:
        with torch.inference_mode():
            check = torch.randn(8, *input_shape, generator=generator)
            report["inference_csr_max_abs_diff"] = float((model(check) - sparse(check)).abs().max())
        for batch in batch_sizes:
            inputs = torch.randn(batch, *input_shape, generator=generator)
            # Alternate the formats in short windows and keep the medians, so that a
            # load change on a shared machine hits both alike.
            dense, csr = [], []
            for _ in range(repeats):
                dense.append(items_per_second(model, inputs, seconds / repeats))
                csr.append(items_per_second(sparse, inputs, seconds / repeats))
            report[f"inference_dense_b{batch}_items_s"] = float(np.median(dense))
            report[f"inference_csr_b{batch}_items_s"] = float(np.median(csr))
    finally:
        torch.set_num_threads(previous)
    return report


def final_model_benchmark(
    dims: Mapping[str, Any], seconds: float = 1.0
) -> Callable[[Mapping[str, np.ndarray]], dict[str, Any]]:
    """A strategy's ``final_model_fn``: load the final arrays, measure both formats.

    Parameters
    ----------
    dims : Mapping[str, Any]
        ``name``, ``in_channels``, ``num_classes``, ``image_size`` of the model
        (see :func:`clients.models.model_dims`).
    seconds : float (default: 1.0)
        Measuring window per format and batch size; 0 skips the measurement.

    """

    def benchmark(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        if seconds <= 0:
            return {}
        model = build_from_dims(dims)
        load_arrays(model, arrays)
        shape = (int(dims["in_channels"]), int(dims["image_size"]), int(dims["image_size"]))
        return inference_report(model, shape, seconds=seconds)

    return benchmark
