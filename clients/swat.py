"""SWAT layers (Raihan & Aamodt, 2020: Sparse Weight Activation Training) in pure PyTorch.

A SWAT layer is a ``Conv2d`` or ``Linear`` whose training step is sparse on both sides:

* **forward**: only the top-K weights by magnitude (fraction ``1 - sparsity`` of the
  layer's weights) take part; the others are treated as zero;
* **backward**: the input activations saved for the weight gradient are top-K'd too
  (same fraction, by magnitude, over the whole batch tensor), so the weight gradient
  ``dW = dY^T * topk(X)`` is computed from sparse activations; the input gradient
  ``dX = dY * topk(W)`` uses the sparse weights. The weight gradient itself is dense,
  so every weight keeps training and the model stays dense.

Top-K is SWAT's reference rule: ``k = ceil(keep * numel)``, threshold = the k-th
largest magnitude, keep every entry with ``|x| >= threshold`` (ties are kept). By
default (``period = 1``) both thresholds are recomputed at every training batch, in
Linear and Conv2d layers alike, as the reference's Linear layer does
(AamirRaihan/SWAT ``custom_linear.py`` runs its top-K on every forward). ``period > 1``
is an option of ours that applies the reference Conv layer's ``topk_period`` (and
``warmup``) rule to both layer types: thresholds are recomputed every ``period``
training batches and at every batch of a warm-up, and reused in between, so the kept
fraction drifts a little and the top-K cost falls. Evaluation (``model.eval()``) also
uses the top-K weights, as the reference does at test time. The reference's file-based
per-layer thresholds and compiled kernels are not copied: thresholds live on the module
(not in its state dict).

The replacements subclass ``nn.Conv2d``/``nn.Linear`` and keep the *same* Parameter
objects, so parameter names (``weight``/``bias``) and state dicts are unchanged:
a global model loads into a SWAT model and back.

FLOPs: each training forward records the FLOPs its matmul/conv would cost dense and
sparse (counted analytically from the nonzeros; see :meth:`SwatMixin._count`). These
are what a sparse kernel *could* save; the masked dense kernels run here are not any
faster than dense ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from fl_strategies.swat import topk_keep_count

from .train import replace_modules

__all__ = [
    "SwatConfig",
    "SwatConv2d",
    "SwatLinear",
    "SwatMixin",
    "reset_swat_stats",
    "swat_flops",
    "swat_layer_names",
    "swat_layers",
    "swatify",
    "topk_keep_count",
    "topk_mask",
    "topk_threshold",
]


@torch.no_grad()
def _kth_largest(magnitude: Tensor, keep: float) -> Tensor:
    """The k-th largest entry of a tensor of magnitudes, ``k = ceil(keep * numel)`` (0-d, same dtype)."""
    flat = magnitude.reshape(-1)
    k = topk_keep_count(flat.numel(), keep)
    if flat.device.type == "cpu":
        # numpy's introselect is about 10x faster than torch's CPU kthvalue on these
        # sizes (0.13 ms against 1.2 ms for 65,536 floats) and selects the same value.
        values = flat.float().numpy()
        kth = np.partition(values, values.size - k)[values.size - k]
        return torch.tensor(float(kth), dtype=magnitude.dtype)
    # k-th largest == (numel - k + 1)-th smallest; kthvalue is linear time.
    return flat.float().kthvalue(flat.numel() - k + 1).values.to(magnitude.dtype)


@torch.no_grad()
def topk_threshold(x: Tensor, keep: float) -> Tensor:
    """Magnitude of the k-th largest ``|x|``, ``k = ceil(keep * numel)`` (a 0-d tensor)."""
    return _kth_largest(x.detach().abs(), keep)


@torch.no_grad()
def topk_mask(x: Tensor, keep: float) -> Tensor:
    """Boolean mask of the top-K entries of ``x`` by magnitude (ties at the threshold kept)."""
    return x.abs() >= topk_threshold(x, keep)


@dataclass(frozen=True)
class SwatConfig:
    """Settings of SWAT layers.

    Attributes
    ----------
    sparsity : float
        Fraction of weights (and of saved activations) dropped, in [0, 1).
    period : int
        Recompute the top-K thresholds every ``period`` training batches. 1 (the
        default) = every batch, as the reference's Linear layer; > 1 reuses them in
        between (the reference Conv layer's ``topk_period``; an option of ours for both
        layer types).
    warmup : int
        Recompute them at every one of the first ``warmup`` training batches of the
        layer's life (a client's round, in FL: layers are made fresh each round).

    """

    sparsity: float = 0.9
    period: int = 1
    warmup: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.period < 1:
            raise ValueError(f"period must be >= 1, got {self.period}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    @property
    def keep(self) -> float:
        """Fraction kept (``1 - sparsity``)."""
        return 1.0 - self.sparsity


class _SwatLinearFn(torch.autograd.Function):
    """Linear with given top-K weights (forward) and top-K activations (weight gradient)."""

    @staticmethod
    def forward(ctx, x, weight, bias, sparse_weight, x_sparse):  # noqa: D102
        ctx.save_for_backward(x_sparse, sparse_weight)
        ctx.has_bias = bias is not None
        return F.linear(x, sparse_weight, bias)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x_sparse, sparse_weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.matmul(sparse_weight)
        if ctx.needs_input_grad[1]:
            grad_w = grad_2d.t().mm(x_sparse.reshape(-1, x_sparse.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_2d.sum(0)
        return grad_x, grad_w, grad_b, None, None


class _SwatConv2dFn(torch.autograd.Function):
    """Conv2d with given top-K weights (forward) and top-K activations (weight gradient)."""

    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        sparse_weight,
        x_sparse,
        stride,
        padding,  # noqa: D102
        dilation,
        groups,
    ):
        ctx.save_for_backward(x_sparse, sparse_weight)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return F.conv2d(x, sparse_weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x_sparse, sparse_weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_b = ctx.bias_sizes is not None and ctx.needs_input_grad[2]
        # grad_input depends on the input's shape only, grad_weight on its values:
        # passing the top-K'd activations gives SWAT's dW = dY * topk(X).
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out,
            x_sparse,
            sparse_weight,
            ctx.bias_sizes,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], need_b],
        )
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


class SwatMixin:
    """Threshold state, refresh schedule and FLOP counters shared by SWAT layers.

    Attributes
    ----------
    swat : SwatConfig
        The layer's settings.
    steps : int
        Training forwards seen (batches).
    refreshes : int
        Times the two top-K thresholds were computed (training forwards only).
    flops_dense, flops_swat : int
        FLOPs of the training forwards+backwards seen since :meth:`reset_stats`, as
        dense kernels count them and as sparse kernels would need them.

    Each training forward counts the nonzeros of the top-K tensors it builds anyway,
    as device tensors: nothing waits for the device during training. The counts are
    turned into FLOPs (Python integers, exact) when ``flops_swat`` is read, in one
    transfer.

    """

    swat: SwatConfig
    weight: nn.Parameter

    def _init_swat(self, config: SwatConfig) -> None:
        self.swat = config
        self.steps = 0
        self.refreshes = 0
        self.weight_threshold: Tensor | None = None
        self.act_threshold: Tensor | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        """Zero the FLOP counters."""
        self.flops_dense = 0
        self._flops_swat = 0
        # Per training forward since the last read: the nonzero counts (device tensors,
        # not yet read) and the step's shape terms (out positions, passes, numel(X)).
        self._pending: list[tuple[Tensor, Tensor, int, int, int]] = []

    @property
    def flops_swat(self) -> int:
        """Sparse FLOPs since :meth:`reset_stats` (reads the pending nonzero counts)."""
        if self._pending:
            counts = torch.stack([c for step in self._pending for c in step[:2]]).tolist()
            numel_w = self.weight.numel()
            for i, (_, _, out_positions, passes, numel_x) in enumerate(self._pending):
                nnz_w, nnz_x = counts[2 * i], counts[2 * i + 1]
                dense_one = 2 * out_positions * numel_w
                self._flops_swat += 2 * out_positions * nnz_w * passes
                self._flops_swat += round(dense_one * nnz_x / max(numel_x, 1))
            self._pending = []
        return self._flops_swat

    def _refresh_due(self) -> bool:
        return (
            self.weight_threshold is None
            or self.steps < self.swat.warmup
            or self.steps % self.swat.period == 0
        )

    @torch.no_grad()
    def _sparse_operands(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(top-K weights, top-K activations) of one training forward.

        Refreshes the two thresholds on schedule (:func:`topk_threshold`); ``|W|`` and
        ``|X|`` are computed once per forward for the masks.
        """
        weight = self.weight.detach()
        weight_abs, x_abs = weight.abs(), x.detach().abs()
        if self._refresh_due():
            # |.| of a magnitude is a no-op copy; topk_threshold is the one entry point.
            self.weight_threshold = topk_threshold(weight_abs, self.swat.keep)
            self.act_threshold = topk_threshold(x_abs, self.swat.keep)
            self.refreshes += 1
        self.steps += 1
        sparse_weight = weight * (weight_abs >= self.weight_threshold)
        x_sparse = x.detach() * (x_abs >= self.act_threshold.to(x.dtype))  # type: ignore[union-attr]
        return sparse_weight, x_sparse

    def _count(self, sparse_weight: Tensor, x_sparse: Tensor, out_positions: int, input_grad: bool) -> None:
        """Add one training step's FLOPs (2 per multiply-accumulate).

        ``out_positions`` is how many times each weight is applied (batch rows for
        Linear, ``B * H_out * W_out`` for Conv2d). Dense, as ``torch.utils.flop_counter``
        counts it: forward ``2*P*numel(W)``; weight gradient the same; input gradient
        the same where the input needs a gradient. Sparse: forward and input gradient
        ``2*P*nnz(topk(W))``; weight gradient ``dense * nnz(topk(X)) / numel(X)``
        (exact for Linear, ``2*out*nnz(X)``; for Conv2d it ignores padding borders).
        The nonzeros are counted on the top-K tensors the step uses, without reading
        them back (see :attr:`flops_swat`).
        """
        passes = 1 + int(input_grad)  # forward (+ input gradient)
        self.flops_dense += 2 * out_positions * self.weight.numel() * (passes + 1)
        nnz = (torch.count_nonzero(sparse_weight), torch.count_nonzero(x_sparse))
        self._pending.append((*nnz, out_positions, passes, x_sparse.numel()))
        if len(self._pending) >= 4096:
            self.flops_swat  # noqa: B018  (bounds the pending list on long local training)


