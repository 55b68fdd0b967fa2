"""Payload codec: the one place where arrays are encoded for the wire and back.

Every fedlean method, in both directions, puts its arrays into an ``ArrayRecord``
through :func:`encode_arrays` and reads them back with :func:`decode_arrays`.
Encodings are chosen per array and marked by a suffix of its key:

``name``           dense, the array as it is (what plain Flower sends);
``name@f16``       dense, cast to float16 on the wire, float32 again after decoding;
``name@sparse``    one uint8 blob: a small header, the positions of the nonzeros (a
                   position set, below), then the nonzero values; picked where
                   smaller than dense;
``name@bits``      a boolean array as a position set of its True entries (at most
                   about 1 bit per element, less where the entropy-coded form wins).

Arrays whose positions must be explicit (a sent 0 still counts as sent: ZeroFL's
updates) go as :func:`encode_sent` blobs: a position set, then the values, raw or as
zlib'd byte planes (lossless), one blob per array.

Position sets
    "Which entries of an array of ``size`` elements" is written one way for every
    method (:func:`encode_positions` / :func:`decode_positions`): the smallest of

    * ``bitmask``: ``numpy.packbits`` of the mask, 1 bit per element;
    * ``indices``: uint32 flat indices, 4 bytes per position;
    * ``zlib-bitmask``: the bitmask through zlib (clustered or skewed masks);
    * ``zlib-delta``: the gaps between sorted indices as uint32, bytes regrouped by
      significance, through zlib (few, spread positions);
    * ``lzma-bitmask``: the bitmask through raw LZMA2 (stdlib ``lzma``): a few per cent
      below zlib on the structured masks of top-K selections;
    * ``lzma-gaps``: the gaps as one byte each (a gap of 255 or more escaped to a
      uint32), through raw LZMA2.

    The receiver always knows ``size`` (from the array's shape or the protocol), so a
    set carries only a one-byte form code; a decoder never allocates more than
    ``size`` allows and rejects payloads that claim more.

One blob per array keeps Flower's per-array overhead (about 450 serialized bytes
for each ``Array``) at one unit regardless of encoding.
"""

from __future__ import annotations

import io
import lzma
import math
import zlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.lib import format as npy_format

SPARSE_SUFFIX = "@sparse"
FLOAT16_SUFFIX = "@f16"
BITS_SUFFIX = "@bits"

#: Position-set forms (the one-byte code of :func:`encode_positions`).
FORM_BITMASK = 1
FORM_INDICES = 2
FORM_ZLIB_BITMASK = 3
FORM_ZLIB_DELTA = 4
FORM_LZMA_BITMASK = 5
FORM_LZMA_GAPS = 6
FORMS = {
    FORM_BITMASK: "bitmask",
    FORM_INDICES: "indices",
    FORM_ZLIB_BITMASK: "zlib-bitmask",
    FORM_ZLIB_DELTA: "zlib-delta",
    FORM_LZMA_BITMASK: "lzma-bitmask",
    FORM_LZMA_GAPS: "lzma-gaps",
}
# Raw LZMA2 (no container header: 1 byte of framing instead of xz's 60). The receiver
# fixes the filter, so a payload cannot make it allocate a larger dictionary; lc = lp
# = pb = 0 because a bitmask's bytes carry no alignment or literal context worth
# modelling (measured smaller on ZeroFL masks than the defaults).
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << 20, "lc": 0, "lp": 0, "pb": 0}]
#: ``encode_positions(..., fast=True)`` tries the gap forms only up to this density.
FAST_GAP_DENSITY = 0.25
#: A gap of at least this many positions goes as this byte plus a uint32 (lzma-gaps).
_GAP_ESCAPE = 255
#: Largest element count a header may claim when the receiver gives no expected shape
#: (2**28 float32 values = 1 GiB); larger claims are rejected before any allocation.
MAX_ELEMENTS = 2**28
# Codes for the dtypes a sparse blob may carry (value dtype on the wire / original).
_DTYPES: dict[int, np.dtype] = {0: np.dtype(np.float32), 1: np.dtype(np.float16), 2: np.dtype(np.float64)}
_DTYPE_CODES: dict[np.dtype, int] = {v: k for k, v in _DTYPES.items()}

ENCODINGS = ("dense", "auto", "sparse")


class CodecError(ValueError):
    """An encoded payload cannot be decoded (malformed or inconsistent)."""


# ---------------------------------------------------------------- position sets
def _deltas_bytes(indices: np.ndarray) -> bytes:
    deltas = np.diff(indices, prepend=0).astype("<u4")
    # Most gaps are small: grouping the bytes by significance leaves long zero runs.
    return np.ascontiguousarray(deltas.view(np.uint8).reshape(-1, 4).T).tobytes()


def _gaps_bytes(indices: np.ndarray) -> bytes:
    """Gaps between sorted positions, one byte each; a gap >= 255 also goes as uint32.

    Layout: uint32 count of positions, the byte per gap (255 = escaped), then the
    escaped gaps as uint32 with their bytes grouped by significance.
    """
    gaps = np.diff(indices, prepend=-1) - 1
    escaped = gaps[gaps >= _GAP_ESCAPE].astype("<u4")
    return b"".join(
        [
            np.asarray([indices.size], "<u4").tobytes(),
            np.minimum(gaps, _GAP_ESCAPE).astype(np.uint8).tobytes(),
            np.ascontiguousarray(escaped.view(np.uint8).reshape(-1, 4).T).tobytes(),
        ]
    )


