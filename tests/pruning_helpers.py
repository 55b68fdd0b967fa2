"""Shared by the pruning tests: hand-made clients that speak the known-mask wire, and real runs.

The wire side is written here from the protocol's description (``docs/payload-keys.md``),
not imported from ``clients.methods.fedsparsify``, so the strategy tests check the
server against a second reading of the protocol.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fl_strategies.codec import (
    decode_arrays,
    decode_known_values,
    decode_positions,
    encode_arrays,
    encode_known_values,
    encode_positions,
)
from fl_strategies.pruning import (
    flat_mask,
    gather_known,
    known_count,
    known_names,
    scatter_known,
    unflat_mask,
)
from simulations import CONF_DIR

#: Where a hand-made client keeps its mask between rounds (``context.state``).
_STATE = "test-known-mask"


def known_receive(
    message: Message, context: Any, prunable: Sequence[str], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Decode a training message as a pruning client must: ``(model arrays, keep mask)``.

    ``shapes`` is the model's (name -> shape, float32 entries); the held mask lives in
    ``context.state`` (mask 0 = nothing pruned).
    """
    config = message.content.config_records["config"]
    record = message.content.array_records["arrays"]
    base = int(config["mask-base"])
    if base == 0:
        keep = {n: np.ones(shapes[n], dtype=bool) for n in prunable}
    else:
        held_record = context.state.config_records.get(_STATE + "-id")
        held = None if held_record is None else held_record["id"]
        if held != base:
            raise ValueError(f"this node holds mask {held}, the message changes mask {base}")
        keep = {n: context.state.array_records[_STATE][n].numpy().astype(bool) for n in prunable}
    if "prune-mask@flips" in record:
        flat = flat_mask(keep)
        flat[decode_positions(record["prune-mask@flips"].numpy(), flat.size)] ^= True
        keep = unflat_mask(flat, keep)
    known = {
        n: tuple(shapes[n]) for n in known_names({n: np.zeros(s, np.float32) for n, s in shapes.items()})
    }
    values = decode_known_values(record["known-values"].numpy(), known_count(known, keep))
    rest = decode_arrays(
        ArrayRecord({k: v for k, v in record.items() if "@flips" not in k and k != "known-values"})
    )
    context.state[_STATE] = ArrayRecord({n: Array(m) for n, m in keep.items()})
    context.state[_STATE + "-id"] = ConfigRecord({"id": int(config["mask-id"])})
    return {**rest, **scatter_known(values, known, keep)}, keep


def known_reply(
    message: Message,
    arrays: Mapping[str, np.ndarray],
    keep: Mapping[str, np.ndarray],
    num_examples: int,
    local_keep: Mapping[str, np.ndarray] | None = None,
    extra: Mapping[str, ArrayRecord] | None = None,
    mask_id: int | None = None,
) -> Message:
    """A training reply on the known-mask wire: values at ``keep`` (or at ``local_keep``,
    sent within ``keep``), the mask id echoed (``mask_id`` overrides it)."""
    config = message.content.config_records["config"]
    known = known_names(arrays)
    record = encode_arrays({k: v for k, v in arrays.items() if k not in known})
    send = keep
    if local_keep is not None:
        record["local-mask@positions"] = Array(encode_positions(flat_mask(local_keep)[flat_mask(keep)]))
        send = local_keep
    record["known-values"] = Array(encode_known_values(gather_known(arrays, send, known)))
    content = RecordDict(
        {
            "arrays": record,
            "metrics": MetricRecord({"num-examples": num_examples}),
            "config": ConfigRecord({"mask-id": int(config["mask-id"]) if mask_id is None else mask_id}),
        }
    )
    for key, value in (extra or {}).items():
        content[key] = value
    return Message(content, reply_to=message)


def digits_run(tmp_path: Path, method: str, overrides: Sequence[str] = ()) -> tuple[dict, dict, Any]:
    """A short real run on digits (3 clients, 1 local epoch, no client evaluation).

    Returns the summary, the round records by round, and the final model (``npz``).
    """
    from hydra import compose, initialize_config_dir

    from simulations.runtimes.simulation import run_from_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(
            "config",
            overrides=[
                f"method={method}",
                "num_clients=3",
                "local_epochs=1",
                "fraction_evaluate=0",
                "method.benchmark_seconds=0",
                *overrides,
            ],
        )
    summary = run_from_config(cfg, tmp_path, quiet=True)
    records = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    return summary, {r["round"]: r for r in records}, np.load(tmp_path / "final_model.npz")
