"""ZeroFL (Qiu et al., ICLR 2022): SWAT on the clients plus a sparsified uplink.

No public code exists; the definitions below are **our reading** of the paper and are
options of :class:`ZeroFL`:

``uplink``
    ``topk_weights``: send the local weights at the top-K positions by ``|w_local|``
    (the weights SWAT keeps active), as values; ``diff_topk_weights``: send the update
    ``w_local - w_global`` at those same positions; ``topk_diff``: send the top-K
    entries of the update by ``|w_local - w_global|``.
``density``
    Fraction of each sparsified tensor sent: ``(1 - sparsity) + mask_ratio`` (capped
    at 1), exactly ``ceil(density * numel)`` positions per tensor.
Which tensors
    The weights of the SWAT layers (the builder passes their names); biases,
    BatchNorm parameters/statistics and any layer left dense are sent dense, as values.
Aggregation (``aggregation``)
    ``sender_mean`` (default): per position, the ``num-examples``-weighted average over
    the clients that sent that position; where no client sent it the previous global
    value is kept. For the diff variants the new value is ``global + weighted average
    of the sent diffs``. ``zero_fill``: plain FedAvg of the sparse uploads (unsent
    entries count as 0), under which the global ``topk_weights`` model is sparse.

Wire format (through the codec, :mod:`fl_strategies.codec`): a sparsified tensor
``name`` travels as one blob ``name@sent`` (:func:`fl_strategies.codec.encode_sent`):
its sent positions as a position set (the :func:`fl_strategies.codec.decode_positions`
wire: packed bits, uint32 indices or an entropy-coded form, chosen quickly by
``codec._sent_positions``), then the sent values in flat C order, raw or as zlib'd
byte planes (one block per plane), whichever is smaller (lossless). The positions are
explicit, so a position sent with the value exactly 0 (an unchanged weight under a
diff uplink) still counts as sent; a zero-suppressing sparse blob could not tell it
from "not sent". One blob per tensor, not two: Flower adds about 400 bytes to every
array of a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Message

from .base import ParsedReply, ReplyError, weighted_mean
from .codec import decode_sent, encode_sent
from .flwr_compat import log
from .swat import Swat, topk_keep_count
from .wire import ARRAYS_KEY, METRICS_KEY

UPLINKS = ("topk_weights", "diff_topk_weights", "topk_diff")
AGGREGATIONS = ("sender_mean", "zero_fill")
#: Key suffix of a sparsified tensor's blob (positions and values, :func:`pack_sent`).
SENT_SUFFIX = "@sent"
#: Client metric: fraction of the sparsified tensors' positions the reply sends.
UPLINK_DENSITY_KEY = "uplink-density"


def uplink_density(sparsity: float, mask_ratio: float) -> float:
    """Fraction of a sparsified tensor sent: ``(1 - sparsity) + mask_ratio``, at most 1."""
    return min(1.0, 1.0 - sparsity + mask_ratio)


def topk_exact(array: np.ndarray, density: float) -> np.ndarray:
    """Mask of exactly ``ceil(density * size)`` largest-magnitude entries.

    Unlike SWAT's threshold rule, ties are cut so the uplink budget is exact (e.g. an
    update that is zero almost everywhere still sends only ``k`` positions). Ties at
    the k-th magnitude go to the lowest flat indices, so the selection is the first
    ``k`` of a stable sort by decreasing magnitude (NaNs last), the same on every
    platform; it is found in linear time (``numpy.partition``), not by sorting.
    """
    flat = np.abs(array).reshape(-1)
    k = topk_keep_count(flat.size, density)
    mask = np.zeros(flat.size, dtype=bool)
    if k >= flat.size:
        mask[:] = True
        return mask.reshape(array.shape)
    # Negated magnitudes: ascending order then ranks NaN last, as the stable sort did.
    negated = np.negative(flat)
    kth = np.partition(negated, k - 1)[k - 1]
    if np.isnan(kth):
        # Fewer than k finite entries: all of them, then the first NaNs by index.
        tied, mask = np.isnan(negated), ~np.isnan(negated)
    else:
        tied = negated == kth
        np.less(negated, kth, out=mask)
    # Entries strictly above the k-th magnitude all go; the rest of the budget goes to
    # the lowest-index entries equal to it.
    need = k - int(np.count_nonzero(mask))
    mask[np.flatnonzero(tied)[:need]] = True
    return mask.reshape(array.shape)


def select_uplink(
    local: np.ndarray, global_value: np.ndarray, uplink: str, density: float
) -> tuple[np.ndarray, np.ndarray]:
    """What one sparsified tensor sends: ``(values, mask)``, both of the tensor's shape.

    Parameters
    ----------
    local, global_value : np.ndarray
        The client's trained tensor and the global tensor it started from.
    uplink : str
        One of :data:`UPLINKS`.
    density : float
        Fraction of positions to send.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        Values (weights or update, dense shape; only masked entries are sent) and the
        boolean mask of sent positions.

    """
    if uplink not in UPLINKS:
        raise ValueError(f"uplink must be one of {UPLINKS}, got {uplink!r}")
    if uplink == "topk_weights":
        return local, topk_exact(local, density)
    diff = (local.astype(np.float64) - global_value.astype(np.float64)).astype(local.dtype)
    if uplink == "diff_topk_weights":
        return diff, topk_exact(local, density)
    return diff, topk_exact(diff, density)


def pack_sent(name: str, values: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Wire array for one sparsified tensor: its sent positions and values, one blob."""
    return {name + SENT_SUFFIX: encode_sent(values, mask)}


