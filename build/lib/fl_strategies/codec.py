"""Payload codec: the one place where arrays are encoded for the wire and back.

Every fedlean method, in both directions, puts its arrays into an ``ArrayRecord``
through :func:`encode_arrays` and reads them back with :func:`decode_arrays`.
Three encodings exist, chosen per array and marked by a suffix of its key:

``name``           dense, the array as it is (what plain Flower sends);
``name@f16``       dense, cast to float16 on the wire, float32 again after decoding;
``name@sparse``    one uint8 blob: a small header, then either a bitmask
                   (``numpy.packbits``) or uint32 flat indices, then the nonzero
                   values; the smaller of the two (and of dense) is picked;
``name@bits``      a boolean array as a packed bit vector (1 bit per element).

One blob per array keeps Flower's per-array overhead (about 450 serialized bytes
for each ``Array``) at one unit regardless of encoding.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

SPARSE_SUFFIX = "@sparse"
FLOAT16_SUFFIX = "@f16"
BITS_SUFFIX = "@bits"

_FORMAT_BITMASK = 1
_FORMAT_INDICES = 2
# Codes for the dtypes a sparse blob may carry (value dtype on the wire / original).
_DTYPES = {0: np.dtype(np.float32), 1: np.dtype(np.float16), 2: np.dtype(np.float64)}
_DTYPE_CODES = {v: k for k, v in _DTYPES.items()}

ENCODINGS = ("dense", "auto", "sparse")


class CodecError(ValueError):
    """An encoded payload cannot be decoded (malformed or inconsistent)."""


def _header(fmt: int, orig_dtype: np.dtype, value_dtype: np.dtype, shape: tuple) -> np.ndarray:
    fields = [fmt, _DTYPE_CODES[orig_dtype], _DTYPE_CODES[value_dtype], len(shape), *shape]
    return np.asarray(fields, dtype="<u4").view(np.uint8)


def sparse_sizes(size: int, nnz: int, value_itemsize: int = 4) -> dict[str, int]:
    """Payload bytes (without header) of each way to send an array of ``size`` elements.

    Parameters
    ----------
    size : int
        Number of elements of the array.
    nnz : int
        Number of nonzero elements.
    value_itemsize : int (default: 4)
        Bytes per value on the wire (4 for float32, 2 for float16).

    Returns
    -------
    dict[str, int]
        Bytes for ``dense``, ``bitmask`` and ``indices`` encodings.
    """
    return {
        "dense": size * value_itemsize,
        "bitmask": (size + 7) // 8 + nnz * value_itemsize,
        "indices": nnz * (4 + value_itemsize),
    }


def encode_sparse(array: np.ndarray, float16: bool = False) -> np.ndarray:
    """Encode a float array as one uint8 blob holding its nonzeros.

    The bitmask or the index form is picked, whichever is smaller for this density.

    Parameters
    ----------
    array : np.ndarray
        A float16/float32/float64 array.
    float16 : bool (default: False)
        Send the values as float16.

    Returns
    -------
    np.ndarray
        A 1-D uint8 array to put on the wire.
    """
    if array.dtype not in _DTYPE_CODES:
        raise TypeError(f"sparse encoding needs a float array, got {array.dtype}")
    flat = np.ascontiguousarray(array).reshape(-1)
    nonzero = flat != 0
    values = flat[nonzero]
    value_dtype = np.dtype(np.float16) if float16 else array.dtype
    sizes = sparse_sizes(flat.size, values.size, value_dtype.itemsize)
    if sizes["indices"] < sizes["bitmask"]:
        fmt = _FORMAT_INDICES
        position_bytes = np.flatnonzero(nonzero).astype("<u4").view(np.uint8)
    else:
        fmt = _FORMAT_BITMASK
        position_bytes = np.packbits(nonzero)
    return np.concatenate(
        [
            _header(fmt, array.dtype, value_dtype, array.shape),
            position_bytes,
            values.astype(value_dtype.newbyteorder("<")).view(np.uint8),
        ]
    )


def decode_sparse(blob: np.ndarray) -> np.ndarray:
    """Decode a blob made by :func:`encode_sparse` into the dense array."""
    blob = np.ascontiguousarray(blob, dtype=np.uint8)
    try:
        fmt, orig_code, value_code, ndim = blob[:16].view("<u4")
        shape = tuple(int(d) for d in blob[16 : 16 + 4 * ndim].view("<u4"))
        orig_dtype, value_dtype = _DTYPES[int(orig_code)], _DTYPES[int(value_code)]
    except (ValueError, KeyError, IndexError) as exc:
        raise CodecError(f"malformed sparse header: {exc}") from exc
    size = int(np.prod(shape, dtype=np.int64))
    body = blob[16 + 4 * ndim :]
    if fmt == _FORMAT_BITMASK:
        mask_len = (size + 7) // 8
        if body.size < mask_len:
            raise CodecError("sparse blob shorter than its bitmask")
        nonzero = np.unpackbits(body[:mask_len], count=size).astype(bool)
        positions = np.flatnonzero(nonzero)
        value_bytes = body[mask_len:]
    elif fmt == _FORMAT_INDICES:
        nnz = body.size // (4 + value_dtype.itemsize)
        positions = body[: 4 * nnz].view("<u4").astype(np.int64)
        value_bytes = body[4 * nnz :]
        if positions.size and positions.max() >= size:
            raise CodecError("sparse index out of range")
    else:
        raise CodecError(f"unknown sparse format code {fmt}")
    if value_bytes.size != positions.size * value_dtype.itemsize:
        raise CodecError(
            f"sparse blob holds {value_bytes.size} value bytes for {positions.size} positions"
        )
    out = np.zeros(size, dtype=orig_dtype)
    out[positions] = value_bytes.view(value_dtype.newbyteorder("<")).astype(orig_dtype)
    return out.reshape(shape)


def pack_bits(flags: np.ndarray) -> np.ndarray:
    """Pack a boolean array into a uint8 blob: header (ndim, shape) then 1 bit each."""
    flags = np.asarray(flags, dtype=bool)
    header = np.asarray([flags.ndim, *flags.shape], dtype="<u4").view(np.uint8)
    return np.concatenate([header, np.packbits(flags.reshape(-1))])


def unpack_bits(blob: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bits`."""
    blob = np.ascontiguousarray(blob, dtype=np.uint8)
    if blob.size < 4:
        raise CodecError("bit vector shorter than its header")
    ndim = int(blob[:4].view("<u4")[0])
    shape = tuple(int(d) for d in blob[4 : 4 + 4 * ndim].view("<u4"))
    size = int(np.prod(shape, dtype=np.int64))
    body = blob[4 + 4 * ndim :]
    if body.size != (size + 7) // 8:
        raise CodecError(f"bit vector of {body.size} bytes cannot hold {size} bits")
    return np.unpackbits(body, count=size).astype(bool).reshape(shape)