def _lzma(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def _position_forms(mask: np.ndarray, fast: bool = False, use_lzma: bool = True) -> dict[int, bytes]:
    """Payload of each form for a flat boolean mask (the entropy-coded ones only if they can win).

    ``fast``: the gap forms (zlib-delta, lzma-gaps) only for masks with at most
    :data:`FAST_GAP_DENSITY` of their entries True; above it the bitmask forms were
    smaller on every FedSparsify mask measured, and coding one gap per position of a
    dense mask is what costs the time. ``use_lzma``: also try the LZMA forms.
    """
    count = int(np.count_nonzero(mask))
    bitmask = np.packbits(mask).tobytes()
    plain = min(len(bitmask), 4 * count)
    # zlib's own overhead is 11 bytes at least: not worth trying on tiny payloads.
    gaps = plain > 16 and count > 0 and (not fast or count <= FAST_GAP_DENSITY * mask.size)
    forms = {FORM_BITMASK: bitmask}
    if gaps or 4 * count < len(bitmask):
        # The positions themselves only where a form that needs them can win (the
        # index list loses every tie with the bitmask).
        indices = np.flatnonzero(mask)
        forms[FORM_INDICES] = indices.astype("<u4").tobytes()
    if plain > 16:
        forms[FORM_ZLIB_BITMASK] = zlib.compress(bitmask, 9)
        if use_lzma:
            forms[FORM_LZMA_BITMASK] = _lzma(bitmask)
        if gaps:
            forms[FORM_ZLIB_DELTA] = zlib.compress(_deltas_bytes(indices), 9)
            if use_lzma:
                forms[FORM_LZMA_GAPS] = _lzma(_gaps_bytes(indices))
    return forms


def _smallest_form(mask: np.ndarray, fast: bool = False, use_lzma: bool = True) -> tuple[int, bytes]:
    forms = _position_forms(mask, fast, use_lzma)
    # Ties keep the plain forms (cheaper to decode), then zlib before lzma.
    order = (
        FORM_BITMASK,
        FORM_INDICES,
        FORM_ZLIB_BITMASK,
        FORM_ZLIB_DELTA,
        FORM_LZMA_BITMASK,
        FORM_LZMA_GAPS,
    )
    best = min((f for f in order if f in forms), key=lambda f: (len(forms[f]), order.index(f)))
    return best, forms[best]


def _bounded_decode(
    decoder: Any, error: type[Exception], kind: str, payload: np.ndarray, limit: int, what: str
) -> tuple[bytes, np.ndarray]:
    """At most ``limit`` bytes out of a zlib/lzma ``decoder``; returns (data, unused input)."""
    try:
        data = decoder.decompress(payload.tobytes(), limit)
    except error as exc:
        raise CodecError(f"{what}: corrupt {kind} stream: {exc}") from exc
    if not decoder.eof:
        raise CodecError(f"{what}: {kind} stream longer than the {limit} bytes it may hold")
    return data, np.frombuffer(decoder.unused_data, dtype=np.uint8)


def _inflate(payload: np.ndarray, limit: int, what: str) -> tuple[bytes, np.ndarray]:
    """Bounded zlib inflate: at most ``limit`` bytes out; returns (data, unused input)."""
    return _bounded_decode(zlib.decompressobj(), zlib.error, "zlib", payload, limit, what)


def _unlzma(payload: np.ndarray, limit: int, what: str) -> tuple[bytes, np.ndarray]:
    """Bounded raw-LZMA2 decode: at most ``limit`` bytes out; returns (data, unused input)."""
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    return _bounded_decode(decoder, lzma.LZMAError, "lzma", payload, limit, what)


def _positions_from_gaps(data: bytes, size: int) -> np.ndarray:
    """Inverse of :func:`_gaps_bytes`, checked against ``size`` before allocating."""
    if len(data) < 4:
        raise CodecError("lzma gaps shorter than their count")
    count = int(np.frombuffer(data[:4], "<u4")[0])
    if count > size or len(data) < 4 + count:
        raise CodecError(f"lzma gaps claim {count} positions for {size} elements")
    small = np.frombuffer(data[4 : 4 + count], np.uint8).astype(np.int64)
    escapes = np.flatnonzero(small == _GAP_ESCAPE)
    tail = np.frombuffer(data[4 + count :], np.uint8)
    if tail.size != 4 * escapes.size:
        raise CodecError(f"lzma gaps: {tail.size} escape bytes for {escapes.size} escaped gaps")
    small[escapes] = np.ascontiguousarray(tail.reshape(4, -1).T).view("<u4").reshape(-1)
    positions = np.cumsum(small + 1) - 1
    if positions.size and positions[-1] >= size:
        raise CodecError("lzma gaps run past the array's size")
    return positions


def _decode_form(
    form: int, body: np.ndarray, size: int, nnz_from_rest: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (sorted int64) of a form's payload at the start of ``body``, and the rest.

    ``nnz_from_rest``: for the index form inside a sparse blob, the bytes per position
    *and* value (the split is derived from the body length); None: the whole body.
    """
    if form == FORM_BITMASK:
        mask_len = (size + 7) // 8
        if body.size < mask_len:
            raise CodecError(f"bitmask of {body.size} bytes cannot hold {size} positions")
        positions = np.flatnonzero(np.unpackbits(body[:mask_len], count=size))
        return positions, body[mask_len:]
    if form == FORM_INDICES:
        nnz = body.size // nnz_from_rest if nnz_from_rest else body.size // 4
        if nnz_from_rest is None and body.size % 4:
            raise CodecError(f"index list of {body.size} bytes is not uint32")
        if nnz > size:
            raise CodecError(f"{nnz} positions claimed for {size} elements")
        positions = body[: 4 * nnz].view("<u4").astype(np.int64)
        if positions.size and (positions.max() >= size or np.any(np.diff(positions) <= 0)):
            raise CodecError("indices out of range or not strictly increasing")
        return positions, body[4 * nnz :]
    if form == FORM_ZLIB_BITMASK:
        mask_len = (size + 7) // 8
        data, rest = _inflate(body, mask_len, "zlib bitmask")
        if len(data) != mask_len:
            raise CodecError(f"zlib bitmask inflates to {len(data)} bytes, expected {mask_len}")
        packed = np.frombuffer(data, dtype=np.uint8)
        return np.flatnonzero(np.unpackbits(packed, count=size)), rest
    if form == FORM_ZLIB_DELTA:
        data, rest = _inflate(body, 4 * size, "zlib deltas")
        if len(data) % 4:
            raise CodecError("zlib deltas do not inflate to whole uint32")
        planes = np.frombuffer(data, dtype=np.uint8).reshape(4, -1)
        deltas = np.ascontiguousarray(planes.T).view("<u4").reshape(-1).astype(np.int64)
        positions = np.cumsum(deltas)
        if deltas.size and (np.any(deltas[1:] == 0) or positions[-1] >= size):
            raise CodecError("zlib deltas out of range or repeating a position")
        return positions, rest
    if form == FORM_LZMA_BITMASK:
        mask_len = (size + 7) // 8
        data, rest = _unlzma(body, mask_len, "lzma bitmask")
        if len(data) != mask_len:
            raise CodecError(f"lzma bitmask decodes to {len(data)} bytes, expected {mask_len}")
        return np.flatnonzero(np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=size)), rest
    if form == FORM_LZMA_GAPS:
        # 4 bytes of count, 1 per position, 4 more per escaped gap (at most one per 255 elements).
        data, rest = _unlzma(body, 4 + size + 4 * (size // _GAP_ESCAPE + 1), "lzma gaps")
        return _positions_from_gaps(data, size), rest
    raise CodecError(f"unknown position form {form}")


def _chosen_form(mask: np.ndarray, fast: bool, huffman_first: bool, use_lzma: bool) -> tuple[int, bytes]:
    if huffman_first:
        return _huffman_first_form(mask)
    return _smallest_form(mask, fast, use_lzma)


def encode_positions(
    mask: np.ndarray, fast: bool = False, huffman_first: bool = False, use_lzma: bool = True
) -> np.ndarray:
    """A position set: the True entries of a boolean array, in its smallest form.

    Parameters
    ----------
    mask : np.ndarray
        Boolean array; its flat (C order) True positions are encoded. The receiver must
        know ``mask.size``.
    fast : bool (default: False)
        Skip the gap forms on masks denser than :data:`FAST_GAP_DENSITY`, where they
        cost the most time and, on the masks measured, never won. The blob is decoded
        the same way; it is at most the skipped forms' advantage larger.
    huffman_first : bool (default: False)
        Choose the form with :func:`_huffman_first_form` instead of trying every form
        (overrides ``fast``): zlib's Huffman-only strategy first, the other forms only
        where that lands far from a random mask's entropy. A few per cent larger on
        dense masks with structure (GWPF's votes), up to tens of per cent on sparse
        ones with structure (APF's mask flips); a fraction of the time; decoded the
        same way.
    use_lzma : bool (default: True)
        Also try the LZMA forms. LZMA costs about 2.5x zlib level 9 on a bitmask and
        came out about 3% smaller on FedSparsify-Local's masks: worth it where a mask is
        encoded once (the server's mask change), not per client reply.

    Returns
    -------
    np.ndarray
        A 1-D uint8 blob: the form code (:data:`FORMS`) then the payload.
    """
    form, payload = _chosen_form(np.asarray(mask, dtype=bool).reshape(-1), fast, huffman_first, use_lzma)
    return np.frombuffer(bytes([form]) + payload, dtype=np.uint8)


def decode_positions(blob: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`encode_positions`: sorted flat positions (int64) within ``size``.

    Raises
    ------
    CodecError
        If the blob is malformed or claims positions outside ``size``.
    """
    blob = np.ascontiguousarray(blob, dtype=np.uint8).reshape(-1)
    if blob.size < 1:
        raise CodecError("empty position set")
    positions, rest = _decode_form(int(blob[0]), blob[1:], int(size))
    if rest.size:
        raise CodecError(f"position set has {rest.size} trailing bytes")
    return positions


# ------------------------------------------------- values at explicit positions
# The value forms (:data:`VALUE_FORMS`, raw or zlib byte planes) are those of the
# known-mask values below.
def _deflate(data: bytes | list[bytes], strategy: int) -> bytes:
    """One zlib stream of ``data``; a list is deflated part by part, each part ending a block.

    ``Z_HUFFMAN_ONLY`` and ``Z_RLE`` skip zlib's match search (the level then only
    selects "not stored"): on top-K masks and float byte planes, whose bytes are close
    to memoryless, they come within a fraction of a per cent of level 9's size (or
    below it) at a tenth of the time or less. Ending a block at each part (``Z_BLOCK``)
    gives every byte plane its own Huffman tables. Any zlib inflater reads the stream.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 9, strategy)
    parts = [data] if isinstance(data, bytes) else data
    out = []
    for index, part in enumerate(parts):
        out.append(compressor.compress(part))
        if index < len(parts) - 1:
            out.append(compressor.flush(zlib.Z_BLOCK))
    out.append(compressor.flush())
    return b"".join(out)


def _memoryless_bytes(count: int, size: int) -> float:
    """``size * H(count / size) / 8``: the size of a random mask of this density, entropy-coded."""
    if count in (0, size):
        return 0.0
    p = count / size
    return size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8


def _huffman_first_form(mask: np.ndarray) -> tuple[int, bytes]:
    """Form and payload of a flat boolean mask, Huffman-only zlib first (see below).

    :func:`_smallest_form` tries every form at zlib level 9 and LZMA preset 9 (about
    7 ms for a 65,536-element top-K mask, 20 ms for a GWPF vote vector of 20,000 bits,
    mostly zlib and LZMA over the bitmask). Here the bitmask goes through zlib's
    Huffman-only strategy first (about 0.1 ms), which on a top-K mask lands within a
    few per cent of a random mask's entropy ``size * H(p) / 8``, about as close as the
    best LZMA form (3,973 against 3,974 bytes at 10 % of 65,536; 2 % larger at 5 %).
    Only where it does not (more than 5 % and 16 bytes above that bound: skewed
    densities, for which the index gaps code better; or more than 10 % below:
    structure, such as runs) are the run-length bitmask and the index gaps tried, and
    where even those stay more than 5 % and 64 bytes above the bound, the full search
    as well; the smallest result is kept.

    On the 200 vote vectors of a 20-round digits GWPF run (8,800-30,000 bits, mostly
    about 75 % True) the result was 1.7 % larger in total than the full search, at most
    6 % larger on any one above 1 KB (13 %, 20 bytes, on the smallest), in about a
    ninetieth of its time (0.24 against 21 ms a vector). Not for sparse masks with
    structure that only LZMA finds: on APF's mask flips (3 % of 85,000 positions,
    lzma-gaps 35 % below the entropy bound) it came out 15 % larger in total. The
    forms are those :func:`decode_positions` reads.
    """
    count = int(np.count_nonzero(mask))
    bitmask = np.packbits(mask).tobytes()
    if min(len(bitmask), 4 * count) <= 16:
        # zlib's own overhead is 11 bytes at least: only the plain forms.
        if len(bitmask) <= 4 * count:
            return FORM_BITMASK, bitmask
        return FORM_INDICES, np.flatnonzero(mask).astype("<u4").tobytes()
    bound = _memoryless_bytes(count, mask.size)
    huffman = _deflate(bitmask, zlib.Z_HUFFMAN_ONLY)
    # Candidates in tie order: the plain forms (cheaper to decode), then the bitmask.
    forms = [(FORM_BITMASK, bitmask), (FORM_INDICES, b""), (FORM_ZLIB_BITMASK, huffman)]
    if not 0.9 * bound <= len(huffman) <= 1.05 * bound + 16:
        forms.append((FORM_ZLIB_BITMASK, _deflate(bitmask, zlib.Z_RLE)))
        forms.append((FORM_ZLIB_DELTA, _deflate(_deltas_bytes(np.flatnonzero(mask)), zlib.Z_RLE)))
    sizes = [4 * count if form == FORM_INDICES else len(payload) for form, payload in forms]
    best = min(range(len(forms)), key=lambda i: (sizes[i], i))
    form, payload = forms[best]
    if form == FORM_INDICES:
        payload = np.flatnonzero(mask).astype("<u4").tobytes()
    if sizes[best] > 1.05 * bound + 64:
        full = _smallest_form(mask)
        if len(full[1]) < len(payload):
            return full
    return form, payload


def _sent_positions(mask: np.ndarray) -> np.ndarray:
    """Position set of a flat boolean mask for :func:`encode_sent` (:func:`_huffman_first_form`)."""
    return encode_positions(mask, huffman_first=True)


def encode_sent(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Values at explicit positions (zeros included) as one blob, lossless.

    For uploads whose positions the receiver does not know and where a value of 0 is
    still "sent" (ZeroFL's updates), so the zero-suppressing :func:`encode_sparse`
    cannot be used. Layout: the byte length of the position set (uint32), the position
    set (the :func:`encode_positions` wire, chosen by :func:`_sent_positions`), then the
    values at the True positions in flat C order: a form byte and either the raw
    little-endian values or their byte planes through zlib (run-length strategy, one
    block per plane), whichever is smaller.

    Parameters
    ----------
    values : np.ndarray
        Float array of the mask's shape (only the masked entries are sent).
    mask : np.ndarray
        Boolean array: the positions sent.

    Returns
    -------
    np.ndarray
        A 1-D uint8 blob; :func:`decode_sent` inverts it bit for bit.
    """
    values, mask = np.asarray(values), np.asarray(mask, dtype=bool)
    if values.dtype not in _DTYPE_CODES:
        raise TypeError(f"sent values must be float, got {values.dtype}")
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {mask.shape} differs from values shape {values.shape}")
    flat_mask = mask.reshape(-1)
    positions = _sent_positions(flat_mask)
    itemsize = values.dtype.itemsize
    words = np.ascontiguousarray(values.reshape(-1)[flat_mask]).astype(values.dtype.newbyteorder("<"))
    words = words.view(f"<u{itemsize}")
    raw = words.view(np.uint8).tobytes()
    packed = raw
    if len(raw) > 16:
        # Byte planes (byte j of every value together), each plane its own zlib block:
        # the sign/exponent planes compress, the low mantissa planes barely do.
        planes = np.ascontiguousarray(words.view(np.uint8).reshape(-1, itemsize).T)
        packed = _deflate([plane.tobytes() for plane in planes], zlib.Z_RLE)
    form, body = (VALUES_ZLIB_PLANES, packed) if len(packed) < len(raw) else (VALUES_RAW, raw)
    head = np.asarray([positions.size], "<u4").view(np.uint8)
    return np.concatenate([head, positions, np.frombuffer(bytes([form]) + body, np.uint8)])


def decode_sent(
    blob: np.ndarray, size: int, dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_sent`: sorted flat positions (int64) and their values.

    ``size`` (the tensor's element count) and ``dtype`` come from the receiver, never
    from the blob; at most ``size`` positions and as many values are decoded, and a
    zlib stream is never inflated past the bytes those values need.

    Raises
    ------
    CodecError
        If the blob is malformed or inconsistent (see :func:`decode_positions`).
    """
    dtype = np.dtype(dtype)
    if dtype not in _DTYPE_CODES:
        raise CodecError(f"sent values must be float, got {dtype}")
    blob = np.ascontiguousarray(blob, dtype=np.uint8).reshape(-1)
    if blob.size < 5:
        raise CodecError("sent-values blob shorter than its header")
    length = int(blob[:4].view("<u4")[0])
    if blob.size < 4 + length + 1:
        raise CodecError(f"sent-values blob of {blob.size} bytes cannot hold a {length}-byte position set")
    positions = decode_positions(blob[4 : 4 + length], size)
    form, body = int(blob[4 + length]), blob[5 + length :]
    expected = positions.size * dtype.itemsize
    if form == VALUES_RAW:
        if body.size != expected:
            raise CodecError(f"{positions.size} positions but {body.size} value bytes")
        data = body.tobytes()
    elif form == VALUES_ZLIB_PLANES:
        data, rest = _inflate(body, expected, "sent values")
        if len(data) != expected or rest.size:
            raise CodecError(f"{positions.size} positions but values inflating to {len(data)} bytes")
        planes = np.frombuffer(data, np.uint8).reshape(dtype.itemsize, positions.size)
        data = np.ascontiguousarray(planes.T).tobytes()
    else:
        raise CodecError(f"unknown sent-values form {form}")
    values = np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype)
    return positions, values


def positions_mask(blob: np.ndarray, size: int) -> np.ndarray:
    """:func:`decode_positions` as a flat boolean mask of ``size`` entries."""
    mask = np.zeros(int(size), dtype=bool)
    mask[decode_positions(blob, size)] = True
    return mask


def _checked_size(
    shape: tuple[int, ...],
    expected: tuple[int, ...] | None,
    what: str,
    max_elements: int = MAX_ELEMENTS,
) -> int:
    """Element count of a claimed shape, checked before anything is allocated for it."""
    if expected is not None and tuple(shape) != tuple(int(d) for d in expected):
        raise CodecError(f"{what} claims shape {tuple(shape)}, expected {tuple(expected)}")
    if any(int(d) < 0 for d in shape):
        raise CodecError(f"{what} claims a negative dimension in {tuple(shape)}")
    # Python ints: a product of forged dimensions must not wrap around.
    size = math.prod(int(d) for d in shape)
    if expected is None and size > max_elements:
        raise CodecError(f"{what} claims {size} elements (at most {max_elements} accepted)")
    return size


def read_npy(array: Array, expected: tuple[int, ...] | None = None, what: str = "array") -> np.ndarray:
    """A Flower ``Array``'s npy bytes as numpy, the header checked before any allocation.

    ``numpy.load`` sizes its output from the header alone; here a header must match
    ``expected`` (if given) and the bytes that follow it exactly, so a forged header
    costs nothing beyond the message that carries it.

    Raises
    ------
    CodecError
        If the bytes are not a plain npy array, or the header disagrees with
        ``expected`` or with the data length.
    """
    if array.stype != "numpy.ndarray":
        raise CodecError(f"{what}: serialization type {array.stype!r}, expected 'numpy.ndarray'")
    data = array.data
    shape, fortran, dtype, offset = _npy_header(data[: _npy_header_end(data)], what)
    size = _checked_size(tuple(shape), expected, what)
    if len(data) - offset != size * dtype.itemsize:
        raise CodecError(
            f"{what}: header claims {size * dtype.itemsize} data bytes, "
            f"the message holds {len(data) - offset}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=size, offset=offset).copy()
    return flat.reshape(shape, order="F" if fortran else "C")


def _npy_header_end(data: bytes) -> int:
    """Where the data of npy bytes starts, from the magic and header length alone."""
    if data[:6] == b"\x93NUMPY" and len(data) >= 12:
        if data[6] == 1:
            return 10 + int.from_bytes(data[8:10], "little")
        if data[6] == 2:
            return 12 + int.from_bytes(data[8:12], "little")
    return len(data)  # not a header read_magic accepts: parse all, for its error


def _npy_header(prefix: bytes, what: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of an npy header (:func:`read_npy`)."""
    try:
        return _parsed_npy_header(prefix)
    except CodecError as exc:
        raise CodecError(f"{what}: {exc}") from None
    except (ValueError, TypeError, SyntaxError) as exc:
        raise CodecError(f"{what}: malformed npy header: {str(exc).splitlines()[0]}") from None


# Every message of a run carries the same few headers; numpy parses one with
# ast.literal_eval, which cost more than the rest of decoding a small array.
@lru_cache(maxsize=1024)
def _parsed_npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    stream = io.BytesIO(prefix)
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
    else:
        raise CodecError(f"npy version {version} not accepted")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise CodecError(f"dtype {dtype} not accepted")
    return tuple(shape), bool(fortran), dtype, stream.tell()


def _read_shape(blob: np.ndarray, offset: int, ndim: int, what: str) -> tuple[int, ...]:
    if ndim > 32 or blob.size < offset + 4 * ndim:
        raise CodecError(f"{what}: malformed header (ndim {ndim})")
    return tuple(int(d) for d in blob[offset : offset + 4 * ndim].view("<u4"))


# ---------------------------------------------------------------- sparse arrays
def _header(fmt: int, orig_dtype: np.dtype, value_dtype: np.dtype, shape: tuple) -> np.ndarray:
    fields = [fmt, _DTYPE_CODES[orig_dtype], _DTYPE_CODES[value_dtype], len(shape), *shape]
    return np.asarray(fields, dtype="<u4").view(np.uint8)


def sparse_sizes(size: int, nnz: int, value_itemsize: int = 4) -> dict[str, int]:
    """Payload bytes (without header) of the plain ways to send an array of ``size`` elements.

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
        Bytes for ``dense``, ``bitmask`` and ``indices`` encodings (the entropy-coded
        position forms can only be smaller than the better of the last two).
    """
    return {
        "dense": size * value_itemsize,
        "bitmask": (size + 7) // 8 + nnz * value_itemsize,
        "indices": nnz * (4 + value_itemsize),
    }


def encode_sparse(array: np.ndarray, float16: bool = False) -> np.ndarray:
    """Encode a float array as one uint8 blob holding its nonzeros.

    The positions are a position set in its smallest form (:func:`encode_positions`).

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
    form, payload = _smallest_form(nonzero)
    return np.concatenate(
        [
            _header(form, array.dtype, value_dtype, array.shape),
            np.frombuffer(payload, dtype=np.uint8),
            values.astype(value_dtype.newbyteorder("<")).view(np.uint8),
        ]
    )


def decode_sparse(
    blob: np.ndarray, shape: tuple[int, ...] | None = None, max_elements: int = MAX_ELEMENTS
) -> np.ndarray:
    """Decode a blob made by :func:`encode_sparse` into the dense array.

    ``shape``: the shape the receiver expects; a blob claiming another is rejected
    before anything is allocated (without it, at most ``max_elements`` elements).
    """
    blob = np.ascontiguousarray(blob, dtype=np.uint8).reshape(-1)
    try:
        fmt, orig_code, value_code, ndim = (int(v) for v in blob[:16].view("<u4"))
        orig_dtype, value_dtype = _DTYPES[orig_code], _DTYPES[value_code]
    except (ValueError, KeyError, IndexError) as exc:
        raise CodecError(f"malformed sparse header: {exc}") from exc
    claimed = _read_shape(blob, 16, ndim, "sparse blob")
    size = _checked_size(claimed, shape, "sparse blob", max_elements)
    body = blob[16 + 4 * ndim :]
    per_position = 4 + value_dtype.itemsize if fmt == FORM_INDICES else None
    positions, value_bytes = _decode_form(fmt, body, size, per_position)
    if value_bytes.size != positions.size * value_dtype.itemsize:
        raise CodecError(f"sparse blob holds {value_bytes.size} value bytes for {positions.size} positions")
    out = np.zeros(size, dtype=orig_dtype)
    out[positions] = value_bytes.view(value_dtype.newbyteorder("<")).astype(orig_dtype)
    return out.reshape(claimed)


# ---------------------------------------------------------------- boolean arrays
def pack_bits(flags: np.ndarray, huffman_first: bool = False) -> np.ndarray:
    """A boolean array as a uint8 blob: header (ndim and form, shape), then a position set.

    The first uint32 holds ``ndim`` in its low byte and the position form in the next,
    so a boolean array costs its shape and the smallest form's payload (at most about
    1 bit per element). ``huffman_first``: the form chosen as in
    :func:`encode_positions` with ``huffman_first=True``.
    """
    flags = np.asarray(flags, dtype=bool)
    form, payload = _chosen_form(flags.reshape(-1), False, huffman_first, True)
    header = np.asarray([flags.ndim | form << 8, *flags.shape], dtype="<u4").view(np.uint8)
    return np.concatenate([header, np.frombuffer(payload, dtype=np.uint8)])


def unpack_bits(
    blob: np.ndarray, shape: tuple[int, ...] | None = None, max_elements: int = MAX_ELEMENTS
) -> np.ndarray:
    """Inverse of :func:`pack_bits` (``shape`` as in :func:`decode_sparse`)."""
    blob = np.ascontiguousarray(blob, dtype=np.uint8).reshape(-1)
    if blob.size < 4:
        raise CodecError("bit vector shorter than its header")
    first = int(blob[:4].view("<u4")[0])
    ndim, form = first & 0xFF, first >> 8
    claimed = _read_shape(blob, 4, ndim, "bit vector")
    size = _checked_size(claimed, shape, "bit vector", max_elements)
    positions, rest = _decode_form(form, blob[4 + 4 * ndim :], size)
    if rest.size:
        raise CodecError(f"bit vector has {rest.size} trailing bytes")
    out = np.zeros(size, dtype=bool)
    out[positions] = True
    return out.reshape(claimed)


def encode_arrays(
    arrays: Mapping[str, np.ndarray],
    encoding: str = "auto",
    float16: bool = False,
    bit_keys: tuple[str, ...] | frozenset[str] = (),
    huffman_first: bool = False,
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
    huffman_first : bool (default: False)
        Pack the bit vectors with :func:`pack_bits`'s ``huffman_first`` chooser.

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
            record[name + BITS_SUFFIX] = Array(pack_bits(value, huffman_first))
            continue
        is_float = value.dtype in _DTYPE_CODES
        if is_float and encoding != "dense":
            itemsize = 2 if float16 else value.dtype.itemsize
            sizes = sparse_sizes(value.size, int(np.count_nonzero(value)), itemsize)
            if encoding == "sparse" or min(sizes["bitmask"], sizes["indices"]) < sizes["dense"]:
                record[name + SPARSE_SUFFIX] = Array(encode_sparse(value, float16))
                continue
        if is_float and float16 and value.dtype != np.float16:
            record[name + FLOAT16_SUFFIX] = npy_array(value.astype(np.float16))
        else:
            record[name] = npy_array(value)
    return record


#: npy headers by (dtype, shape), each cut from :func:`numpy.save`'s own output.
_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}
_NPY_HEADERS_MAX = 1024


def npy_array(value: np.ndarray) -> Array:
    """``flwr.app.Array(value)`` (C order), byte for byte, without a ``numpy.save`` per call.

    Flower's ``Array`` holds ``numpy.save``'s bytes: a header that depends on the
    dtype and shape alone, then the C-order data. The header of each (dtype, shape)
    is cut from the first ``numpy.save`` of it and reused, so the bytes (and the
    measured message sizes) are those of ``Array(value)``.
    """
    value = np.require(value, requirements="C")
    dtype = value.dtype
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.metadata:
        return Array(value)
    key = (dtype.str, tuple(int(d) for d in value.shape))
    header = _NPY_HEADERS.get(key)
    if header is None:
        array = Array(value)
        if len(_NPY_HEADERS) < _NPY_HEADERS_MAX:
            _NPY_HEADERS[key] = array.data[: len(array.data) - value.nbytes]
        return array
    return Array(dtype=str(dtype), shape=key[1], stype="numpy.ndarray", data=header + value.tobytes())


def decode_arrays(
    record: ArrayRecord,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> dict[str, np.ndarray]:
    """Decode an ArrayRecord made by :func:`encode_arrays` (or a plain one).

    Parameters
    ----------
    record : ArrayRecord
        The encoded record.
    shapes : Mapping[str, tuple[int, ...]] | None (default: None)
        Shapes the receiver expects, by decoded name; an encoded entry claiming
        another shape is rejected before anything is allocated for it.
    max_elements : int (default: :data:`MAX_ELEMENTS`)
        Most elements a sparse or bit-vector entry not named in ``shapes`` may claim
        (plain npy entries are bounded by their own bytes, see :func:`read_npy`).

    Raises
    ------
    CodecError
        If an encoded entry is malformed or claims an unexpected size.
    """
    shapes = shapes or {}
    out: dict[str, np.ndarray] = {}
    for key, array in record.items():
        name = key
        for suffix in (SPARSE_SUFFIX, FLOAT16_SUFFIX, BITS_SUFFIX):
            if key.endswith(suffix):
                name = key[: -len(suffix)]
        if name in out:
            raise CodecError(f"array '{name}' is sent twice (as '{key}' too)")
        if key.endswith((SPARSE_SUFFIX, BITS_SUFFIX)):
            value = read_npy(array, None, f"'{key}'")
            if value.dtype != np.uint8 or value.ndim != 1:
                raise CodecError(f"'{key}' is {value.dtype}{value.shape}, expected a 1-D uint8 blob")
            decode = decode_sparse if key.endswith(SPARSE_SUFFIX) else unpack_bits
            out[name] = decode(value, shapes.get(name), max_elements)
        elif key.endswith(FLOAT16_SUFFIX):
            value = read_npy(array, shapes.get(name), f"'{key}'")
            if value.dtype != np.float16:
                raise CodecError(f"'{key}' is {value.dtype}, expected float16")
            out[name] = value.astype(np.float32)
        else:
            out[name] = read_npy(array, shapes.get(name), f"'{key}'")
    return out


def claimed_shape(array: Array, key: str) -> tuple[int, ...]:
    """The shape an encoded entry claims, read from its header alone (nothing decoded).

    Lets a receiver whose expected shapes depend on the reply (e.g. FedGKT's test
    split) bound them before :func:`decode_arrays` allocates anything.
    """
    if array.stype != "numpy.ndarray":
        raise CodecError(f"'{key}': serialization type {array.stype!r}, expected 'numpy.ndarray'")
    if not key.endswith((SPARSE_SUFFIX, BITS_SUFFIX)):
        stream = io.BytesIO(array.data)
        try:
            version = npy_format.read_magic(stream)
            reader = (
                npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            )
            return tuple(int(d) for d in reader(stream)[0])
        except (ValueError, TypeError, SyntaxError) as exc:
            raise CodecError(f"'{key}': malformed npy header: {str(exc).splitlines()[0]}") from None
    blob = read_npy(array, None, f"'{key}'").reshape(-1)
    if key.endswith(SPARSE_SUFFIX):
        if blob.size < 16:
            raise CodecError(f"'{key}': sparse blob shorter than its header")
        return _read_shape(blob, 16, int(blob[12:16].view("<u4")[0]), f"'{key}'")
    if blob.size < 4:
        raise CodecError(f"'{key}': bit vector shorter than its header")
    return _read_shape(blob, 4, int(blob[:4].view("<u4")[0]) & 0xFF, f"'{key}'")


# ----------------------------------------------------------- known-mask values
#: Forms of a known-mask value blob (its first byte).
VALUES_RAW = 1
VALUES_ZLIB_PLANES = 2
VALUES_XOR_ZLIB_PLANES = 3
#: Byte planes, some stored as they are (a flags byte says which are deflated).
VALUES_MIXED_PLANES = 4
VALUES_XOR_MIXED_PLANES = 5
VALUE_FORMS = {
    VALUES_RAW: "raw",
    VALUES_ZLIB_PLANES: "zlib-planes",
    VALUES_XOR_ZLIB_PLANES: "xor-zlib-planes",
    VALUES_MIXED_PLANES: "mixed-planes",
    VALUES_XOR_MIXED_PLANES: "xor-mixed-planes",
}
_MIXED_FORM = {VALUES_ZLIB_PLANES: VALUES_MIXED_PLANES, VALUES_XOR_ZLIB_PLANES: VALUES_XOR_MIXED_PLANES}
#: A byte plane whose sampled order-0 entropy is at least this (bits per byte) is stored
#: raw: deflate gains only a few per cent on such noise (low mantissa bytes), and coding
#: it is most of the codec's time. Measured on FedSparsify-Local's value blobs (6 rounds):
#: 7.8 / 7.7 / 7.6 bits give +0.0% / +1.4% / +2.0% bytes and 0.91x / 0.65x / 0.57x
#: encode CPU (decode 0.95x / 0.73x / 0.64x) against deflating every plane.
RAW_PLANE_BITS = 7.7


def _byte_planes(words: np.ndarray, itemsize: int) -> bytes:
    # Byte j of every value together: the sign/exponent bytes of similar values repeat.
    return np.ascontiguousarray(words.view(np.uint8).reshape(-1, itemsize).T).tobytes()


def _deflate_rle(data: bytes) -> bytes:
    """A zlib stream of ``data`` made with zlib's run-length strategy (``Z_RLE``).

    Byte planes of float values are runs (the sign/exponent planes, the zero bytes of an
    XOR) and noise (the low mantissa bytes): Huffman codes plus distance-1 matches get
    them as small as level 6's full match search did (smaller on XOR planes, measured on
    FedSparsify replies), at several times the speed. Any zlib inflater decodes it.
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
    return compressor.compress(data) + compressor.flush()


#: A value form is deflated only if its estimate is within this fraction of the other's.
_ESTIMATE_MARGIN = 0.1
#: Values sampled per byte plane for the estimate.
_ESTIMATE_SAMPLES = 4096


def _plane_entropies(words: np.ndarray, itemsize: int) -> list[float]:
    """Order-0 entropy (bits per byte) of each byte plane of ``words``, from a sample.

    A cheap stand-in for the deflated size: about :data:`_ESTIMATE_SAMPLES` evenly
    spaced values, each plane's byte histogram.
    """
    sample = np.ascontiguousarray(words[:: max(1, words.size // _ESTIMATE_SAMPLES)])
    sample = sample.view(np.uint8).reshape(-1, itemsize)
    out = []
    for plane in sample.T:
        counts = np.bincount(plane, minlength=256)
        freq = counts[counts > 0] / plane.size
        out.append(-float((freq * np.log2(freq)).sum()))
    return out


def _planes_entropy(words: np.ndarray, itemsize: int) -> float:
    """Order-0 entropy (bits per value) of the byte planes of ``words``, from a sample."""
    return sum(_plane_entropies(words, itemsize))


def _planes_payload(words: np.ndarray, itemsize: int, entropies: list[float]) -> tuple[bool, bytes]:
    """The byte planes deflated, noise planes (:data:`RAW_PLANE_BITS`) stored raw.

    Returns (mixed, payload): ``mixed`` False is the plain zlib stream of all planes;
    True is a flags byte (bit ``j``: plane ``j`` deflated), the raw planes in order,
    then one zlib stream of the deflated planes in order.
    """
    planes = _byte_planes(words, itemsize)
    deflated = [e < RAW_PLANE_BITS for e in entropies]
    if all(deflated):
        return False, _deflate_rle(planes)
    count = words.size
    view = memoryview(planes)
    rows = [view[j * count : (j + 1) * count] for j in range(itemsize)]
    parts: list[bytes | memoryview] = [bytes([sum(1 << j for j, d in enumerate(deflated) if d)])]
    parts += [row for row, d in zip(rows, deflated, strict=True) if not d]
    if any(deflated):
        compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
        parts += [compressor.compress(row) for row, d in zip(rows, deflated, strict=True) if d]
        parts.append(compressor.flush())
    return True, b"".join(parts)


def encode_known_values(
    values: np.ndarray, reference: np.ndarray | None = None, compress: bool = True
) -> np.ndarray:
    """Values at positions the receiver already knows, in their smallest lossless form.

    No position set travels: the receiver holds the mask (or layout) that says where the
    values go, and :func:`decode_known_values` checks the count against it.

    Parameters
    ----------
    values : np.ndarray
        1-D float array (float16/32/64), the values in the order both sides agree on.
    reference : np.ndarray | None (default: None)
        Values the receiver holds bit for bit at the same positions (e.g. the global
        values a client received before training). When given, the XOR of the two bit
        patterns is also tried: close values share their sign, exponent and leading
        mantissa bits, so the XOR is mostly zero bytes.
    compress : bool (default: True)
        Try the zlib forms (byte planes: byte ``j`` of every value together).

    Returns
    -------
    np.ndarray
        A 1-D uint8 blob: the form code (:data:`VALUE_FORMS`) then the payload; exact
        (bit for bit) after decoding.
    """
    values = np.ascontiguousarray(values).reshape(-1)
    if values.dtype not in _DTYPE_CODES:
        raise TypeError(f"known-mask values must be float, got {values.dtype}")
    itemsize = values.dtype.itemsize
    words = values.astype(values.dtype.newbyteorder("<")).view(f"<u{itemsize}")
    forms = {VALUES_RAW: words.view(np.uint8).tobytes()}
    if compress and values.size * itemsize > 16:
        candidates = {VALUES_ZLIB_PLANES: words}
        if reference is not None:
            ref = np.ascontiguousarray(reference, dtype=values.dtype).reshape(-1)
            if ref.shape != values.shape:
                raise ValueError(f"reference has {ref.size} values for {values.size}")
            ref_words = ref.astype(values.dtype.newbyteorder("<")).view(f"<u{itemsize}")
            candidates[VALUES_XOR_ZLIB_PLANES] = words ^ ref_words
        entropies = {form: _plane_entropies(w, itemsize) for form, w in candidates.items()}
        if reference is not None:
            # Deflating is the cost: skip the form whose estimate is clearly larger.
            plain, xor = (sum(e) for e in entropies.values())
            if xor * (1 + _ESTIMATE_MARGIN) < plain:
                del candidates[VALUES_ZLIB_PLANES]
            elif plain * (1 + _ESTIMATE_MARGIN) < xor:
                del candidates[VALUES_XOR_ZLIB_PLANES]
        for form, form_words in candidates.items():
            mixed, payload = _planes_payload(form_words, itemsize, entropies[form])
            forms[_MIXED_FORM[form] if mixed else form] = payload
    best = min(forms, key=lambda f: (len(forms[f]), f))
    return np.frombuffer(bytes([best]) + forms[best], dtype=np.uint8)


def decode_known_values(
    blob: np.ndarray, count: int, dtype: np.dtype | type = np.float32, reference: np.ndarray | None = None
) -> np.ndarray:
    """Inverse of :func:`encode_known_values`: exactly ``count`` values of ``dtype``.

    ``count`` comes from what the receiver knows (the nonzeros of the mask it holds),
    never from the blob; nothing larger than ``count`` values is allocated or inflated.

    Raises
    ------
    CodecError
        If the blob is malformed, holds another number of values, or is XOR-coded and
        no ``reference`` of ``count`` values is given.
    """
    dtype = np.dtype(dtype)
    if dtype not in _DTYPE_CODES:
        raise CodecError(f"known-mask values must be float, got {dtype}")
    blob = np.ascontiguousarray(blob, dtype=np.uint8).reshape(-1)
    if blob.size < 1:
        raise CodecError("empty known-mask value blob")
    form, body, itemsize, count = int(blob[0]), blob[1:], dtype.itemsize, int(count)
    expected = count * itemsize
    if form == VALUES_RAW:
        if body.size != expected:
            raise CodecError(f"known-mask blob holds {body.size} bytes, {count} values need {expected}")
        data = body.copy()
    elif form in (VALUES_ZLIB_PLANES, VALUES_XOR_ZLIB_PLANES):
        planes, rest = _inflate(body, expected, "known-mask values")
        if len(planes) != expected or rest.size:
            raise CodecError(
                f"known-mask blob inflates to {len(planes)} bytes, {count} values need {expected}"
            )
        data = np.frombuffer(planes, np.uint8).reshape(itemsize, count).T.copy()
    elif form in (VALUES_MIXED_PLANES, VALUES_XOR_MIXED_PLANES):
        data = _mixed_planes(body, count, itemsize).T.copy()
    else:
        raise CodecError(f"unknown known-mask value form {form}")
    # One writable copy (made above), viewed as words for the XOR.
    words = data.reshape(-1).view(f"<u{itemsize}")
    if form in (VALUES_XOR_ZLIB_PLANES, VALUES_XOR_MIXED_PLANES):
        if reference is None or np.size(reference) != count:
            raise CodecError("XOR-coded known-mask values need the reference the sender used")
        ref = np.ascontiguousarray(reference, dtype=dtype).reshape(-1)
        words ^= ref.astype(dtype.newbyteorder("<")).view(f"<u{itemsize}")
    return words.view(dtype.newbyteorder("<")).astype(dtype, copy=False)


def _mixed_planes(body: np.ndarray, count: int, itemsize: int) -> np.ndarray:
    """The ``(itemsize, count)`` byte planes of a mixed-planes payload (bounded inflate)."""
    if body.size < 1:
        raise CodecError("mixed-planes blob without its flags byte")
    flags = int(body[0])
    if flags >> itemsize:
        raise CodecError(f"mixed-planes flags {flags:#x} name planes beyond {itemsize}")
    deflated = [bool(flags >> j & 1) for j in range(itemsize)]
    raw_size = (itemsize - sum(deflated)) * count
    raw, stream = body[1 : 1 + raw_size], body[1 + raw_size :]
    if raw.size != raw_size:
        raise CodecError(f"mixed-planes blob holds {raw.size} raw bytes, {raw_size} expected")
    expected = sum(deflated) * count
    if expected:
        data, rest = _inflate(stream, expected, "known-mask planes")
        if len(data) != expected or rest.size:
            raise CodecError(f"known-mask planes inflate to {len(data)} bytes, {expected} expected")
        packed = np.frombuffer(data, np.uint8)
    elif stream.size:
        raise CodecError(f"mixed-planes blob has {stream.size} trailing bytes")
    else:
        packed = np.zeros(0, np.uint8)
    planes = np.empty((itemsize, count), np.uint8)
    planes[[not d for d in deflated]] = raw.reshape(-1, count)
    planes[deflated] = packed.reshape(-1, count)
    return planes
