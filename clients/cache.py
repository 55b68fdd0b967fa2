"""An on-disk cache of small derived arrays, so that a run's start does not redo them.

What goes here is cheap to keep and costly to recompute at start-up only because of
what computing it imports: the split arrays of the bundled datasets (scikit-learn),
client partitions (flwr-datasets / HF ``datasets``) and FLOP figures
(``torch.utils.flop_counter``). Each entry is one ``.npz`` file named by a digest of
everything its value depends on (inputs, library versions); the file repeats that
description and a SHA-256 of its arrays, so a file that is stale (a different
description under the name), truncated or corrupt is detected on reading: it is
removed with one warning and the caller recomputes and stores it again.

Location: ``$FEDLEAN_CACHE_DIR`` if set, else ``~/.cache/fedlean/cache``; ``off``
(or ``0``, ``false``, ``none``) turns the cache off. Writing is best effort: an
unwritable directory only costs the recomputation next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_DIR_ENV", "cache_dir", "digest", "load", "store"]

log = logging.getLogger(__name__)

#: Environment variable naming the cache directory (``off`` disables the cache).
CACHE_DIR_ENV = "FEDLEAN_CACHE_DIR"
_OFF = ("off", "0", "false", "none", "no")
#: Reserved member names inside an entry's ``.npz``.
_META, _SUM, _STRIDES = "__meta__", "__sha256__", "__strides__"


def cache_dir() -> Path | None:
    """The cache directory, or None where the cache is off."""
    value = os.environ.get(CACHE_DIR_ENV)
    if value is not None and value.strip().lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "fedlean" / "cache"


def digest(description: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a JSON-able description (keys sorted): an entry's name."""
    return hashlib.sha256(_describe(description)).hexdigest()


def _describe(description: Mapping[str, Any]) -> bytes:
    return json.dumps(description, sort_keys=True, default=str).encode()


def _checksum(meta: bytes, arrays: Mapping[str, np.ndarray], strides: bytes) -> str:
    h = hashlib.sha256(meta + strides)
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _strides_of(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The arrays' strides as JSON: a C-contiguous array keeps its own (see :func:`load`)."""
    return json.dumps(
        {name: list(a.strides) if a.flags.c_contiguous else None for name, a in arrays.items()},
        sort_keys=True,
    ).encode()


def _path(kind: str, description: Mapping[str, Any]) -> Path | None:
    base = cache_dir()
    return None if base is None else base / kind / f"{digest(description)}.npz"


def load(kind: str, description: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays stored for ``description`` under ``kind``, or None (absent, off, or bad).

    A file that cannot be read, or whose description or checksum does not match, is
    removed with one warning; None then tells the caller to recompute.
    """
    path = _path(kind, description)
    if path is None or not path.is_file():
        return None
    meta = _describe(description)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        stored_meta = arrays.pop(_META).tobytes()
        stored_sum = arrays.pop(_SUM).tobytes().decode()
        strides = arrays.pop(_STRIDES).tobytes()
        if stored_meta != meta:
            raise ValueError("it describes other inputs")
        if stored_sum != _checksum(meta, arrays, strides):
            raise ValueError("checksum mismatch")
        for name, stored in json.loads(strides).items():
            # A C-contiguous array addresses its elements the same whatever the strides
            # of its length-1 axes, which numpy leaves free (``x[:, None]`` then indexing
            # gives 4, ``np.load`` gives the next axis's). torch derives a result's
            # memory format from them (a 1-channel image batch can look channels-last),
            # and so the kernel and its rounding: the stored strides come back exactly.
            if stored is not None and tuple(stored) != arrays[name].strides:
                value = arrays[name]  # a view: the loaded array stays its memory
                arrays[name] = np.lib.stride_tricks.as_strided(value, value.shape, tuple(stored))
    except Exception as exc:  # a damaged file may fail in zipfile, numpy or decoding
        log.warning("cache: %s is stale or corrupt (%s); recomputing", path, str(exc).splitlines()[0] or exc)
        path.unlink(missing_ok=True)
        return None
    return arrays


def store(kind: str, description: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Store ``arrays`` for ``description`` under ``kind`` (atomically; errors only logged)."""
    path = _path(kind, description)
    if path is None:
        return
    meta = _describe(description)
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    if {_META, _SUM, _STRIDES} & set(arrays):
        raise ValueError(f"array names {_META!r}, {_SUM!r} and {_STRIDES!r} are reserved")
    strides = _strides_of(arrays)
    payload = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    payload[_META] = np.frombuffer(meta, dtype=np.uint8)
    payload[_SUM] = np.frombuffer(_checksum(meta, arrays, strides).encode(), dtype=np.uint8)
    payload[_STRIDES] = np.frombuffer(strides, dtype=np.uint8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file then a rename: a concurrent reader (another Ray worker, a
        # second run) sees the whole entry or none.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.debug("cache: cannot write %s (%s)", path, exc)