def unpack_sent(
    arrays: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...], dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_sent`: dense values (0 where not sent) and the sent mask.

    ``shape`` and ``dtype`` are the global tensor's: the blob is decoded against them,
    never against sizes it claims.

    Raises
    ------
    ValueError
        If the entry is missing or malformed, or its positions are inconsistent or
        out of range (:class:`CodecError` is a ValueError).

    """
    key = name + SENT_SUFFIX
    if key not in arrays:
        raise ValueError(f"'{name}' needs '{key}'")
    blob = np.asarray(arrays[key])
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError(f"'{key}' must be a sent-values blob (1-D uint8)")
    size = int(np.prod(shape, dtype=np.int64))
    positions, values = decode_sent(blob, size, dtype)
    dense = np.zeros(size, dtype=values.dtype)
    dense[positions] = values
    flat_mask = np.zeros(size, dtype=bool)
    flat_mask[positions] = True
    return dense.reshape(shape), flat_mask.reshape(shape)


def aggregate_sparse(
    global_value: np.ndarray,
    values: list[np.ndarray],
    masks: list[np.ndarray],
    weights: list[float],
    additive: bool,
    aggregation: str = "sender_mean",
) -> np.ndarray:
    """Merge sparse uploads of one tensor.

    ``sender_mean`` (our reading, default): per position, the weighted average of the
    values of the clients whose mask has it; positions no client sent keep
    ``global_value``. ``zero_fill``: FedAvg of the uploads with unsent entries counted
    as 0 (divide by the weight of *all* clients); for ``topk_weights`` positions nobody
    sent become 0, so the global model is as sparse as the union of the uploads (what
    the paper's Figure 1 shows after aggregation). ``additive`` (the diff uplinks): the
    average is an update added to ``global_value``.

    Under ``sender_mean`` the ``topk_weights`` and ``diff_topk_weights`` uplinks give
    the same model: ``g + sum n_i (w_i - g) / sum n_i = sum n_i w_i / sum n_i`` over
    the senders of a position; they differ only in bytes (updates have exact zeros).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if len(values) != len(masks) or len(masks) != len(weights):
        raise ValueError("values, masks and weights differ in length")
    # Only the sent positions (a small fraction) are read: one weighted bincount over
    # every client's positions, concatenated in client order, adds per position in the
    # same order (and so to the same float64 sums) as a dense masked sum would.
    where = [np.flatnonzero(mask) for mask in masks]
    positions = np.concatenate([np.zeros(0, np.intp), *where])
    terms = [
        v.reshape(-1)[w].astype(np.float64) * weight
        for v, w, weight in zip(values, where, weights, strict=True)
    ]
    shares = np.repeat(np.asarray(weights, dtype=np.float64), [w.size for w in where])
    num = np.bincount(positions, np.concatenate([np.zeros(0), *terms]), global_value.size)
    den = np.bincount(positions, shares, global_value.size)
    flat_global = global_value.reshape(-1)
    if aggregation == "zero_fill":
        average = num / float(sum(weights))
        merged = flat_global.astype(np.float64) + average if additive else average
        return merged.astype(global_value.dtype).reshape(global_value.shape)
    # sender_mean: only positions someone sent change (in float64, then the global
    # dtype); the others keep the global value (+ 0.0 under a diff uplink, which
    # turns -0.0 into 0.0 as adding a zero update in float64 does).
    sent = np.flatnonzero(den > 0)
    average = num[sent] / den[sent]
    if additive:
        merged = flat_global + np.zeros((), flat_global.dtype)
        merged[sent] = (flat_global[sent].astype(np.float64) + average).astype(global_value.dtype)
    else:
        merged = flat_global.copy()
        merged[sent] = average.astype(global_value.dtype)
    return merged.reshape(global_value.shape)


@dataclass
class SparseReply(ParsedReply):
    """A validated ZeroFL reply; ``sent`` holds the sent-position masks."""

    sent: dict[str, np.ndarray] = field(default_factory=dict)


class ZeroFL(Swat):
    """ZeroFL: SWAT-trained clients that upload only part of their sparsified tensors.

    Parameters
    ----------
    uplink : str (default: "topk_weights")
        ``topk_weights``, ``diff_topk_weights`` or ``topk_diff`` (module docstring;
        our reading of the paper).
    mask_ratio : float (default: 0.0)
        Extra fraction sent on top of SWAT's ``1 - sparsity``.
    aggregation : str (default: "sender_mean")
        ``sender_mean`` (our reading) or ``zero_fill``; see :func:`aggregate_sparse`.
    **kwargs
        Passed to :class:`fl_strategies.swat.Swat` (``sparsity``, ``sparse_keys``,
        ``eval_topk``) and on to the base strategy.

    """

    method_name = "zerofl"

    def __init__(
        self,
        uplink: str = "topk_weights",
        mask_ratio: float = 0.0,
        aggregation: str = "sender_mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if uplink not in UPLINKS:
            raise ValueError(f"uplink must be one of {UPLINKS}, got {uplink!r}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.aggregation = aggregation
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        self.uplink = uplink
        self.mask_ratio = float(mask_ratio)
        self.uplink_stats: dict[int, dict[str, float]] = {}

    @property
    def density(self) -> float:
        """Fraction of each sparsified tensor a client sends."""
        return uplink_density(self.sparsity, self.mask_ratio)

    @property
    def additive(self) -> bool:
        """Whether clients send updates (diffs) rather than weights."""
        return self.uplink != "topk_weights"

    def expected_reply_arrays(self, server_round: int) -> dict[str, tuple[int, ...]]:
        """Dense tensors a reply must carry (the sparsified ones are checked apart)."""
        return {k: v.shape for k, v in self.global_arrays.items() if k not in self.sparse_keys}

    def parse_train_reply(self, server_round: int, message: Message) -> SparseReply:
        """Validate a reply: dense tensors as the base does, sparse ones by position."""
        content = message.content
        num_examples = self._num_examples(content)
        dense_expected = self.expected_reply_arrays(server_round)
        # Dense tensors' shapes are checked while decoding; the sent values' keys below.
        arrays = self.decode_reply(server_round, content, ARRAYS_KEY, dense_expected, exact_keys=False)
        wire_names = set(dense_expected)
        values: dict[str, np.ndarray] = {}
        sent: dict[str, np.ndarray] = {}
        for name in self.sparse_keys:
            reference = self.global_arrays[name]
            try:
                values[name], sent[name] = unpack_sent(arrays, name, reference.shape, reference.dtype)
            except ValueError as exc:
                raise ReplyError(str(exc)) from exc
            budget = topk_keep_count(sent[name].size, self.density)
            count = int(np.count_nonzero(sent[name]))
            if count > budget:
                raise ReplyError(
                    f"'{name}' sends {count} positions, more than the {budget} of density {self.density:.3f}"
                )
            wire_names.add(name + SENT_SUFFIX)
        missing = sorted(set(dense_expected) - set(arrays))
        extra = sorted(set(arrays) - wire_names)
        if missing or extra:
            raise ReplyError(f"array keys differ: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, shape in dense_expected.items():
            value = arrays[name]
            if tuple(value.shape) != tuple(shape):
                raise ReplyError(f"array '{name}' has shape {value.shape}, expected {shape}")
            if value.dtype.kind != self.global_arrays[name].dtype.kind:
                raise ReplyError(
                    f"array '{name}' has dtype {value.dtype}, expected {self.global_arrays[name].dtype}"
                )
            values[name] = value
        for name, value in values.items():
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ReplyError(f"array '{name}' has non-finite values")
        return SparseReply(
            node_id=message.metadata.src_node_id,
            num_examples=num_examples,
            arrays=values,
            metrics=content.metric_records[METRICS_KEY],
            content=content,
            sent=sent,
        )

    def update_reference(self, server_round: int, reply: ParsedReply) -> dict[str, np.ndarray]:
        """Dense tensors: the global ones; sparsified: the global values where sent (0 for diffs)."""
        reference = super().update_reference(server_round, reply)
        for name, sent in getattr(reply, "sent", {}).items():
            base = np.zeros_like(self.global_arrays[name]) if self.additive else self.global_arrays[name]
            reference[name] = np.where(sent, base, 0).astype(self.global_arrays[name].dtype)
        return reference

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """Dense tensors: weighted mean; sparsified ones: :func:`aggregate_sparse`."""
        self.record_flops(server_round, replies)
        weights = [r.weight for r in replies]
        dense_keys = [k for k in self.global_arrays if k not in self.sparse_keys]
        merged = (
            weighted_mean([{k: r.arrays[k] for k in dense_keys} for r in replies], weights)
            if dense_keys
            else {}
        )
        sent_total, covered, size = 0, 0, 0
        for name in self.sparse_keys:
            masks = [r.sent[name] for r in replies]  # type: ignore[attr-defined]
            merged[name] = aggregate_sparse(
                self.global_arrays[name],
                [r.arrays[name] for r in replies],
                masks,
                weights,
                self.additive,
                self.aggregation,
            )
            sent_total += sum(int(np.count_nonzero(m)) for m in masks)
            covered += int(np.count_nonzero(np.logical_or.reduce(masks)))
            size += masks[0].size
        if size:
            self.uplink_stats[server_round] = {
                "uplink_density": sent_total / (size * len(replies)),
                "uplink_coverage": covered / size,
            }
        return {**self.global_arrays, **merged}

    def method_metrics(self, server_round: int) -> dict[str, float]:
        """FLOPs (see :class:`Swat`), mean sent fraction and union coverage of the round."""
        return {**super().method_metrics(server_round), **self.uplink_stats.get(server_round, {})}

    def summary_fields(self) -> dict[str, Any]:
        """Uplink settings next to SWAT's fields."""
        return {
            **super().summary_fields(),
            "uplink": self.uplink,
            "aggregation": self.aggregation,
            "mask_ratio": self.mask_ratio,
            "uplink_density_target": self.density,
        }

    def summary(self) -> None:
        """Log the uplink settings."""
        log(
            INFO,
            "\t├──> ZeroFL uplink: %s, density %.3f (mask_ratio %s), aggregation %s",
            self.uplink,
            self.density,
            self.mask_ratio,
            self.aggregation,
        )
        super().summary()
