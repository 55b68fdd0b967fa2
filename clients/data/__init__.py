"""Data layer of fedlean: dataset loading, federated partitioning, caching.

Public API
----------
DataBundle, DATASET_NAMES, load_dataset, validate_data_source
    Whole datasets as normalised ``N x C x H x W`` float32 tensors
    (:mod:`clients.data.loaders`).
PARTITION_SCHEMES, partition_indices
    IID / Dirichlet / pathological / natural client splits built on
    ``flwr_datasets.partitioner`` (:mod:`clients.data.partition`).
load_partition, load_central_testset, clear_data_cache, DEFAULT_DATA_CFG
    Per-process cached client and server views (:mod:`clients.data.federated`).
load_local_data
    A real device's own ``.npz`` data (:mod:`clients.data.local`).
DatasetSpec, SPECS, get_spec
    Cheap static facts (classes, channels, size, mean/std) per dataset, e.g.
    to size a model without loading data (:mod:`clients.data.specs`).

The names are resolved lazily (PEP 562): importing this package -- or the
light :mod:`clients.data.specs` used by config validation -- does not import
torch, torchvision or HF ``datasets``; the first access to a heavy name does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Exported name -> submodule that defines it.
_EXPORTS: dict[str, str] = {
    "DATASET_NAMES": "specs",
    "SPECS": "specs",
    "DatasetSpec": "specs",
    "get_spec": "specs",
    "DataBundle": "loaders",
    "DataDownloadError": "loaders",
    "load_dataset": "loaders",
    "validate_data_source": "loaders",
    "PARTITION_SCHEMES": "partition",
    "partition_indices": "partition",
    "DEFAULT_DATA_CFG": "federated",
    "clear_data_cache": "federated",
    "load_central_testset": "federated",
    "train_set_size": "federated",
    "partition_train_sizes": "federated",
    "load_partition": "federated",
    "load_local_data": "local",
}

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_DATA_CFG",
    "PARTITION_SCHEMES",
    "SPECS",
    "DataBundle",
    "DataDownloadError",
    "DatasetSpec",
    "clear_data_cache",
    "get_spec",
    "load_central_testset",
    "train_set_size",
    "load_dataset",
    "load_local_data",
    "load_partition",
    "partition_indices",
    "partition_train_sizes",
    "validate_data_source",
]
assert sorted(__all__) == sorted(_EXPORTS)  # keep the two lists in sync


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers and IDEs see the real bindings
    from .federated import (
        DEFAULT_DATA_CFG,
        clear_data_cache,
        load_central_testset,
        load_partition,
    )
    from .loaders import DataBundle, load_dataset, validate_data_source
    from .local import load_local_data
    from .partition import PARTITION_SCHEMES, partition_indices
    from .specs import DATASET_NAMES, SPECS, DatasetSpec, get_spec
