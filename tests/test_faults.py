"""Fault injection: no client reply can end a run, and a forged one costs about its own size.

A wrapping ClientApp runs the real one (``simulations/app/client_app.py``) and corrupts the
reply of chosen nodes, every round. Each run (inline, digits, two rounds) gives every
faulty node its own fault, next to two honest nodes, and checks per fault:

* the run completes and its final model is finite;
* a reply that cannot be used is dropped with exactly one log line per round, naming the
  round and the node, one line long, with the expected reason; a usable one is not;
* for forged sizes, the server's peak memory (tracemalloc) while validating that reply
  stays below the reply's serialized size plus one copy of the model (plus 1 MiB).

``docs/reliability.md`` lists the faults and what the server does with each.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from hydra import compose, initialize_config_dir
from numpy.lib import format as npy_format

from fl_strategies.codec import (
    BITS_SUFFIX,
    FLOAT16_SUFFIX,
    SPARSE_SUFFIX,
    decode_sent,
    encode_positions,
    encode_sent,
)
from fl_strategies.fedsparsify import LOCAL_MASK_KEY
from fl_strategies.gwpf import VOTES_KEY
from fl_strategies.partial_sync import VALUES_KEY
from fl_strategies.wire import message_bytes
from fl_strategies.zerofl import SENT_SUFFIX
from simulations import CONF_DIR

SMALL = ["num_rounds=2", "local_epochs=1", "batch_size=64", "seed=3", "central_eval=false"]
ROUNDS = (1, 2)
BOMB = zlib.compress(b"\xff" * (64 << 20), 9)  # 64 MiB of ones in about 64 KiB
DROP = re.compile(r"round (\d+) (train|evaluate): dropped reply from node (\d+): (.*)")


# ----------------------------------------------------------------- forged entries
def forged_npy(count: int, dtype: str = "<f4") -> Array:
    """An npy entry whose header claims ``count`` elements but that carries 16 bytes."""
    stream = io.BytesIO()
    npy_format.write_array_header_1_0(stream, {"descr": dtype, "fortran_order": False, "shape": (count,)})
    return Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=stream.getvalue() + bytes(16))


def blob(words: list[int], body: bytes = b"") -> Array:
    return Array(np.frombuffer(np.asarray(words, "<u4").tobytes() + body, dtype=np.uint8).copy())


def forged_sparse_indices(claim: int) -> Array:
    """``@sparse`` in index form claiming shape ``(claim,)``: 1000 positions and values."""
    body = np.arange(1000, dtype="<u4").tobytes() + np.ones(1000, "<f4").tobytes()
    return blob([2, 0, 0, 1, claim], body)


def sparse_zlib_bomb(shape: tuple[int, ...]) -> Array:
    """``@sparse`` with the right shape whose zlib bitmask inflates to 64 MiB."""
    return blob([3, 0, 0, len(shape), *shape], BOMB)


def bits_claiming(shape: tuple[int, ...]) -> Array:
    """``@bits`` in bitmask form claiming ``shape`` while carrying 8 bytes."""
    return blob([len(shape) | 1 << 8, *shape], bytes(8))


def bits_zlib_bomb(shape: tuple[int, ...]) -> Array:
    return blob([len(shape) | 3 << 8, *shape], BOMB)


def _base(key: str) -> str:
    for suffix in (SPARSE_SUFFIX, FLOAT16_SUFFIX, BITS_SUFFIX):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _float_key(record: ArrayRecord) -> str:
    """The first entry of a reply that decodes to a float tensor (dense or ``@sparse``)."""
    for key in record:
        if key.endswith(SPARSE_SUFFIX) or ("@" not in key and record[key].dtype.startswith("float")):
            return key
    raise AssertionError(f"no float entry in {list(record)}")


def _replace(record: ArrayRecord, old: str, new: str, value: Array) -> None:
    del record[old]
    record[new] = value


# ------------------------------------------------------------------------ faults
Corrupt = Callable[[RecordDict], RecordDict | Error]


@dataclass(frozen=True)
class Fault:
    """One corruption of a reply and what the server must do with it."""

    corrupt: Corrupt
    needle: str  # in the drop reason; "" = the reply is used
    phases: tuple[str, ...] = ("train",)
    forged_size: bool = False  # peak memory checked

    @property
    def dropped(self) -> bool:
        return bool(self.needle)


def _metrics(content: RecordDict) -> MetricRecord:
    return content.metric_records["metrics"]


def _set_metric(key: str, value):
    def corrupt(content: RecordDict) -> RecordDict:
        _metrics(content)[key] = value
        return content

    return corrupt


def _del_metric(key: str):
    def corrupt(content: RecordDict) -> RecordDict:
        del _metrics(content)[key]
        return content

    return corrupt


def _metrics_as_config(content: RecordDict) -> RecordDict:
    # A MetricRecord cannot hold a str on the wire: a peer sending one sends another record type.
    values = {k: str(v) for k, v in _metrics(content).items()}
    return RecordDict({"arrays": content.array_records["arrays"], "metrics": ConfigRecord(values)})


def _record_first(content: RecordDict) -> RecordDict:
    # Flower's aggregate_metricrecords reads the first MetricRecord of a reply.
    first = MetricRecord({"num-examples": 10**9, "loss": 1e30})
    return RecordDict({"aaa": first, **{k: v for k, v in content.items()}})


def _on_arrays(edit: Callable[[ArrayRecord], None]) -> Corrupt:
    def corrupt(content: RecordDict) -> RecordDict:
        edit(content.array_records["arrays"])
        return content

    return corrupt


def _error_reply(content: RecordDict) -> Error:
    return Error(code=0, reason="client failed\nTraceback (most recent call last):\n  File x, line 1")


def _no_arrays(content: RecordDict) -> RecordDict:
    return RecordDict({"metrics": _metrics(content)})


def _renamed_arrays(content: RecordDict) -> RecordDict:
    return RecordDict({"weights": content.array_records["arrays"], "metrics": _metrics(content)})


def _npy_2_40(record: ArrayRecord) -> None:
    key = _float_key(record)
    _replace(record, key, _base(key), forged_npy(2**40))


def _sparse_2_31(record: ArrayRecord) -> None:
    key = _float_key(record)
    _replace(record, key, _base(key) + SPARSE_SUFFIX, forged_sparse_indices(2**31))


def _sparse_bomb(record: ArrayRecord) -> None:
    key = _float_key(record)
    shape = _decode_one(record, key).shape
    _replace(record, key, _base(key) + SPARSE_SUFFIX, sparse_zlib_bomb(shape))


def _edit_dense(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[ArrayRecord], None]:
    def edit(record: ArrayRecord) -> None:
        key = next(k for k in record if "@" not in k and record[k].dtype.startswith("float"))
        record[key] = Array(np.ascontiguousarray(fn(record[key].numpy())))

    return edit


def _extra_key(record: ArrayRecord) -> None:
    record["bonus"] = Array(np.zeros(3, np.float32))


def _missing_key(record: ArrayRecord) -> None:
    del record[next(k for k in record if "@" not in k)]


def _twice(record: ArrayRecord) -> None:
    key = next(k for k in record if "@" not in k and record[k].dtype.startswith("float"))
    record[key + FLOAT16_SUFFIX] = Array(record[key].numpy().astype(np.float16))


def _truncated(record: ArrayRecord) -> None:
    key = next(k for k in record if "@" not in k)
    array = record[key]
    record[key] = Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=array.data[:-4])


def _pickled(record: ArrayRecord) -> None:
    key = next(k for k in record if "@" not in k)
    stream = io.BytesIO()
    np.save(stream, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    record[key] = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=stream.getvalue())


def _torch_stype(record: ArrayRecord) -> None:
    key = next(k for k in record if "@" not in k)
    array = record[key]
    record[key] = Array(dtype=array.dtype, shape=array.shape, stype="torch.Tensor", data=array.data)


def _crash(content: RecordDict) -> RecordDict:
    raise RuntimeError("device out of battery\nsecond line of the reason")


GENERIC: dict[str, Fault] = {
    "num-examples NaN": Fault(
        _set_metric("num-examples", math.nan), "not a positive integer", ("train", "evaluate")
    ),
    "num-examples inf": Fault(
        _set_metric("num-examples", math.inf), "not a positive integer", ("train", "evaluate")
    ),
    "num-examples negative": Fault(_set_metric("num-examples", -5), "not a positive integer"),
    "num-examples fractional": Fault(_set_metric("num-examples", 12.5), "not a positive integer"),
    "num-examples 10^12": Fault(_set_metric("num-examples", 10**12), "implausible"),
    "num-examples one above the partition": Fault(lambda c: c, "of partition"),  # set per node below
    "num-examples a list": Fault(_set_metric("num-examples", [1.0, 2.0]), "not a number"),
    "num-examples missing": Fault(_del_metric("num-examples"), "not a number"),
    "metrics as strings (no MetricRecord)": Fault(_metrics_as_config, "no MetricRecord 'metrics'"),
    "metric a list": Fault(_set_metric("loss", [1.0, 2.0]), "other length ['loss']", ("train", "evaluate")),
    "metric NaN": Fault(
        _set_metric("loss", math.nan), "metric 'loss'=nan is not finite", ("train", "evaluate")
    ),
    "metric missing key": Fault(_del_metric("loss"), "missing ['loss']"),
    "metric extra key": Fault(_set_metric("bonus", 1.0), "unexpected ['bonus']"),
    "metric empty list": Fault(_set_metric("loss", []), "empty list"),
    "extra MetricRecord before 'metrics'": Fault(_record_first, ""),
    "no ArrayRecord": Fault(_no_arrays, "no ArrayRecord 'arrays'"),
    "ArrayRecord under another name": Fault(_renamed_arrays, "no ArrayRecord 'arrays'"),
    "npy header claiming 2^40 float32": Fault(
        _on_arrays(_npy_2_40), "claims shape (1099511627776,)", forged_size=True
    ),
    "@sparse index form claiming (2^31,)": Fault(
        _on_arrays(_sparse_2_31), "claims shape (2147483648,)", forged_size=True
    ),
    "@sparse zlib bomb": Fault(_on_arrays(_sparse_bomb), "zlib stream longer", forged_size=True),
    "wrong dtype (int32)": Fault(_on_arrays(_edit_dense(lambda a: a.astype(np.int32))), "dtype int32"),
    "wrong dtype (complex)": Fault(
        _on_arrays(_edit_dense(lambda a: a.astype(np.complex64))), "dtype complex64"
    ),
    "wrong shape": Fault(_on_arrays(_edit_dense(lambda a: a.reshape(-1)[:-1])), "claims shape"),
    "NaN weights": Fault(_on_arrays(_edit_dense(lambda a: np.full_like(a, np.nan))), "non-finite"),
    "extra array key": Fault(_on_arrays(_extra_key), "unexpected"),
    "missing array key": Fault(_on_arrays(_missing_key), "missing"),
    "one array sent twice": Fault(_on_arrays(_twice), "sent twice"),
    "truncated npy data": Fault(_on_arrays(_truncated), "header claims"),
    "pickled object array": Fault(_on_arrays(_pickled), "not accepted"),
    "non-numpy serialization type": Fault(_on_arrays(_torch_stype), "serialization type"),
    "error reply (multi-line reason)": Fault(
        _error_reply, "error reply: client failed", ("train", "evaluate")
    ),
    "ClientApp raises": Fault(_crash, "device out of battery", ("train", "evaluate")),
}


def _gwpf_votes(edit: Callable[[ArrayRecord, str], None]) -> Corrupt:
    def corrupt(content: RecordDict) -> RecordDict:
        record = content.array_records["arrays"]
        key = next(k for k in record if _base(k) == VOTES_KEY)
        edit(record, key)
        return content

    return corrupt


def _votes_claim(record: ArrayRecord, key: str) -> None:
    _replace(record, key, VOTES_KEY + BITS_SUFFIX, bits_claiming((2**31,)))


def _votes_float(record: ArrayRecord, key: str) -> None:
    _replace(record, key, VOTES_KEY, Array(np.ones(_decode_one(record, key).size, np.float32)))


def _values_edit(fn: Callable[[np.ndarray], np.ndarray]) -> Corrupt:
    def corrupt(content: RecordDict) -> RecordDict:
        record = content.array_records["arrays"]
        key = next(k for k in record if _base(k) == VALUES_KEY)
        value = fn(_decode_one(record, key))
        _replace(record, key, VALUES_KEY, Array(np.ascontiguousarray(value)))
        return content

    return corrupt


def _decode_one(record: ArrayRecord, key: str) -> np.ndarray:
    from fl_strategies.codec import decode_arrays

    return decode_arrays(ArrayRecord({key: record[key]}))[_base(key)]


GWPF: dict[str, Fault] = {
    "GWPF votes claiming (2^31,) bits": Fault(
        _gwpf_votes(_votes_claim), "claims shape (2147483648,)", forged_size=True
    ),
    "GWPF votes as floats": Fault(_gwpf_votes(_votes_float), "expected bool"),
    "GWPF votes zlib bomb": Fault(
        _gwpf_votes(lambda r, k: _replace(r, k, VOTES_KEY + BITS_SUFFIX, bits_zlib_bomb((1000,)))),
        "claims shape (1000,)",
        forged_size=True,
    ),
    "GWPF sync values one short": Fault(_values_edit(lambda v: v[:-1]), "claims shape"),
    "GWPF sync values NaN": Fault(_values_edit(lambda v: np.full_like(v, np.nan)), "non-finite"),
    "GWPF sync values int": Fault(_values_edit(lambda v: v.astype(np.int32)), "expected float"),
    "GWPF sync values 2^40 header": Fault(
        _on_arrays(
            lambda r: _replace(r, next(k for k in r if _base(k) == VALUES_KEY), VALUES_KEY, forged_npy(2**40))
        ),
        "claims shape (1099511627776,)",
        forged_size=True,
    ),
}


def _local_mask(payload: Callable[[np.ndarray], Array | None]) -> Corrupt:
    """Replace FedSparsify-Local's mask (a position set within the global mask's kept
    positions) with ``payload(honest mask bytes)``; None removes it."""

    def corrupt(content: RecordDict) -> RecordDict:
        record = content.array_records["arrays"]
        honest = record[LOCAL_MASK_KEY].numpy()
        forged = payload(honest)
        del record[LOCAL_MASK_KEY]
        if forged is not None:
            record[LOCAL_MASK_KEY] = forged
        return content

    return corrupt


def _uint8(data: bytes) -> Array:
    return Array(np.frombuffer(data, np.uint8).copy())


FEDSPARSIFY_LOCAL: dict[str, Fault] = {
    "FedSparsify-Local mask missing": Fault(_local_mask(lambda honest: None), f"'{LOCAL_MASK_KEY}' missing"),
    "FedSparsify-Local mask indices past the kept positions": Fault(
        _local_mask(lambda honest: _uint8(bytes([2]) + np.arange(2**31, 2**31 + 64, dtype="<u4").tobytes())),
        "out of range",
    ),
    "FedSparsify-Local mask zlib bomb": Fault(
        _local_mask(lambda honest: _uint8(bytes([4]) + BOMB)), "zlib stream longer", forged_size=True
    ),
    "FedSparsify-Local mask as floats": Fault(
        _local_mask(lambda honest: Array(np.ones(honest.size, np.float32))), LOCAL_MASK_KEY
    ),
    "FedSparsify-Local mask truncated": Fault(
        _local_mask(lambda honest: _uint8(honest.tobytes()[: max(1, honest.size // 2)])), LOCAL_MASK_KEY
    ),
}


def _zerofl(edit: Callable[[ArrayRecord, str], None]) -> Corrupt:
    def corrupt(content: RecordDict) -> RecordDict:
        record = content.array_records["arrays"]
        name = next(k for k in record if k.endswith(SENT_SUFFIX))[: -len(SENT_SUFFIX)]
        edit(record, name)
        return content

    return corrupt


def _sent_blob(positions: bytes, values: bytes) -> Array:
    """A ZeroFL ``@sent`` blob from a position set and raw little-endian float32 values."""
    head = np.asarray([len(positions)], "<u4").tobytes()
    return Array(np.frombuffer(head + positions + bytes([1]) + values, np.uint8).copy())


def _zerofl_sent(record: ArrayRecord, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The (positions, values) an honest reply sent for ``name``."""
    size = int(np.prod(_shape_of(name)))
    return decode_sent(record[name + SENT_SUFFIX].numpy(), size)


