"""Per-client and server-side views of a dataset, cached per process.

Flower calls the client app once per round per sampled client, and a
simulation worker process serves many clients.  Loading, normalising and
partitioning the dataset on every call would dominate the run time, so each
stage is memoised in this process with :func:`functools.lru_cache`:

1. ``_bundle``      -- the whole dataset (:func:`load_dataset`), keyed by
   (name, root, download, resize);
2. ``_partitions``  -- the partition index arrays (:func:`partition_indices`),
   keyed additionally by scheme, its parameters, seed and num_partitions;
3. ``_client_split`` -- one client's (train, local-test) ``TensorDataset``
   pair, keyed additionally by partition id and test_fraction.

Repeated calls therefore return the *same* objects.  Memory cost: the bundle
plus, at most, one more copy of the training set spread over the cached
client datasets of this process.  Call :func:`clear_data_cache` to drop it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .. import cache as disk_cache
from .loaders import DataBundle, _resolve_root, load_dataset
from .partition import PARTITION_SCHEMES, partition_indices, sampled_indices
from .specs import BUNDLED_DATASETS, get_spec

__all__ = [
    "DEFAULT_DATA_CFG",
    "clear_data_cache",
    "load_central_testset",
    "load_partition",
]

#: Defaults for every optional ``data_cfg`` key (``name`` is required).
DEFAULT_DATA_CFG: dict[str, Any] = {
    "root": None,
    "download": False,
    "resize": None,
    "partition": "iid",
    "alpha": 0.5,
    "classes_per_partition": 2,
    "seed": 0,
    "test_fraction": 0.2,
    "min_partition_size": 1,
    "examples_per_partition": 16,
}


# lru_cache alone does not stop two threads from computing the same missing
# entry concurrently (i.e. loading the dataset twice); Flower may run
# several clients of one process in threads, so the public entry points
# serialise on this lock.  Re-entrant because the stages call each other.
_LOCK = threading.RLock()


@dataclass(frozen=True)
class _DataKey:
    """Hashable identity of a loaded dataset."""

    name: str
    root: str | None
    download: bool
    resize: int | None


@dataclass(frozen=True)
class _PartitionKey:
    """Hashable identity of a partitioning of a dataset."""

    data: _DataKey
    scheme: str
    alpha: float
    classes_per_partition: int
    seed: int
    min_partition_size: int
    examples_per_partition: int = 16


def load_partition(
    data_cfg: Mapping[str, Any],
    partition_id: int,
    num_partitions: int,
) -> tuple[TensorDataset, TensorDataset]:
    """Return one client's training data and its local hold-out set.

    Parameters
    ----------
    data_cfg : Mapping
        Data section of the run config (a dict or an OmegaConf ``DictConfig``).
        Keys: ``name`` (required), ``root``, ``download``, ``resize``,
        ``partition`` (one of :data:`PARTITION_SCHEMES`), ``alpha``,
        ``classes_per_partition``, ``seed``, ``test_fraction`` (client-local
        hold-out fraction, default 0.2), ``min_partition_size``; defaults in
        :data:`DEFAULT_DATA_CFG`.  Other keys are ignored.  ``""`` for
        ``root`` and 0 for ``resize`` mean "unset" (TOML has no null).
    partition_id : int
        This client's partition, ``0 <= partition_id < num_partitions``.
    num_partitions : int
        Total number of clients the training set is split into.

    Returns
    -------
    (TensorDataset, TensorDataset)
        ``(train, test)``, each yielding ``(image, label)`` pairs.  The split
        of the partition is random but seeded by ``(seed, partition_id)``.
        The same objects are returned on every later call in this process.

    Raises
    ------
    ValueError
        Invalid config values or ``partition_id`` out of range, or the errors
        of :func:`load_dataset` / :func:`partition_indices`.
    FileNotFoundError
        Data missing and ``download`` off.

    """
    key = _partition_key(data_cfg)
    test_fraction = _fraction(_get(data_cfg, "test_fraction"))
    partition_id, num_partitions = int(partition_id), int(num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}.")
    with _LOCK:
        return _client_split(key, test_fraction, partition_id, num_partitions)


def load_central_testset(data_cfg: Mapping[str, Any]) -> TensorDataset:
    """Return the dataset's global test split for server-side evaluation.

    Only ``name``, ``root``, ``download`` and ``resize`` of ``data_cfg``
    matter.  Cached per process like :func:`load_partition` (and sharing its
    loaded dataset), so repeated calls return the same object.
    """
    key = _data_key(data_cfg)
    with _LOCK:
        return _central(key)


def train_set_size(data_cfg: Mapping[str, Any]) -> int:
    """Number of training examples of the whole dataset (cached like the rest).

    The server uses it as the plausibility bound for clients' ``num-examples``.
    """
    key = _data_key(data_cfg)
    with _LOCK:
        return int(_bundle(key).y_train.shape[0])


def partition_train_sizes(data_cfg: Mapping[str, Any], num_partitions: int) -> list[int]:
    """Training examples of each partition after its local hold-out (what honest clients report).

    The server uses them as the exact bound for each simulated node's ``num-examples``;
    computing them partitions the labels only (no client split is built).
    """
    key = _partition_key(data_cfg)
    test_fraction = _fraction(_get(data_cfg, "test_fraction"))
    with _LOCK:
        parts = _partitions(key, int(num_partitions))
    return [len(p) - _holdout_count(len(p), test_fraction) for p in parts]


def clear_data_cache() -> None:
    """Drop every cached dataset, partitioning and client split of this process."""
    with _LOCK:
        for fn in (_client_split, _partitions, _central, _bundle):
            fn.cache_clear()


# --------------------------------------------------------------------------
# Cached stages
# --------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _bundle(key: _DataKey) -> DataBundle:
    return load_dataset(key.name, root=key.root, download=key.download, resize=key.resize)


@lru_cache(maxsize=4)
def _central(key: _DataKey) -> TensorDataset:
    bundle = _bundle(key)
    return TensorDataset(bundle.x_test, bundle.y_test)


@lru_cache(maxsize=8)
def _partitions(key: _PartitionKey, num_partitions: int) -> tuple[np.ndarray, ...]:
    bundle = _bundle(key.data)
    labels = bundle.y_train.numpy()
    if labels.ndim > 1:  # token windows: label-based schemes see each window's first target
        labels = labels[:, 0]
    if key.scheme == "sampled":  # per-client draws, cheap and free of flwr-datasets: not cached
        return _compute_partitions(key, num_partitions, labels, bundle.writer_ids)
    # On disk across processes and runs: the partitioners import flwr-datasets and HF
    # datasets (seconds) and scale with num_partitions. The entry is keyed by what the
    # split depends on -- the labels and writer ids themselves, not the dataset's
    # name, so changed data never meets an old split -- and the libraries' versions.
    description = _partition_description(key, num_partitions, labels, bundle.writer_ids)
    hit = disk_cache.load("partitions", description)
    if hit is not None and set(hit) == {"indices", "offsets"} and len(hit["offsets"]) == num_partitions + 1:
        offsets = hit["offsets"]
        return tuple(hit["indices"][offsets[i] : offsets[i + 1]] for i in range(num_partitions))
    parts = _compute_partitions(key, num_partitions, labels, bundle.writer_ids)
    offsets = np.cumsum([0, *(len(p) for p in parts)], dtype=np.int64)
    indices = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    disk_cache.store("partitions", description, {"indices": indices, "offsets": offsets})
    return parts


#: Bump when :func:`partition_indices` changes its output for the same inputs.
_PARTITION_FORMAT = 1


def _partition_description(
    key: _PartitionKey, num_partitions: int, labels: np.ndarray, writer_ids: np.ndarray | None
) -> dict[str, Any]:
    """What a partitioning depends on, for :mod:`clients.cache`."""
    from importlib.metadata import version

    writers = None
    if writer_ids is not None:
        writers = hashlib.sha256("\0".join(str(w) for w in writer_ids).encode()).hexdigest()
    return {
        "format": _PARTITION_FORMAT,
        "scheme": key.scheme,
        "alpha": key.alpha,
        "classes_per_partition": key.classes_per_partition,
        "seed": key.seed,
        "min_partition_size": key.min_partition_size,
        "num_partitions": int(num_partitions),
        "labels": hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest(),
        "num_labels": int(labels.shape[0]),
        "writer_ids": writers,
        "flwr_datasets": version("flwr-datasets"),
        "numpy": np.__version__,
    }


def _compute_partitions(
    key: _PartitionKey, num_partitions: int, labels: np.ndarray, writer_ids: np.ndarray | None
) -> tuple[np.ndarray, ...]:
    return tuple(
        partition_indices(
            labels,
            key.scheme,
            num_partitions,
            seed=key.seed,
            alpha=key.alpha,
            classes_per_partition=key.classes_per_partition,
            writer_ids=writer_ids,
            min_partition_size=key.min_partition_size,
            examples_per_partition=key.examples_per_partition,
        )
    )


# Unbounded: a simulation worker may serve every client, and evicting one
# would silently re-copy its data each round.
@cache
def _client_split(
    key: _PartitionKey,
    test_fraction: float,
    partition_id: int,
    num_partitions: int,
) -> tuple[TensorDataset, TensorDataset]:
    bundle = _bundle(key.data)
    if key.scheme == "sampled":  # this client's draw only: no work per other client
        indices = sampled_indices(
            int(bundle.y_train.shape[0]), partition_id, key.examples_per_partition, key.seed
        )
    else:
        indices = _partitions(key, num_partitions)[partition_id]
    train_idx, test_idx = _holdout(indices, test_fraction, [key.seed, partition_id])
    return (
        _subset(bundle.x_train, bundle.y_train, train_idx),
        _subset(bundle.x_train, bundle.y_train, test_idx),
    )


def _subset(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> TensorDataset:
    t = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
    return TensorDataset(x[t], y[t])


def _holdout(indices: np.ndarray, fraction: float, seed: Any) -> tuple[np.ndarray, np.ndarray]:
    """Randomly split ``indices`` into (train, test) with ``fraction`` for test.

    Whenever the fraction is positive and there are at least two samples,
    both sides get at least one sample, so local evaluation never runs on
    an empty set and training never gets nothing.
    """
    n_test = _holdout_count(len(indices), fraction)
    perm = np.random.default_rng(seed).permutation(indices)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# --------------------------------------------------------------------------
# Config parsing
# --------------------------------------------------------------------------
def _holdout_count(n: int, fraction: float) -> int:
    """Hold-out size of a partition of ``n`` samples (see :func:`_holdout`)."""
    n_test = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        return min(max(n_test, 1), n - 1)
    return 0 if n < 2 else n_test


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    value = cfg.get(key, None)
    return DEFAULT_DATA_CFG[key] if value is None else value


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):  # e.g. from CLI overrides: "false" must be False
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _fraction(value: Any) -> float:
    f = float(value)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {value!r}.")
    return f


def _data_key(cfg: Mapping[str, Any]) -> _DataKey:
    if "name" not in cfg or not cfg["name"]:
        raise ValueError("data config needs a 'name' (one of the known datasets).")
    name = str(cfg["name"])
    get_spec(name)  # ValueError for an unknown name, before anything loads
    resize = _get(cfg, "resize")
    resize = None if resize in (None, 0, "") else int(resize)
    # Resolve the root now so that None / "" / the explicit default path all
    # share one cache entry; bundled datasets (digits, mnist5k) ignore root.
    root = None if name in BUNDLED_DATASETS else _resolve_root(name, _get(cfg, "root"))
    return _DataKey(name, root, _as_bool(_get(cfg, "download")), resize)


def _partition_key(cfg: Mapping[str, Any]) -> _PartitionKey:
    scheme = str(_get(cfg, "partition"))
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(
            f"Unknown partition scheme {scheme!r}. Known schemes: {', '.join(PARTITION_SCHEMES)}."
        )
    return _PartitionKey(
        data=_data_key(cfg),
        scheme=scheme,
        alpha=float(_get(cfg, "alpha")),
        classes_per_partition=int(_get(cfg, "classes_per_partition")),
        seed=int(_get(cfg, "seed")),
        min_partition_size=int(_get(cfg, "min_partition_size")),
        examples_per_partition=int(_get(cfg, "examples_per_partition")),
    )
