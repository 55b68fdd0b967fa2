"""Payload codec: round trips, encoding choice and measured sizes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fl_strategies.codec import (
    BITS_SUFFIX,
    FLOAT16_SUFFIX,
    SPARSE_SUFFIX,
    CodecError,
    decode_arrays,
    decode_sparse,
    encode_arrays,
    encode_sparse,
    pack_bits,
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
    assert set(record.keys()) == {"dense.weight", "pruned.weight" + SPARSE_SUFFIX,
                                  "bn.num_batches_tracked", "votes" + BITS_SUFFIX}
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


def test_bits_cost_one_bit_each():
    flags = RNG.random(80_000) > 0.7
    blob = pack_bits(flags)
    assert blob.size == 80_000 // 8 + 8  # header: ndim + one dim, uint32 each
    np.testing.assert_array_equal(unpack_bits(blob), flags)


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
    content = RecordDict({"arrays": encode_arrays(arrays, encoding=encoding),
                          "config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=5, message_type="train")


def test_ninety_percent_sparse_model_message_is_at_most_15_percent_of_dense():
    shapes = {"fc1.weight": (256, 784), "fc1.bias": (256,), "fc2.weight": (256, 256),
              "fc2.bias": (256,), "out.weight": (10, 256), "out.bias": (10,)}
    dense = {k: RNG.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    pruned = {}
    for key, value in dense.items():
        threshold = np.quantile(np.abs(value), 0.9)
        pruned[key] = np.where(np.abs(value) > threshold, value, 0).astype(np.float32)
    dense_bytes = message_bytes(_message_of(dense, "dense"))
    sparse_bytes = message_bytes(_message_of(pruned, "auto"))
    assert dense_bytes > 4 * sum(v.size for v in dense.values())
    assert sparse_bytes <= 0.15 * dense_bytes, (sparse_bytes, dense_bytes)