def _positions_out_of_range(record: ArrayRecord, name: str) -> None:
    count = _zerofl_sent(record, name)[0].size
    indices = bytes([2]) + np.arange(2**31, 2**31 + count, dtype="<u4").tobytes()
    record[name + SENT_SUFFIX] = _sent_blob(indices, np.ones(count, "<f4").tobytes())


def _positions_bomb(record: ArrayRecord, name: str) -> None:
    record[name + SENT_SUFFIX] = _sent_blob(bytes([4]) + BOMB, b"")


def _values_count(record: ArrayRecord, name: str) -> None:
    positions, values = _zerofl_sent(record, name)
    mask = np.zeros(int(np.prod(_shape_of(name))), bool)
    mask[positions] = True
    packed = encode_positions(mask).tobytes()
    record[name + SENT_SUFFIX] = _sent_blob(packed, values.astype("<f4")[:-1].tobytes())


def _values_nan(record: ArrayRecord, name: str) -> None:
    positions, _ = _zerofl_sent(record, name)
    mask = np.zeros(int(np.prod(_shape_of(name))), bool)
    mask[positions] = True
    record[name + SENT_SUFFIX] = Array(
        encode_sent(np.full(_shape_of(name), np.nan, np.float32), mask.reshape(_shape_of(name)))
    )


