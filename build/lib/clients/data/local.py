"""Loading a real device's own data from a local ``.npz`` file.

Used outside simulation, when a physical client trains on data it holds
itself instead of on a partition of a benchmark dataset.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .federated import _holdout
from .loaders import normalize, resize_images
from .specs import get_spec

__all__ = ["load_local_data"]


def load_local_data(
    path: str | os.PathLike[str],
    test_fraction: float = 0.2,
    seed: int = 0,
    normalize_as: str | None = None,
    resize: int | None = None,
) -> tuple[TensorDataset, TensorDataset]:
    """Load ``(train, test)`` datasets from a local ``.npz`` file.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npz`` file (``numpy.savez``) with arrays ``x`` -- images as
        ``N x C x H x W`` or ``N x H x W`` (single channel) -- and ``y`` --
        ``N`` integer labels.  Integer images are taken as 0..255 and scaled
        to [0, 1]; floating-point images are taken to be in [0, 1] already.
    test_fraction : float
        Fraction in [0, 1) held out as the local test set (random, seeded).
    seed : int
        Seed of the train/test split.
    normalize_as : str, optional
        Name of a known dataset (e.g. ``"mnist"``) whose mean/std to apply,
        so the device's inputs match a model trained on that dataset in
        simulation.  None leaves the [0, 1] values unnormalised.
    resize : int, optional
        Square side to resize images to (None / 0: keep).

    Returns
    -------
    (TensorDataset, TensorDataset)
        float32 images ``N x C x H x W`` and int64 labels.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist or is not a file.
    ValueError
        The file is not a readable ``.npz`` with suitable ``x`` / ``y``
        arrays, or an argument is invalid.

    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Local data file {path!r} does not exist (expected an .npz file with arrays 'x' and 'y')."
        )
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}.")
    try:
        # allow_pickle=False: never execute pickled objects from a data file.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with loaded as npz:
            missing = {"x", "y"} - set(npz.files)
            if missing:
                raise ValueError(f"missing array(s) {sorted(missing)}; found {sorted(npz.files)}")
            x, y = npz["x"], npz["y"]
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise ValueError(f"Cannot read local data file {path!r}: {exc}.") from exc

    x = _as_nchw(x, path)
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"Local data file {path!r}: 'y' must be {x.shape[0]} integer labels, "
            f"got shape {y.shape} dtype {y.dtype}."
        )

    if normalize_as is None:
        channels = x.shape[1]
        mean, std = (0.0,) * channels, (1.0,) * channels
    else:
        spec = get_spec(normalize_as)
        if spec.in_channels != x.shape[1]:
            raise ValueError(
                f"Local data file {path!r} has {x.shape[1]} channel(s) but "
                f"{normalize_as!r} has {spec.in_channels}."
            )
        mean, std = spec.mean, spec.std
    if resize is not None and (isinstance(resize, bool) or int(resize) < 0):
        raise ValueError(f"resize must be a positive int or None, got {resize!r}.")
    images = resize_images(normalize(x, mean, std), int(resize) if resize else None)
    labels = torch.from_numpy(y.astype(np.int64))

    train_idx, test_idx = _holdout(np.arange(len(labels)), float(test_fraction), seed)
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return TensorDataset(images[tr], labels[tr]), TensorDataset(images[te], labels[te])


def _as_nchw(x: np.ndarray, path: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None, :, :]  # N x H x W -> single channel
    if x.ndim == 4:
        if x.shape[1] > 4 and x.shape[-1] in (1, 3):
            # Guessing would silently scramble images; ask for the fix.
            raise ValueError(
                f"Local data file {path!r}: 'x' of shape {x.shape} looks "
                "channels-last; store it as N x C x H x W "
                "(e.g. x.transpose(0, 3, 1, 2))."
            )
        return x
    raise ValueError(
        f"Local data file {path!r}: 'x' must be N x C x H x W or N x H x W, got shape {x.shape}."
    )
