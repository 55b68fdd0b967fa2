"""Pure helpers of the pruning methods: schedule, global pruning, majority vote.

Everything here works on plain ``dict[str, numpy.ndarray]`` models and boolean
*keep masks* (``True`` = the weight is alive), so that server and clients share
one definition of what is prunable and how a target sparsity becomes a mask.

Two invariants hold for every helper that makes a mask from an old one:
the number of pruned positions is exactly the target count (:func:`target_count`),
and a position pruned in the old mask stays pruned (sparsity never decreases,
a pruned weight never regrows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .base import weighted_mean

PRUNE_SCOPES = ("weights", "all")
MV_AVERAGES = ("all", "nnz")

# State-dict entries that are statistics, not parameters: never pruned.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

Mask = dict[str, np.ndarray]


def sparsity_at(
    t: int,
    s_0: float = 0.0,
    s_f: float = 0.9,
    t_0: int = 1,
    T: int = 100,  # noqa: N803 - the paper's name
    frequency: int = 1,
    exponent: float = 3.0,
) -> float:
    """Target sparsity of round ``t`` under FedSparsify's schedule (eq. 1 of the paper).

    ``s_t = s_f + (s_0 - s_f) * (1 - (t' - t_0) / (T - t_0)) ** exponent`` where
    ``t'`` is ``t`` snapped down to a multiple of ``frequency``; ``s_t = s_0`` while
    ``t' < t_0``, and ``s_t = s_f`` from round ``T`` on (also when ``T`` is not a
    multiple of ``frequency``, so that the run always ends at ``s_f``).

    Parameters
    ----------
    t : int
        Federation round (1-based; the model aggregated in round ``t`` is pruned
        to ``s_t``).
    s_0 : float (default: 0.0)
        Initial sparsity.
    s_f : float (default: 0.9)
        Final sparsity, reached at round ``T``.
    t_0 : int (default: 1)
        First pruning round.
    T : int (default: 100)
        Round at which ``s_f`` is reached (usually the number of rounds).
    frequency : int (default: 1)
        Prune every ``frequency`` rounds.
    exponent : float (default: 3.0)
        Shape of the curve; larger prunes more early.

    Returns
    -------
    float
        The sparsity in ``[min(s_0, s_f), max(s_0, s_f)]``; non-decreasing in ``t``
        when ``s_f >= s_0``.

    """
    if frequency < 1:
        raise ValueError(f"frequency must be >= 1, got {frequency}")
    if T < t_0:
        raise ValueError(f"T={T} must be >= t_0={t_0}")
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    if t >= T:
        return float(s_f)
    snapped = (t // frequency) * frequency
    if snapped < t_0:
        return float(s_0)
    progress = (snapped - t_0) / (T - t_0)
    # Algebraically eq. 1; written so that progress 0 gives exactly s_0.
    return float(s_0 + (s_f - s_0) * (1.0 - (1.0 - progress) ** exponent))


def is_prunable(name: str, array: np.ndarray, scope: str = "weights") -> bool:
    """Whether a state-dict entry is pruned.

    ``weights``: floating tensors with at least two dimensions (the weights of
    Conv and Linear layers; biases and BatchNorm's 1-D tensors are not).
    ``all``: every floating parameter (the reference prunes every trainable
    variable), but never BatchNorm's running statistics.
    """
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"prune scope must be one of {PRUNE_SCOPES}, got {scope!r}")
    if not np.issubdtype(np.asarray(array).dtype, np.floating):
        return False
    if name.endswith(_BUFFER_SUFFIXES):
        return False
    return scope == "all" or np.ndim(array) >= 2


def prunable_names(arrays: Mapping[str, np.ndarray], scope: str = "weights") -> list[str]:
    """Names of the prunable entries of a model, in the model's order."""
    return [name for name, value in arrays.items() if is_prunable(name, value, scope)]


def full_mask(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> Mask:
    """A keep mask that keeps everything."""
    return {name: np.ones(np.shape(arrays[name]), dtype=bool) for name in names}


def mask_from_zeros(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> Mask:
    """Keep mask read off a masked model: a weight is alive iff it is nonzero."""
    return {name: np.asarray(arrays[name]) != 0 for name in names}


def apply_mask(arrays: Mapping[str, np.ndarray], keep: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copy of ``arrays`` with the pruned positions set to exactly zero."""
    out = dict(arrays)
    for name, mask in keep.items():
        out[name] = np.where(mask, arrays[name], 0).astype(arrays[name].dtype)
    return out


def target_count(total: int, sparsity: float) -> int:
    """Number of pruned positions for a sparsity: ``round(sparsity * total)``."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return min(total, int(math.floor(sparsity * total + 0.5)))


def mask_counts(keep: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(pruned, total) positions of a keep mask."""
    total = sum(int(m.size) for m in keep.values())
    alive = sum(int(np.count_nonzero(m)) for m in keep.values())
    return total - alive, total


def prune_by_score(scores: Mapping[str, np.ndarray], keep: Mapping[str, np.ndarray], sparsity: float) -> Mask:
    """Prune the lowest-scored alive positions, pooled over all tensors.

    Parameters
    ----------
    scores : Mapping[str, np.ndarray]
        Importance of each position (higher = keep), same names/shapes as ``keep``.
    keep : Mapping[str, np.ndarray]
        The current keep mask; its pruned positions stay pruned.
    sparsity : float
        Target fraction of pruned positions over all tensors of ``keep``.

    Returns
    -------
    dict[str, np.ndarray]
        The new keep mask, with exactly ``max(target_count(total, sparsity),
        already pruned)`` pruned positions.

    """
    names = list(keep)
    if not names:
        return {}
    old = np.concatenate([np.asarray(keep[n], dtype=bool).reshape(-1) for n in names])
    parts = [np.asarray(scores[n]).reshape(-1) for n in names]
    flat = np.concatenate(parts) if all(p.dtype == np.float32 for p in parts) else None
    if flat is not None and flat.shape == old.shape and bool(np.isfinite(flat).all()):
        # Finite float32 scores (magnitudes of float32 weights) order exactly as their
        # float64 widening, which nan_to_num leaves unchanged: the same selection at
        # half the memory traffic.
        flat = _where_alive(old, flat)
    else:
        flat = np.concatenate([p.astype(np.float64, copy=False) for p in parts])
        if flat.shape != old.shape:
            raise ValueError("scores and keep mask differ in size")
        flat = np.where(old, np.nan_to_num(flat, nan=-np.inf), -np.inf)
    already = int(old.size - np.count_nonzero(old))
    count = max(target_count(old.size, sparsity), already)
    new = np.ones(old.size, dtype=bool)
    if count >= old.size:
        new[:] = False
    elif count > 0:
        lowest = _lowest_if_unique(flat, old, count, already)
        if lowest is not None:
            np.logical_not(lowest, out=new)  # = new[lowest] = False, branch-free
        else:
            # argpartition picks exactly `count` positions even among ties; pruned ones
            # (-inf) come first, so the old mask is contained in the new one.
            # Widened so that ties resolve as they do for float64 scores.
            new[np.argpartition(flat.astype(np.float64, copy=False), count - 1)[:count]] = False
    out: Mask = {}
    offset = 0
    for name in names:
        size = int(np.asarray(keep[name]).size)
        out[name] = new[offset : offset + size].reshape(np.shape(keep[name]))
        offset += size
    return out


def _where_alive(old: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``np.where(old, flat, -inf)`` for float32 ``flat``, bit for bit, by word masks.

    ``np.where`` branches per element and is ~8x slower on an irregular keep mask.
    """
    select = old.view(np.uint8).astype(np.uint32)
    select *= np.uint32(0xFFFFFFFF)
    out = flat.view(np.uint32) & select
    out |= np.array(-np.inf, np.float32).view(np.uint32) & ~select
    return out.view(np.float32)


def _lowest_if_unique(flat: np.ndarray, old: np.ndarray, count: int, already: int) -> np.ndarray | None:
    """The ``count`` lowest scores as a boolean vector, if no tie makes the choice ambiguous.

    ``flat`` holds -inf at the ``already`` pruned positions of ``old``. The threshold is
    found among the alive scores alone (argpartition over many equal -inf entries is
    slow); where exactly ``count`` scores are at or below it, that set is the one any
    selection, :func:`numpy.argpartition` included, returns. None: ties at the threshold.
    """
    if count > already:
        alive = np.compress(old, flat)  # = flat[old], without a branch per element
        k = count - already - 1
        threshold = np.partition(alive, k)[k]
    else:
        threshold = -np.inf
    lowest = flat <= threshold
    return lowest if int(np.count_nonzero(lowest)) == count else None


def magnitude_prune(
    arrays: Mapping[str, np.ndarray], keep: Mapping[str, np.ndarray], sparsity: float
) -> Mask:
    """Global unstructured magnitude pruning of the tensors in ``keep`` to ``sparsity``."""
    return prune_by_score({n: np.abs(arrays[n]) for n in keep}, keep, sparsity)


def random_prune(keep: Mapping[str, np.ndarray], sparsity: float, rng: np.random.Generator) -> Mask:
    """Prune uniformly random alive positions until ``sparsity`` is reached."""
    return prune_by_score({n: rng.random(np.shape(m)) for n, m in keep.items()}, keep, sparsity)


def majority_vote(
    values: Sequence[Mapping[str, np.ndarray]],
    masks: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    average: str = "all",
) -> tuple[dict[str, np.ndarray], Mask]:
    """Merge locally pruned models by majority voting (FedSparsify-Local).

    A masked position is kept iff at least half of the ``N`` clients keep it
    (``2 * votes >= N``, the same rule for odd and even ``N``; votes are not
    weighted). Kept positions get the ``weights``-weighted mean of the clients'
    values; pruned ones are zero. Entries without a mask get the plain weighted mean.

    Parameters
    ----------
    values : Sequence[Mapping[str, np.ndarray]]
        Each client's model (all entries).
    masks : Sequence[Mapping[str, np.ndarray]]
        Each client's keep mask over the prunable entries (same names for all).
    weights : Sequence[float]
        Aggregation weights (``num-examples``).
    average : str (default: "all")
        ``all``: the mean over all clients, counting a client that pruned the
        position as a zero (the reference's default). ``nnz``: the mean over the
        clients that kept it.

    Returns
    -------
    tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
        The merged model and its keep mask.

    """
    if average not in MV_AVERAGES:
        raise ValueError(f"average must be one of {MV_AVERAGES}, got {average!r}")
    n = len(values)
    if n == 0 or len(masks) != n or len(weights) != n:
        raise ValueError("majority_vote needs one mask and one weight per model")
    masked = list(masks[0])
    plain = [{k: v for k, v in item.items() if k not in masks[0]} for item in values]
    merged = weighted_mean(plain, list(weights)) if plain[0] else {}
    keep: Mask = {}
    w = np.asarray(weights, dtype=np.float64)
    for name in masked:
        stack_mask = np.stack([np.asarray(m[name], dtype=bool) for m in masks])
        stack = np.stack([np.asarray(v[name], dtype=np.float64) for v in values])
        stack = np.where(stack_mask, stack, 0.0)
        votes = stack_mask.sum(axis=0)
        keep[name] = 2 * votes >= n
        shape = (n,) + (1,) * (stack.ndim - 1)
        numerator = (stack * w.reshape(shape)).sum(axis=0)
        if average == "all":
            mean = numerator / w.sum()
        else:
            denominator = (stack_mask * w.reshape(shape)).sum(axis=0)
            mean = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
        merged[name] = np.where(keep[name], mean, 0.0).astype(values[0][name].dtype)
    return {name: merged[name] for name in values[0]}, keep


# ------------------------------------------------------------ known-mask layout
def known_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the arrays that travel as known-mask values: the float32 ones, sorted.

    Both sides derive it from the model alone, so no order or name list is exchanged.
    Other arrays (integer buffers, other float widths) go through the codec by name.
    """
    return sorted(name for name, value in arrays.items() if np.asarray(value).dtype == np.float32)


def known_count(shapes: Mapping[str, tuple[int, ...]], keep: Mapping[str, np.ndarray]) -> int:
    """Number of known-mask values: kept positions of masked tensors, every entry of the rest."""
    return sum(
        int(np.count_nonzero(keep[name])) if name in keep else int(np.prod(shape, dtype=np.int64))
        for name, shape in shapes.items()
    )


def gather_known(
    arrays: Mapping[str, np.ndarray], keep: Mapping[str, np.ndarray], names: Sequence[str]
) -> np.ndarray:
    """The values at the known positions, in the agreed order (flat float32).

    For each name of ``names`` in order: the entries at the kept positions of its mask
    (C order) if it has one in ``keep``, else all its entries.
    """
    # np.compress picks the same entries as boolean indexing, several times faster on
    # the irregular masks of pruning (no branch per element).
    parts = [
        np.compress(np.asarray(keep[n]).reshape(-1), np.asarray(arrays[n]).reshape(-1))
        if n in keep
        else np.asarray(arrays[n]).reshape(-1)
        for n in names
    ]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def scatter_known(
    values: np.ndarray, shapes: Mapping[str, tuple[int, ...]], keep: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Inverse of :func:`gather_known` over ``shapes`` (in its order): pruned positions are 0."""
    if values.shape != (known_count(shapes, keep),):
        raise ValueError(f"{values.size} known-mask values for {known_count(shapes, keep)} positions")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in shapes.items():
        if name in keep:
            flat_keep = np.asarray(keep[name]).reshape(-1)
            count = int(np.count_nonzero(flat_keep))
            flat = np.zeros(flat_keep.size, dtype=np.float32)
            # Index assignment: the same result as flat[flat_keep] = ..., ~9x faster on
            # irregular masks.
            flat[np.flatnonzero(flat_keep)] = values[offset : offset + count]
        else:
            count = int(np.prod(shape, dtype=np.int64))
            flat = values[offset : offset + count].astype(np.float32, copy=True)
        out[name] = flat.reshape(shape)
        offset += count
    return out


def flat_mask(keep: Mapping[str, np.ndarray]) -> np.ndarray:
    """A keep mask as one flat boolean vector over its tensors in sorted name order."""
    names = sorted(keep)
    if not names:
        return np.zeros(0, dtype=bool)
    return np.concatenate([np.asarray(keep[n], dtype=bool).reshape(-1) for n in names])


def unflat_mask(flat: np.ndarray, like: Mapping[str, np.ndarray]) -> Mask:
    """Inverse of :func:`flat_mask`, with the shapes of ``like``."""
    out: Mask = {}
    offset = 0
    for name in sorted(like):
        size = int(np.asarray(like[name]).size)
        out[name] = flat[offset : offset + size].reshape(np.shape(like[name])).copy()
        offset += size
    if offset != flat.size:
        raise ValueError(f"flat mask of {flat.size} entries for {offset} positions")
    return {name: out[name] for name in like}