def _all_positions(record: ArrayRecord, name: str) -> None:
    shape = _shape_of(name)
    record[name + SENT_SUFFIX] = Array(encode_sent(np.ones(shape, np.float32), np.ones(shape, bool)))


_SHAPES: dict[str, tuple[int, ...]] = {}


def _shape_of(name: str) -> tuple[int, ...]:
    return _SHAPES[name]


ZEROFL: dict[str, Fault] = {
    "ZeroFL positions out of range": Fault(_zerofl(_positions_out_of_range), "out of range"),
    "ZeroFL positions zlib bomb": Fault(_zerofl(_positions_bomb), "zlib stream longer", forged_size=True),
    "ZeroFL values fewer than positions": Fault(_zerofl(_values_count), "positions but"),
    "ZeroFL values NaN": Fault(_zerofl(_values_nan), "non-finite"),
    "ZeroFL every position (over budget)": Fault(_zerofl(_all_positions), "more than the"),
}


def _gkt(edit: Callable[[dict[str, np.ndarray]], None]) -> Corrupt:
    def corrupt(content: RecordDict) -> RecordDict:
        from fl_strategies.codec import decode_arrays, encode_arrays

        arrays = decode_arrays(content.array_records["arrays"])
        edit(arrays)
        content.array_records["arrays"] = encode_arrays(arrays)
        return content

    return corrupt


