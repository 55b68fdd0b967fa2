"""Payload codec: round trips, encoding choice and measured sizes."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fl_strategies import codec
from fl_strategies.codec import (
    BITS_SUFFIX,
    FLOAT16_SUFFIX,
    FORM_BITMASK,
    FORM_INDICES,
    FORM_LZMA_BITMASK,
    FORM_LZMA_GAPS,
    FORM_ZLIB_BITMASK,
    FORM_ZLIB_DELTA,
    MAX_ELEMENTS,
    SPARSE_SUFFIX,
    CodecError,
    decode_arrays,
    decode_positions,
    decode_sparse,
    encode_arrays,
    encode_positions,
    encode_sparse,
    pack_bits,
    positions_mask,
    unpack_bits,
)
from fl_strategies.wire import message_bytes

RNG = np.random.default_rng(0)


def sparse_array(shape, density):
    values = RNG.standard_normal(shape).astype(np.float32)
    values[RNG.random(shape) >= density] = 0.0
    return values


@pytest.mark.parametrize("density", [0.0, 0.001, 0.02, 0.1, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("shape", [(7,), (33, 17), (4, 3, 5, 5), ()])
def test_sparse_round_trip_exact(shape, density):
    array = sparse_array(shape, density)
    np.testing.assert_array_equal(decode_sparse(encode_sparse(array)), array)


def test_sparse_picks_indices_when_very_sparse_and_bitmask_otherwise():
    very_sparse = sparse_array((10_000,), 0.005)
    medium = sparse_array((10_000,), 0.3)
    nnz_vs, nnz_m = np.count_nonzero(very_sparse), np.count_nonzero(medium)
    # indices: 8 bytes per nonzero; bitmask: 1250 bytes + 4 per nonzero (+ header)
    assert encode_sparse(very_sparse).size < 1250 + 4 * nnz_vs
    assert encode_sparse(very_sparse).size <= 8 * nnz_vs + 64
    assert encode_sparse(medium).size <= 1250 + 4 * nnz_m + 64


def test_float16_values_round_trip_within_half_precision():
    array = sparse_array((50, 20), 0.2)
    decoded = decode_sparse(encode_sparse(array, float16=True))
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, array, rtol=1e-3, atol=1e-4)
    assert np.array_equal(decoded != 0, array != 0)


def test_encode_arrays_auto_mixes_encodings_and_decodes_back():
    arrays = {
        "dense.weight": RNG.standard_normal((64, 32)).astype(np.float32),
        "pruned.weight": sparse_array((64, 32), 0.1),
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),
        "votes": RNG.random(100) > 0.5,
    }
    record = encode_arrays(arrays)
    assert set(record.keys()) == {
        "dense.weight",
        "pruned.weight" + SPARSE_SUFFIX,
        "bn.num_batches_tracked",
        "votes" + BITS_SUFFIX,
    }
    decoded = decode_arrays(record)
    for key, value in arrays.items():
        np.testing.assert_array_equal(decoded[key], value)
        assert decoded[key].dtype == value.dtype
        assert decoded[key].shape == value.shape  # 0-d stays 0-d


def test_dense_float16_option():
    arrays = {"w": RNG.standard_normal((10, 10)).astype(np.float32)}
    record = encode_arrays(arrays, encoding="dense", float16=True)
    assert list(record.keys()) == ["w" + FLOAT16_SUFFIX]
    np.testing.assert_allclose(decode_arrays(record)["w"], arrays["w"], rtol=1e-3)


def test_bits_cost_at_most_one_bit_each():
    fair = RNG.random(80_000) > 0.5  # incompressible: the plain bitmask
    assert pack_bits(fair).size == 80_000 // 8 + 8  # header: ndim|form + one dim, uint32 each
    skewed = RNG.random(80_000) > 0.7  # entropy 0.88 bit per flag: zlib wins
    assert pack_bits(skewed).size < 80_000 // 8
    for flags in (fair, skewed, np.zeros((30, 7), bool), np.ones(5, bool)):
        np.testing.assert_array_equal(unpack_bits(pack_bits(flags)), flags)


def test_malformed_payloads_raise_codec_error():
    blob = encode_sparse(sparse_array((100,), 0.5))
    with pytest.raises(CodecError):
        decode_sparse(blob[:-3])
    with pytest.raises(CodecError):
        unpack_bits(pack_bits(np.ones(20, bool))[:-1])
    bad = blob.copy()
    bad[0] = 9  # unknown format code
    with pytest.raises(CodecError):
        decode_sparse(bad)


def test_unknown_encoding_rejected():
    with pytest.raises(ValueError, match="encoding"):
        encode_arrays({"w": np.zeros(3, np.float32)}, encoding="zip")


def _message_of(arrays, encoding):
    content = RecordDict(
        {"arrays": encode_arrays(arrays, encoding=encoding), "config": ConfigRecord({"server-round": 1})}
    )
    return Message(content, dst_node_id=5, message_type="train")


def test_ninety_percent_sparse_model_message_is_at_most_15_percent_of_dense():
    shapes = {
        "fc1.weight": (256, 784),
        "fc1.bias": (256,),
        "fc2.weight": (256, 256),
        "fc2.bias": (256,),
        "out.weight": (10, 256),
        "out.bias": (10,),
    }
    dense = {k: RNG.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    pruned = {}
    for key, value in dense.items():
        threshold = np.quantile(np.abs(value), 0.9)
        pruned[key] = np.where(np.abs(value) > threshold, value, 0).astype(np.float32)
    dense_bytes = message_bytes(_message_of(dense, "dense"))
    sparse_bytes = message_bytes(_message_of(pruned, "auto"))
    assert dense_bytes > 4 * sum(v.size for v in dense.values())
    assert sparse_bytes <= 0.15 * dense_bytes, (sparse_bytes, dense_bytes)


def _mask(size, positions):
    mask = np.zeros(size, bool)
    mask[list(positions)] = True
    return mask


@pytest.mark.parametrize(
    ("mask", "form"),
    [
        (RNG.random(4096) < 0.5, FORM_BITMASK),  # dense, random: nothing to compress
        (_mask(100_000, [3, 50_000]), FORM_INDICES),  # two spread positions: 8 bytes
        (np.arange(40_000) < 20_000, FORM_ZLIB_BITMASK),  # one long run
        (_mask(1_000_000, range(0, 1_000_000, 997)), FORM_ZLIB_DELTA),  # regular gaps
        # whole rows of a (64, 800) tensor empty, the others 30 % full: a top-K mask's structure
        (((RNG.random((64, 1)) < 0.3) & (RNG.random((64, 800)) < 0.3)).reshape(-1), FORM_LZMA_BITMASK),
        (RNG.random(51_200) < 0.1, FORM_LZMA_GAPS),  # i.i.d. 10 %: one byte per gap, entropy-coded
    ],
)
def test_position_set_picks_the_smallest_form_and_round_trips(mask, form):
    blob = encode_positions(mask)
    assert blob[0] == form
    plain = min((mask.size + 7) // 8, 4 * int(mask.sum()))
    assert blob.size <= plain + 1  # the entropy-coded forms only ever win when smaller
    np.testing.assert_array_equal(decode_positions(blob, mask.size), np.flatnonzero(mask))
    np.testing.assert_array_equal(positions_mask(blob, mask.size), mask)


@pytest.mark.parametrize("gaps", [[0, 0, 254, 255, 256, 70_000, 3], [255], [0], [], [2**20]])
def test_lzma_gaps_round_trip_with_escaped_gaps(gaps):
    positions = np.cumsum(np.asarray(gaps, np.int64) + 1) - 1
    size = int(positions[-1]) + 2 if positions.size else 10
    blob = np.frombuffer(bytes([FORM_LZMA_GAPS]) + codec._lzma(codec._gaps_bytes(positions)), np.uint8)
    np.testing.assert_array_equal(decode_positions(blob, size), positions)
    if positions.size:
        with pytest.raises(CodecError, match="past|claim"):
            decode_positions(blob, int(positions[-1]))  # the last position does not exist


def test_lzma_forms_are_bounded():
    bomb = np.frombuffer(bytes([FORM_LZMA_BITMASK]) + codec._lzma(bytes(10**7)), np.uint8)
    with pytest.raises(CodecError, match="longer"):
        decode_positions(bomb, 1000)  # 10 MB inflating into a 125-byte bitmask
    claim = np.asarray([10**6], "<u4").tobytes() + bytes(16)  # a million positions for 1000 elements
    forged = np.frombuffer(bytes([FORM_LZMA_GAPS]) + codec._lzma(claim), np.uint8)
    with pytest.raises(CodecError, match="claim"):
        decode_positions(forged, 1000)
    with pytest.raises(CodecError):  # not an LZMA2 stream, or one cut short
        decode_positions(np.frombuffer(bytes([FORM_LZMA_BITMASK, 0xFF, 0x00, 0x13]), np.uint8), 1000)


def test_sparse_blob_uses_the_entropy_coded_positions_when_smaller():
    array = np.zeros(200_000, np.float32)
    array[:5000] = 1.5  # a pruned tensor: one kept block
    blob = encode_sparse(array)
    assert blob.size < 200_000 // 8 + 5000 * 4  # below the plain bitmask form
    np.testing.assert_array_equal(decode_sparse(blob), array)
    np.testing.assert_array_equal(decode_arrays(encode_arrays({"w": array}))["w"], array)


def test_position_sets_reject_claims_outside_the_expected_size():
    blob = encode_positions(_mask(1000, [5, 999]))
    with pytest.raises(CodecError):
        decode_positions(blob, 999)  # index 999 does not exist
    with pytest.raises(CodecError):
        decode_positions(np.concatenate([blob, [0]]).astype(np.uint8), 1000)  # trailing
    bomb = np.frombuffer(bytes([FORM_ZLIB_BITMASK]) + zlib.compress(bytes(10**7)), np.uint8)
    with pytest.raises(CodecError, match="longer"):
        decode_positions(bomb, 1000)  # 10 MB of zeros inflating into a 125-byte bitmask
    with pytest.raises(CodecError):
        decode_positions(np.array([7, 0, 0], np.uint8), 10)  # unknown form


def _forged_sparse(num_elements):
    # Index form, float32, one dimension, no positions: a header claiming a huge array.
    return np.asarray([FORM_INDICES, 0, 0, 1, num_elements], "<u4").view(np.uint8)


def test_forged_header_claiming_2_31_elements_is_rejected_before_allocation():
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="expected"):
            decode_sparse(_forged_sparse(2**31), shape=(4, 3))
        with pytest.raises(CodecError, match="at most"):
            decode_sparse(_forged_sparse(2**31))  # no expected shape: the global cap
        forged_bits = np.asarray([1 | FORM_INDICES << 8, 2**31], "<u4").view(np.uint8)
        with pytest.raises(CodecError, match="at most"):
            unpack_bits(forged_bits)
        record = ArrayRecord({"w@sparse": Array(_forged_sparse(2**31))})
        with pytest.raises(CodecError, match="expected"):
            decode_arrays(record, shapes={"w": (4, 3)})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing near 8 GiB (2**31 float32) was ever requested
    assert 2**31 > MAX_ELEMENTS


@pytest.mark.parametrize("density", [0.0005, 0.01, 0.1, 0.25, 0.4, 0.6, 0.95])
def test_fast_position_sets_round_trip_and_skip_only_dense_gap_forms(density):
    """``fast=True``: same decoder, same blob up to FAST_GAP_DENSITY, near it above."""
    rng = np.random.default_rng(int(density * 1e4))
    mask = rng.random(60_000) < density
    mask[:5000] |= rng.random(5000) < 0.9  # some structure, as in magnitude masks
    full, fast = encode_positions(mask), encode_positions(mask, fast=True)
    np.testing.assert_array_equal(decode_positions(fast, mask.size), np.flatnonzero(mask))
    if mask.mean() <= codec.FAST_GAP_DENSITY:
        np.testing.assert_array_equal(fast, full)
    else:
        assert fast[0] not in (FORM_ZLIB_DELTA, FORM_LZMA_GAPS)
        assert fast.size <= 1.01 * full.size


def test_position_forms_leave_out_the_index_list_only_where_it_cannot_win():
    """The index list is built only where it may beat the bitmask; the choice is unchanged."""
    for count in (0, 1, 5, 200, 3000):
        mask = np.zeros(50_000, dtype=bool)
        mask[np.random.default_rng(count).choice(mask.size, count, replace=False)] = True
        forms = codec._position_forms(mask, fast=True)
        if 4 * count < (mask.size + 7) // 8:
            assert forms[FORM_INDICES] == np.flatnonzero(mask).astype("<u4").tobytes()
        best = min(forms, key=lambda f: len(forms[f]))
        assert best != FORM_INDICES or 4 * count < (mask.size + 7) // 8
        np.testing.assert_array_equal(
            decode_positions(encode_positions(mask, fast=True), mask.size), np.flatnonzero(mask)
        )
