"""Exact sizes and bytes with fewer copies: message sizes, npy bytes, npy header parsing.

Each fast path is checked against what Flower itself produces (``deflate()``,
``Array(ndarray)``), so the measured bytes stay the bytes on the wire.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fl_strategies.codec import CodecError, decode_arrays, encode_arrays, npy_array, read_npy
from fl_strategies.flwr_compat import (
    deflated_size,
    nested_objects,
    no_object_id_recompute,
    set_message_id,
    set_task_identity,
)
from fl_strategies.wire import messages_bytes

RNG = np.random.default_rng(0)
ARRAYS = [
    RNG.standard_normal((3, 4)).astype(np.float32),
    np.ones((), np.float32),
    np.zeros((0, 5)),
    np.arange(7, dtype=np.int64),
    RNG.standard_normal((4, 3)).T,  # Fortran order in, C order out
    np.array([True, False]),
    RNG.standard_normal(5).astype(">f4"),
    np.zeros((2, 3, 4), np.float16),
    np.arange(5, dtype=np.uint8),
]


def reference_bytes(messages: list[Message]) -> int:
    """messages_bytes as it was: every object deflated in full."""
    sizes: dict[str, int] = {}
    total = 0
    with no_object_id_recompute():
        for message in messages:
            for oid, obj in nested_objects(message).items():
                sizes.setdefault(oid, len(obj.deflate()))
                total += sizes[oid]
    return total


def test_npy_array_gives_flowers_array_byte_for_byte():
    for value in ARRAYS:
        for _ in range(2):  # the second time from the cached header
            fast, flower = npy_array(value), Array(np.require(value, requirements="C"))
            assert (fast.dtype, fast.shape, fast.stype, fast.data) == (
                flower.dtype,
                flower.shape,
                flower.stype,
                flower.data,
            )
            np.testing.assert_array_equal(read_npy(fast), value)


def test_deflated_size_and_message_bytes_match_full_deflation():
    set_task_identity(1)
    big = RNG.standard_normal(1_400_000).astype(np.float32)  # 5.6 MB: two chunks
    zeros = np.zeros(4096, np.float32)
    record = encode_arrays({"big": big, "z1": zeros, "z2": zeros.copy(), "w": ARRAYS[0]}, encoding="dense")
    down = Message(RecordDict({"arrays": record, "config": ConfigRecord({"a": 1})}), 1001, "train")
    set_message_id(down, "m1")
    reply = Message(RecordDict({"arrays": record, "metrics": MetricRecord({"n": 3})}), reply_to=down)
    messages = [down, reply, Message(RecordDict({"arrays": ArrayRecord()}), 1002, "train")]
    with no_object_id_recompute():
        objects = [obj for m in messages for obj in nested_objects(m).values()]
    assert any(type(obj).__name__ == "ArrayChunk" for obj in objects)
    for obj in objects:
        assert deflated_size(obj) == len(obj.deflate())
    assert messages_bytes(messages) == reference_bytes(messages)


def test_cached_npy_header_parsing_still_rejects_what_it_rejected():
    good = npy_array(ARRAYS[0])
    np.testing.assert_array_equal(decode_arrays(ArrayRecord({"w": good}))["w"], ARRAYS[0])
    truncated = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-4])
    forged = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=b"\x93NUMPY\x01\x00garbage")
    for _ in range(2):  # a rejection is not cached as an answer
        with pytest.raises(CodecError, match="claims 48 data bytes"):
            read_npy(truncated)
        with pytest.raises(CodecError, match="malformed npy header"):
            read_npy(forged)
        with pytest.raises(CodecError, match="expected"):
            read_npy(good, expected=(4, 3))