def _gkt_features_claim(content: RecordDict) -> RecordDict:
    record = content.array_records["arrays"]
    key = next(k for k in record if _base(k) == "features")
    _replace(record, key, "features" + SPARSE_SUFFIX, forged_sparse_indices(2**31))
    return content


def _gkt_test_labels_claim(content: RecordDict) -> RecordDict:
    record = content.array_records["arrays"]
    key = next(k for k in record if _base(k) == "test-labels")
    _replace(record, key, "test-labels", forged_npy(2**40, "<i8"))
    return content


def _set(key: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = fn(arrays[key])

    return edit


FEDGKT: dict[str, Fault] = {
    "FedGKT features wrong shape": Fault(_gkt(_set("features", lambda f: f[:, :-1])), "claims shape"),
    "FedGKT logits NaN": Fault(_gkt(_set("logits", lambda x: np.full_like(x, np.nan))), "non-finite"),
    "FedGKT duplicate indices": Fault(
        _gkt(_set("indices", lambda i: np.zeros_like(i))), "duplicate sample indices"
    ),
    "FedGKT labels out of range": Fault(_gkt(_set("labels", lambda y: y + 100)), "labels outside"),
    "FedGKT features @sparse claiming (2^31,)": Fault(_gkt_features_claim, "claims shape", forged_size=True),
    "FedGKT test labels claiming 2^40": Fault(_gkt_test_labels_claim, "test examples", forged_size=True),
}


# ------------------------------------------------------------------------ runner
def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=[*SMALL, *overrides])