class SwatLinear(SwatMixin, nn.Linear):
    """``nn.Linear`` trained the SWAT way (see the module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: SwatConfig | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_swat(config or SwatConfig())

    @classmethod
    def from_dense(cls, module: nn.Linear, config: SwatConfig) -> SwatLinear:
        """A SWAT layer sharing ``module``'s Parameters (same names, same values)."""
        new = cls(module.in_features, module.out_features, module.bias is not None, config, device="meta")
        new.weight, new.bias = module.weight, module.bias
        new.train(module.training)
        return new

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.training and torch.is_grad_enabled():
            sparse_weight, x_sparse = self._sparse_operands(x)
            self._count(sparse_weight, x_sparse, x.numel() // self.in_features, x.requires_grad)
            return _SwatLinearFn.apply(x, self.weight, self.bias, sparse_weight, x_sparse)
        # Evaluation uses the current top-K weights; activations are not touched.
        return F.linear(x, self.weight * topk_mask(self.weight, self.swat.keep), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, sparsity={self.swat.sparsity}"


class SwatConv2d(SwatMixin, nn.Conv2d):
    """``nn.Conv2d`` trained the SWAT way (see the module docstring)."""

    def __init__(self, *args, config: SwatConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_swat(config or SwatConfig())

    @classmethod
    def from_dense(cls, module: nn.Conv2d, config: SwatConfig) -> SwatConv2d:
        """A SWAT layer sharing ``module``'s Parameters (same names, same values)."""
        new = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            config=config,
            device="meta",
        )
        new.weight, new.bias = module.weight, module.bias
        new.train(module.training)
        return new

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            # Pad explicitly so the backward sees integer paddings.
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        if self.training and torch.is_grad_enabled():
            sparse_weight, x_sparse = self._sparse_operands(x)
            out = _SwatConv2dFn.apply(
                x,
                self.weight,
                self.bias,
                sparse_weight,
                x_sparse,
                self.stride,
                padding,
                self.dilation,
                self.groups,
            )
            self._count(sparse_weight, x_sparse, out.numel() // self.out_channels, x.requires_grad)
            return out
        # Evaluation uses the current top-K weights; activations are not touched.
        mask = topk_mask(self.weight, self.swat.keep)
        return F.conv2d(x, self.weight * mask, self.bias, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, sparsity={self.swat.sparsity}"


def swat_layer_names(model: nn.Module, sparsify_first: bool = False, sparsify_last: bool = True) -> list[str]:
    """Names of the Conv2d/Linear modules SWAT replaces, in registration order.

    Parameters
    ----------
    model : nn.Module
        The (dense) model.
    sparsify_first : bool (default: False)
        Also the first Conv2d/Linear (reference ``sparsify_first_layer: False``).
    sparsify_last : bool (default: True)
        Also the last one, usually the classifier (reference ``sparsify_last_layer: True``).

    """
    names = [name for name, m in model.named_modules() if name and isinstance(m, nn.Conv2d | nn.Linear)]
    chosen = list(names)
    if names and not sparsify_first:
        chosen.remove(names[0])
    if names and not sparsify_last and names[-1] in chosen:
        chosen.remove(names[-1])
    return chosen


def swatify(model: nn.Module, config: SwatConfig, names: Iterable[str]) -> int:
    """Replace the named Conv2d/Linear modules of ``model`` by SWAT layers, in place.

    Returns the number replaced. Parameter names and values are unchanged.
    """
    wanted = set(names)

    def make(module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Conv2d):
            return SwatConv2d.from_dense(module, config)
        return SwatLinear.from_dense(module, config)  # type: ignore[arg-type]

    count = replace_modules(
        model,
        lambda name, m: (
            name in wanted and isinstance(m, nn.Conv2d | nn.Linear) and not isinstance(m, SwatMixin)
        ),
        make,
    )
    if count != len(wanted):
        raise ValueError(f"swatify replaced {count} modules, {len(wanted)} were named")
    return count


def swat_layers(model: nn.Module) -> dict[str, SwatMixin]:
    """The SWAT layers of a model by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SwatMixin)}


def swat_flops(model: nn.Module) -> tuple[int, int]:
    """(dense, sparse) FLOPs counted by the model's SWAT layers since the last reset."""
    layers = swat_layers(model).values()
    return sum(m.flops_dense for m in layers), sum(m.flops_swat for m in layers)


def reset_swat_stats(model: nn.Module) -> None:
    """Zero the FLOP counters of every SWAT layer."""
    for layer in swat_layers(model).values():
        layer.reset_stats()
