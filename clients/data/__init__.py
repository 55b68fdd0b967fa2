"""Data layer of fedlean: dataset loading, federated partitioning, caching.

Public API
----------
DataBundle, DATASET_NAMES, load_dataset, validate_data_source
    Whole datasets as normalised ``N x C x H x W`` float32 tensors
    (:mod:`clients.data.loaders`).
PARTITION_SCHEMES, partition_indices
    IID / Dirichlet / pathological / natural client splits built on
    ``flwr_datasets.partitioner`` (:mod:`clients.data.partition`).
load_partition, load_central_testset, clear_data_cache
    Per-process cached client and server views (:mod:`clients.data.federated`).
load_local_data
    A real device's own ``.npz`` data (:mod:`clients.data.local`).
DatasetSpec, SPECS, get_spec
    Cheap static facts (classes, channels, size, mean/std) per dataset, e.g.
    to size a model without loading data (:mod:`clients.data.specs`).
"""

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

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_DATA_CFG",
    "PARTITION_SCHEMES",
    "SPECS",
    "DataBundle",
    "DatasetSpec",
    "clear_data_cache",
    "get_spec",
    "load_central_testset",
    "load_dataset",
    "load_local_data",
    "load_partition",
    "partition_indices",
    "validate_data_source",
]