def faulty_app(app, faults_by_node: dict[int, Fault]):
    """The real ClientApp, with each listed node's reply corrupted by its fault."""

    def client(message: Message, context) -> Message:
        reply = app(message, context)
        fault = faults_by_node.get(context.node_id)
        phase = "train" if message.metadata.message_type == "train" else "evaluate"
        if fault is None or phase not in fault.phases or reply.has_error():
            return reply
        corrupted = fault.corrupt(reply.content)
        return Message(corrupted, reply_to=message)

    return client


@dataclass
class FaultRun:
    strategy: object
    rounds: list[dict]
    final: dict[str, np.ndarray]
    drops: dict[tuple[int, str, int], list[str]]
    log_lines: list[str]
    peaks: dict[int, list[tuple[int, int]]]
    model_bytes: int
    nodes: dict[str, int]


def run_with_faults(
    tmp_path, caplog, faults: dict[str, Fault], overrides: list[str], good: int = 2, deployment: bool = False
) -> FaultRun:
    """Run with one node per fault and ``good`` honest ones.

    ``deployment``: the server knows no partition sizes (as with real devices), so
    only ``max_num_examples`` bounds a reply's claim.
    """
    from simulations.app.client_app import app
    from simulations.app.compose import compose_run, execute_plan
    from simulations.runtimes.inline import InlineGrid

    names = list(faults)
    num_clients = len(names) + good
    plan = compose_run(config(*overrides, f"num_clients={num_clients}"), tmp_path)
    strategy = plan.strategy
    _SHAPES.update({k: v.numpy().shape for k, v in plan.initial_arrays.items()})
    nodes = {name: 1000 + i for i, name in enumerate(names)}
    by_node = {nodes[name]: faults[name] for name in names}
    if "num-examples one above the partition" in nodes:
        pid = nodes["num-examples one above the partition"] - 1000
        by_node[nodes["num-examples one above the partition"]] = Fault(
            _set_metric("num-examples", strategy.partition_sizes[pid] + 1), "of partition"
        )
    grid = InlineGrid(faulty_app(app, by_node), num_clients)
    if deployment:
        strategy.partition_sizes = None
    else:
        strategy.node_partitions = {n: int(c.node_config["partition-id"]) for n, c in grid.contexts.items()}
    forged = {nodes[n] for n in names if faults[n].forged_size}
    peaks: dict[int, list[tuple[int, int]]] = {}
    validate = strategy.validated_train_reply

    def measured(server_round: int, message: Message):
        node = message.metadata.src_node_id
        if node not in forged:
            return validate(server_round, message)
        size = message_bytes(message)
        tracemalloc.start()
        tracemalloc.reset_peak()
        try:
            return validate(server_round, message)
        finally:
            peaks.setdefault(node, []).append((tracemalloc.get_traced_memory()[1], size))
            tracemalloc.stop()

    strategy.validated_train_reply = measured
    with caplog.at_level(logging.WARNING, logger="flwr"):
        execute_plan(plan, grid, quiet=True)
    lines = [r.getMessage() for r in caplog.records]
    drops: dict[tuple[int, str, int], list[str]] = {}
    for line in lines:
        match = DROP.match(line)
        if match:
            drops.setdefault((int(match[1]), match[2], int(match[3])), []).append(match[4])
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    final = dict(np.load(tmp_path / "final_model.npz"))
    model_bytes = sum(v.nbytes for v in final.values())
    return FaultRun(strategy, rounds, final, drops, lines, peaks, model_bytes, nodes)


