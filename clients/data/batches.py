"""Batches of in-memory tensors taken a batch at a time.

PyTorch's ``DataLoader`` over a ``TensorDataset`` indexes one example at a time
and stacks the rows again (``default_collate``): on small models that costs more
than the forward pass. :func:`batch_loader` gives the same batches, in the same
order and with the same contents, from one fancy-index per tensor per batch:
the sampler (and its generator) is the ``DataLoader``'s own, only the fetching
differs. Any other dataset falls back to the plain ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


class TensorBatches(Dataset):
    """A ``TensorDataset`` whose ``__getitems__`` indexes a whole batch at once."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t.index_select(0, rows) for t in self.tensors)


def _whole_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    # ``__getitems__`` already returns the batch: nothing to collate.
    return batch


def batch_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, **kwargs: Any) -> DataLoader:
    """``DataLoader(dataset, batch_size, shuffle, **kwargs)``, batch-native for tensors.

    For a ``TensorDataset`` the batches are identical to the plain loader's for the
    same ``generator``; other datasets (per-example transforms, files) get the plain
    ``DataLoader``.
    """
    if isinstance(dataset, TensorDataset) and "collate_fn" not in kwargs:
        return DataLoader(
            TensorBatches(dataset.tensors),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=_whole_batch,
            **kwargs,
        )
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)
