"""Client side of the partial-sync protocol shared by GWPF and APF.

The client keeps, in ``context.state`` (per node, across rounds, in simulation and
deployment alike): its local model, the masks it was last told, the round it last
trained, and a method's extra per-scalar arrays. A partial message updates that
state (values of last round's synced positions, mask changes, the non-freezable
arrays whole); a full message replaces it. The wire protocol is described in
:mod:`fl_strategies.partial_sync`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fl_strategies.codec import CodecError, decode_arrays, encode_arrays
from fl_strategies.partial_sync import (
    MASK_PREFIX,
    SYNC_BASE_ROUND_KEY,
    SYNC_FULL_KEY,
    VALUES_KEY,
    FlatLayout,
    MaskSpec,
    decode_masks,
    synced_positions,
)
from fl_strategies.wire import ARRAYS_KEY

from ..train import LoopStats
from .base import ClientJob, ClientMethod, load_arrays, model_arrays

STATE_ARRAYS_KEY = "partial-sync-state"
STATE_META_KEY = "partial-sync-meta"
_MODEL_PREFIX = "model/"
_EXTRA_PREFIX = "extra/"


def model_layout(job: ClientJob) -> FlatLayout:
    """Flat layout of the model's trainable tensors (the server uses the same rule)."""
    return FlatLayout({name: tuple(p.shape) for name, p in job.model.named_parameters() if p.requires_grad})


class PartialSyncClient(ClientMethod):
    """Keeps the local model across rounds; syncs the server's chosen positions only.

    Subclasses declare their masks (:attr:`mask_spec`, as the server does) and their extra
    per-scalar state (:attr:`extra_state`), and add reply arrays in :meth:`extra_reply`.
    """

    name = "partial_sync"
    mask_spec: MaskSpec = (("active", None, True),)
    #: Names of extra float32 per-scalar arrays kept in the node's state.
    extra_state: tuple[str, ...] = ()

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self._upload: dict[str, np.ndarray] | None = None

    # --------------------------------------------------------------- state
    def _load_state(self, job: ClientJob, base_round: int):
        state = job.context.state
        if STATE_ARRAYS_KEY not in state.array_records or STATE_META_KEY not in state.config_records:
            raise CodecError(
                "partial message but this node holds no synced state "
                "(the server should have sent the full model)"
            )
        held = int(state.config_records[STATE_META_KEY]["round"])
        if held != base_round:
            raise CodecError(f"partial message updates round {base_round}, this node holds round {held}")
        stored = {k: v.numpy() for k, v in state.array_records[STATE_ARRAYS_KEY].items()}
        model = {k[len(_MODEL_PREFIX) :]: v for k, v in stored.items() if k.startswith(_MODEL_PREFIX)}
        masks = {
            k[len(MASK_PREFIX) :]: v.astype(bool) for k, v in stored.items() if k.startswith(MASK_PREFIX)
        }
        extra = {k[len(_EXTRA_PREFIX) :]: v.copy() for k, v in stored.items() if k.startswith(_EXTRA_PREFIX)}
        return model, masks, extra

    def _save_state(self, job: ClientJob, model: dict[str, np.ndarray]) -> None:
        record = ArrayRecord()
        for key, value in model.items():
            record[_MODEL_PREFIX + key] = Array(np.require(value, requirements="C"))
        for key, value in self.masks.items():
            record[MASK_PREFIX + key] = Array(np.require(value, requirements="C"))
        for key, value in self.extra.items():
            record[_EXTRA_PREFIX + key] = Array(np.require(value, requirements="C"))
        job.context.state[STATE_ARRAYS_KEY] = record
        job.context.state[STATE_META_KEY] = ConfigRecord({"round": int(job.server_round)})

    # --------------------------------------------------------------- hooks
    def receive(self, job: ClientJob) -> None:
        """Apply a full or partial training message to the node's model and state.

        Evaluation messages (no ``sync-full`` entry) carry the whole global model and
        leave the state alone.
        """
        decoded = decode_arrays(job.content.array_records[ARRAYS_KEY])
        config = job.config
        if SYNC_FULL_KEY not in config:
            load_arrays(job.model, decoded)
            return
        layout = model_layout(job)
        self.layout = layout
        model_keys = list(job.model.state_dict())
        if bool(config[SYNC_FULL_KEY]):
            local = {k: decoded[k] for k in model_keys}
            self.masks = decode_masks(self.mask_spec, decoded, layout.size)
            self.extra = {n: np.zeros(layout.size, np.float32) for n in self.extra_state}
            received = np.ones(layout.size, dtype=bool)
        else:
            local, known, self.extra = self._load_state(job, int(config[SYNC_BASE_ROUND_KEY]))
            flat = layout.flatten(local)
            received = synced_positions(known)
            # Flat positions: scattering at them is much cheaper than at a boolean mask.
            at = np.flatnonzero(received)
            values = decoded[VALUES_KEY]
            if values.shape != (at.size,):
                raise CodecError(f"'{VALUES_KEY}' holds {values.size} values for {at.size} synced positions")
            flat[at] = values
            buffers = [k for k in model_keys if k not in layout.slices]
            local = {**local, **layout.unflatten(flat, like=local), **{k: decoded[k] for k in buffers}}
            self.masks = decode_masks(self.mask_spec, decoded, layout.size, known)
        self.sync = synced_positions(self.masks)
        self.sync_at = np.flatnonzero(self.sync)
        load_arrays(job.model, local)
        self.flat_before = layout.flatten(local)
        self.on_receive(job, received)

    def on_receive(self, job: ClientJob, received: np.ndarray) -> None:
        """Called after the model is loaded; ``received`` = positions just synced."""

    def extra_reply(self, job: ClientJob, flat_after: np.ndarray) -> dict[str, np.ndarray]:
        """Method-specific reply arrays (default: none)."""
        return {}

    def upload(self, job: ClientJob) -> dict[str, np.ndarray]:
        """What goes up after training (computed once; saves the node's state)."""
        if self._upload is None:
            after = model_arrays(job.model)
            flat_after = self.layout.flatten(after)
            arrays = {VALUES_KEY: flat_after[self.sync_at]}
            arrays.update({k: v for k, v in after.items() if k not in self.layout.slices})
            arrays.update(self.extra_reply(job, flat_after))
            self._save_state(job, after)
            self._upload = arrays
        return self._upload

    def reply_arrays(self, job: ClientJob, stats: LoopStats) -> ArrayRecord:
        """Values at the synced positions, the non-freezable arrays, the extras."""
        return encode_arrays(self.upload(job), encoding=self.settings.get("encoding", "auto"))

    def reply_metrics(self, job: ClientJob, stats: LoopStats) -> dict[str, float | int]:
        """How many scalars this reply syncs."""
        return {"synced-scalars": int(self.sync_at.size)}