def check_run(run: FaultRun, faults: dict[str, Fault], phases: tuple[str, ...] = ("train",)) -> None:
    assert [r["round"] for r in run.rounds] == [0, *ROUNDS]
    assert all(np.all(np.isfinite(v)) for v in run.final.values() if v.dtype.kind == "f")
    assert not any("\n" in line for line in run.log_lines if "dropped reply" in line)
    for name, fault in faults.items():
        node = run.nodes[name]
        for phase in phases:
            for server_round in ROUNDS:
                reasons = run.drops.get((server_round, phase, node), [])
                if fault.dropped and phase in fault.phases:
                    assert len(reasons) == 1, (name, phase, server_round, reasons)
                    assert fault.needle in reasons[0], (name, reasons[0])
                else:
                    assert reasons == [], (name, phase, server_round, reasons)
        if fault.forged_size:
            assert run.peaks.get(node), name
            for peak, size in run.peaks[node]:
                # Slack: the bounded inflate buffers (at most what the receiver expects,
                # e.g. 4 bytes per kept position) and the decoder's temporaries; a
                # forged size or bomb that were not bounded cost 64 MiB to terabytes.
                slack = 3 << 19  # 1.5 MiB
                assert peak < size + run.model_bytes + slack, (name, peak, size, run.model_bytes)
    table = os.environ.get("FEDLEAN_FAULT_TABLE")
    if table:  # docs/reliability.md's table, as measured by this run
        with open(table, "a", encoding="utf-8") as out:
            for name, fault in faults.items():
                node = run.nodes[name]
                reason = run.drops.get((1, fault.phases[0], node), ["used"])[0]
                peak = max((p for p, _ in run.peaks.get(node, [])), default=None)
                size = max((z for _, z in run.peaks.get(node, [])), default=None)
                cost = f"{peak / 2**20:.2f} MiB (reply {size / 2**20:.2f} MiB)" if peak is not None else ""
                method = run.strategy.method_name
                out.write(f"| {method} | {name} | {', '.join(fault.phases)} | {reason} | {cost} |\n")
    dropped = sum(1 for f in faults.values() if f.dropped and "train" in f.phases)
    assert [r["dropped"] for r in run.rounds[1:]] == [dropped] * len(ROUNDS)
    assert [r["eval_dropped"] for r in run.rounds[1:]] == [_evaluate_drops(faults, phases)] * len(ROUNDS)
    # Every sampled node replied: a dropped reply is not a missing one.
    assert all(r["missing"] == 0 and r["replied"] == r["sampled"] for r in run.rounds[1:])


def _evaluate_drops(faults: dict[str, Fault], phases: tuple[str, ...]) -> int:
    if "evaluate" not in phases:
        return 0
    return sum(1 for f in faults.values() if f.dropped and "evaluate" in f.phases)


# ------------------------------------------------------------------------- tests
def test_fedavg_survives_every_generic_fault(tmp_path, caplog):
    run = run_with_faults(tmp_path, caplog, GENERIC, ["method=fedavg", "fraction_evaluate=1"])
    check_run(run, GENERIC, phases=("train", "evaluate"))
    # The honest replies and the one with an extra MetricRecord made the round: the
    # forged record's 10^9 examples and loss 1e30 did not reach the aggregate.
    assert all(r["train_loss"] < 100 for r in run.rounds[1:])