def encode_arrays(
    arrays: Mapping[str, np.ndarray],
    encoding: str = "auto",
    float16: bool = False,
    bit_keys: tuple[str, ...] | frozenset[str] = (),
) -> ArrayRecord:
    """Encode named arrays into an ArrayRecord for the wire.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        Arrays by name (e.g. a model's state dict as numpy).
    encoding : str (default: "auto")
        ``dense``: send as is. ``sparse``: always the sparse blob for float arrays.
        ``auto``: the sparse blob where it is smaller than dense (density below
        about 97%), dense otherwise.
    float16 : bool (default: False)
        Send float values as float16 (lossy).
    bit_keys : collection of str
        Names of boolean arrays to send as packed bit vectors (1 bit each).

    Returns
    -------
    ArrayRecord
        The encoded record; :func:`decode_arrays` inverts it.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    record = ArrayRecord()
    for name, value in arrays.items():
        value = np.asarray(value)
        if name in bit_keys or value.dtype == bool:
            record[name + BITS_SUFFIX] = Array(pack_bits(value))
            continue
        is_float = value.dtype in _DTYPE_CODES
        if is_float and encoding != "dense":
            itemsize = 2 if float16 else value.dtype.itemsize
            sizes = sparse_sizes(value.size, int(np.count_nonzero(value)), itemsize)
            if encoding == "sparse" or min(sizes["bitmask"], sizes["indices"]) < sizes["dense"]:
                record[name + SPARSE_SUFFIX] = Array(encode_sparse(value, float16))
                continue
        if is_float and float16 and value.dtype != np.float16:
            record[name + FLOAT16_SUFFIX] = Array(value.astype(np.float16))
        else:
            record[name] = Array(np.require(value, requirements="C"))
    return record


def decode_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Decode an ArrayRecord made by :func:`encode_arrays` (or a plain one).

    Raises
    ------
    CodecError
        If an encoded entry is malformed.
    """
    out: dict[str, np.ndarray] = {}
    for key, array in record.items():
        value = array.numpy()
        if key.endswith(SPARSE_SUFFIX):
            out[key[: -len(SPARSE_SUFFIX)]] = decode_sparse(value)
        elif key.endswith(FLOAT16_SUFFIX):
            out[key[: -len(FLOAT16_SUFFIX)]] = value.astype(np.float32)
        elif key.endswith(BITS_SUFFIX):
            out[key[: -len(BITS_SUFFIX)]] = unpack_bits(value)
        else:
            out[key] = value
    return out