@pytest.mark.parametrize(
    ("faults", "overrides"),
    [
        pytest.param(GWPF, ["method=gwpf"], id="gwpf"),
        pytest.param(FEDSPARSIFY_LOCAL, ["method=fedsparsify_local"], id="fedsparsify_local"),
        pytest.param(ZEROFL, ["method=zerofl"], id="zerofl"),
        pytest.param(
            FEDGKT,
            [
                "+experiment=fedgkt_digits",
                "dataset.resize=8",
                "method.epochs_client=1",
                "method.epochs_server=1",
            ],
            id="fedgkt",
        ),
    ],
)
def test_method_payload_faults_are_dropped(tmp_path, caplog, faults, overrides):
    generic = {k: GENERIC[k] for k in ("num-examples NaN", "metric NaN", "@sparse zlib bomb")}
    if overrides[0] in ("+experiment=fedgkt_digits", "method=fedsparsify_local"):
        # FedGKT's upload holds no model tensor; FedSparsify-Local's values travel as
        # known-mask values (no @sparse entry), forged by its own faults above.
        generic = {k: GENERIC[k] for k in ("num-examples NaN", "metric NaN")}
    run = run_with_faults(
        tmp_path / "run", caplog, {**generic, **faults}, [*overrides, "fraction_evaluate=0"]
    )
    check_run(run, {**generic, **faults})


@pytest.mark.slow
def test_nan_num_examples_on_ray_is_dropped_and_the_run_completes(tmp_path, caplog):
    from omegaconf import OmegaConf

    from simulations.runtimes.simulation import run_from_config

    cfg = OmegaConf.to_container(config("backend=ray", "num_clients=3", "fraction_evaluate=0"), resolve=True)
    cfg["method"] = {"name": "fedavg_nan_node"}
    cfg["plugins"] = ["tests.fault_plugin"]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        summary = run_from_config(cfg, tmp_path, quiet=True)
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["dropped"] for r in rounds[1:]] == [1, 1]
    drops = [m for m in (r.getMessage() for r in caplog.records) if DROP.match(m)]
    assert len(drops) == 2 and all("'num-examples'=nan is not a positive integer" in m for m in drops)
    assert {DROP.match(m)[1] for m in drops} == {"1", "2"}
    final = np.load(tmp_path / "final_model.npz")
    assert all(np.all(np.isfinite(final[k])) for k in final.files)
    assert summary["method"] == "fedavg_nan_node"


# ------------------------------------------------------- weights and aggregation
def test_check_num_examples_by_hand():
    from fl_strategies.base import ReplyError, check_num_examples

    assert check_num_examples(12.0, 12) == 12
    for bad in (math.nan, math.inf, -1, 0, 2.5, True, "7", [3], None):
        with pytest.raises(ReplyError):
            check_num_examples(bad, 100)
    with pytest.raises(ReplyError, match="more than the 12 examples of partition 3"):
        check_num_examples(13, 12, "of partition 3")


def test_capped_weights_by_hand():
    from fl_strategies.base import capped_weights

    # 1000 of 1030 would hold 97%; capped at 50% the other two share the rest 1:2.
    shares = np.array(capped_weights([1000, 10, 20], 0.5)) / 1030
    np.testing.assert_allclose(shares, [0.5, 0.5 / 3, 1 / 3])
    assert capped_weights([1, 2, 3], None) == [1.0, 2.0, 3.0]
    assert capped_weights([5, 1], 0.4) == [3.0, 3.0]  # no split holds 0.4 each: equal weights
    # Water filling: capping one may push another over the cap.
    np.testing.assert_allclose(np.array(capped_weights([60, 30, 5, 5], 0.35)) / 100, [0.35, 0.35, 0.15, 0.15])


def test_clip_update_by_hand():
    from fl_strategies.base import clip_update

    reference = {"w": np.zeros(2, np.float32), "b": np.ones(1, np.float32)}
    arrays = {"w": np.array([3.0, 4.0], np.float32), "b": np.ones(1, np.float32), "n": np.array(7)}
    clipped, norm = clip_update(arrays, reference, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)
    assert clipped["n"] == 7 and clipped["w"].dtype == np.float32
    same, norm = clip_update(arrays, reference, 10.0)
    np.testing.assert_array_equal(same["w"], arrays["w"])


def test_robust_mean_uses_flowers_aggregators_by_hand():
    from fl_strategies.base import robust_mean

    replies = [
        {"w": np.array([v], np.float32), "n": np.array([k])} for v, k in ((1, 1), (2, 2), (3, 3), (100, 4))
    ]
    weights = [1, 1, 1, 1]
    assert robust_mean(replies, weights, "mean")["w"][0] == pytest.approx(26.5)
    assert robust_mean(replies, weights, "median")["w"][0] == pytest.approx(2.5)
    assert robust_mean(replies, weights, "trimmed_mean", trim_beta=0.25)["w"][0] == pytest.approx(2.5)
    assert robust_mean(replies, weights, "krum", num_malicious=1)["w"][0] in (1.0, 2.0, 3.0)
    assert robust_mean(replies, weights, "median")["n"].dtype == replies[0]["n"].dtype


def test_one_client_cannot_dominate_with_weights_norms_or_outliers(tmp_path, caplog):
    """An honest-looking reply (10,000 examples claimed, weights +100) among honest ones."""
    from fl_strategies.codec import decode_arrays, encode_arrays

    def poison(content: RecordDict) -> RecordDict:
        _metrics(content)["num-examples"] = 10_000
        arrays = decode_arrays(content.array_records["arrays"])
        content.array_records["arrays"] = encode_arrays(
            {k: v + 100 if v.dtype.kind == "f" else v for k, v in arrays.items()}
        )
        return content

    outlier = {"poisoned": Fault(poison, "")}
    common = ["method=fedavg", "fraction_evaluate=0"]
    finals = {}
    for name, extra in {
        "plain": [],
        "share": ["max_weight_share=0.25"],
        "norm": ["update_norm_bound=1.0"],
        "median": ["aggregation=median"],
    }.items():
        plan_dir = tmp_path / name
        run = run_with_faults(plan_dir, caplog, outlier, [*common, *extra], good=4, deployment=True)
        finals[name] = max(float(np.abs(v).max()) for v in run.final.values() if v.dtype.kind == "f")
        assert all(r["dropped"] == 0 for r in run.rounds[1:])
        if name == "norm":
            assert all(r["clipped"] >= 1 for r in run.rounds[1:])
    # 10,000 of about 10,900 examples: the outlier is the model (+100 twice, about 180).
    assert finals["plain"] > 150
    assert finals["share"] < 0.4 * finals["plain"]  # a quarter of the weight: about +50
    assert finals["norm"] < 10 and finals["median"] < 10


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["max_num_examples=0"], "max_num_examples=0: must be an integer >= 1"),
        (["max_weight_share=1.5"], "max_weight_share=1.5: must be null or in (0, 1]"),
        (["update_norm_bound=-1"], "update_norm_bound=-1.0: must be null or > 0"),
        (["aggregation=mode"], "aggregation='mode': must be one of mean, median, trimmed_mean, krum"),
        (["aggregation=krum", "method=gwpf"], "aggregation='krum': is supported for fedavg and fedprox only"),
        (["trim_beta=0.5"], "trim_beta=0.5: must be in [0, 0.5)"),
        (["num_clients=1500"], "num_clients=1500: more than the 1437 training examples of digits"),
        (["num_clients=2", "max_num_examples=100"], "max_num_examples=100: below the largest partition"),
    ],
)
def test_bad_weight_and_aggregation_config_fails_in_one_line(tmp_path, overrides, needle):
    from simulations.app.compose import compose_run
    from simulations.app.config import ConfigError

    with pytest.raises(ConfigError) as info:
        compose_run(config(*overrides), tmp_path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_download_without_network_fails_in_one_line(tmp_path, monkeypatch):
    import socket

    from simulations.app.compose import compose_run
    from simulations.app.config import ConfigError

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    cfg = config("dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=true")
    with pytest.raises(ConfigError) as info:
        compose_run(cfg, tmp_path / "out")
    message = str(info.value)
    assert message.startswith("dataset.download=true: dataset 'mnist': download into") and "\n" not in message
    assert "Name or service not known" in message


def test_a_drop_is_one_line_with_the_traceback_at_debug(caplog):
    from fl_strategies import FedAvg

    strategy = FedAvg()
    try:
        raise ValueError("first line\n  second line")
    except ValueError as exc:
        with caplog.at_level(logging.DEBUG, logger="flwr"):
            strategy._drop_node(3, 1007, "train", exc)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["round 3 train: dropped reply from node 1007: ValueError: first line"]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 1 and debug[0].exc_info is not None
    assert strategy.dropped[3] == ["1007: ValueError: first line"]


def test_read_npy_and_claimed_shape_check_headers_by_hand():
    from fl_strategies.codec import CodecError, claimed_shape, encode_arrays, read_npy

    good = Array(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(read_npy(good, (2, 3)), np.arange(6).reshape(2, 3))
    with pytest.raises(CodecError, match=r"claims shape \(2, 3\), expected \(3, 2\)"):
        read_npy(good, (3, 2))
    with pytest.raises(CodecError, match=r"claims 1099511627776 elements \(at most 268435456 accepted\)"):
        read_npy(forged_npy(2**40))  # no expected shape: the codec's element bound
    with pytest.raises(CodecError, match="header claims 4000 data bytes, the message holds 16"):
        read_npy(forged_npy(1000))  # within the bound: the bytes must be there
    assert claimed_shape(forged_npy(2**40), "x") == (2**40,)
    record = encode_arrays({"s": np.zeros((40, 5), np.float32), "b": np.zeros(7, bool)}, encoding="sparse")
    assert claimed_shape(record["s@sparse"], "s@sparse") == (40, 5)
    assert claimed_shape(record["b@bits"], "b@bits") == (7,)
