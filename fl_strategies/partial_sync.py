"""Partial synchronisation: the wire protocol and server base of parameter freezing.

GWPF (:mod:`fl_strategies.gwpf`) and APF (:mod:`fl_strategies.apf`) sync only part of
the model each round. This module holds what both share.

Flat layout
    The *freezable* scalars are the entries of the trainable tensors (``named_parameters``
    of the model), taken in sorted name order, each flattened in C order and
    concatenated (:class:`FlatLayout`). Everything else in the state dict (BatchNorm
    running statistics, ``num_batches_tracked``) is never frozen: it travels whole
    both ways every round and is averaged.

Masks
    The server decides, after aggregating round ``t``, boolean masks over the flat
    layout for round ``t + 1``; the positions clients upload (``sync``) are their union
    (APF: ``active``; GWPF: ``active`` and ``thawed``). A mask travels as its change
    against the mask the client already holds (its initial value when the message
    carries the whole state): ``mask-<name>@flips``, the flipped positions as a position
    set (:func:`fl_strategies.codec.encode_positions`: uint32 indices, packed bits or
    zlib over either, whichever is smallest; :func:`encode_mask_update`). A mask may be
    declared to live within the False positions of an earlier one (GWPF's ``thawed``
    within the frozen ``~active``); it is then sent over that domain only
    (:data:`MaskSpec`, :func:`encode_masks`). So both of GWPF's masks cost at most
    about one bit per scalar together, and a few bytes in rounds where little changes.

Messages
    A *partial* training message (``sync-full = False`` in its ConfigRecord) carries
    ``sync-values``: the new global values of the positions synced in the previous round
    (the client knows which: it uploaded them), in flat order; the non-freezable arrays
    by name; the mask updates. A *full* message (``sync-full = True``) carries the
    whole global model by name and the masks (as changes of their initial values).
    Round 1 is full for everyone; so is every round for a node that did not take part
    (with a valid reply) in the round before: it missed values and mask changes, so it
    is resynced from scratch. The
    reply carries ``sync-values`` (the client's values at the ``sync`` positions) and
    the non-freezable arrays (plus a method's extras, e.g. GWPF's vote bits). Every
    array goes through the codec (:mod:`fl_strategies.codec`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from .base import FedleanStrategy, ParsedReply, ReplyError, weighted_mean
from .codec import CodecError, decode_positions, encode_arrays, encode_positions
from .flwr_compat import ARRAY_CHUNK_SIZE, nested_objects, no_object_id_recompute
from .wire import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, RUN_CONFIG_KEY, message_bytes, messages_bytes

#: ConfigRecord entry: ``True`` when the message carries the whole model and masks.
SYNC_FULL_KEY = "sync-full"
#: ConfigRecord entry: the round whose state a partial message updates.
SYNC_BASE_ROUND_KEY = "sync-base-round"
#: Flat values of the synced positions (down: last round's; up: this round's).
VALUES_KEY = "sync-values"
MASK_PREFIX = "mask-"
FLIPS_SUFFIX = "@flips"

#: State-dict names that are statistics, not trainable parameters (used when no
#: explicit list of freezable names is given).
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class FlatLayout:
    """The freezable tensors of a model as one flat vector.

    Parameters
    ----------
    shapes : Mapping[str, tuple[int, ...]]
        Shape of each freezable tensor by name; the layout takes them in sorted name
        order, so server and clients agree without exchanging the order.

    """

    def __init__(self, shapes: Mapping[str, Sequence[int]]) -> None:
        self.names = sorted(shapes)
        self.shapes = {name: tuple(int(d) for d in shapes[name]) for name in self.names}
        self.slices: dict[str, slice] = {}
        offset = 0
        for name in self.names:
            size = int(np.prod(self.shapes[name], dtype=np.int64))
            self.slices[name] = slice(offset, offset + size)
            offset += size
        self.size = offset

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate the freezable arrays (C order) into one new vector."""
        if not self.names:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([np.asarray(arrays[name]).reshape(-1) for name in self.names])

    def unflatten(
        self, flat: np.ndarray, like: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Split a flat vector back into named arrays (dtypes of ``like`` if given)."""
        if flat.shape != (self.size,):
            raise ValueError(f"flat vector has shape {flat.shape}, layout needs ({self.size},)")
        out = {}
        for name in self.names:
            part = flat[self.slices[name]].reshape(self.shapes[name])
            dtype = like[name].dtype if like is not None else part.dtype
            out[name] = part.astype(dtype, copy=True)
        return out


def freezable_names(arrays: Mapping[str, np.ndarray], trainable: Iterable[str] | None = None) -> list[str]:
    """Names of the arrays that may be frozen: the trainable ones, sorted.

    Without an explicit ``trainable`` list, every floating array whose name does not
    end with a BatchNorm statistic suffix (:data:`BUFFER_SUFFIXES`).
    """
    if trainable is not None:
        names = set(trainable)
        unknown = sorted(names - set(arrays))
        if unknown:
            raise ValueError(f"freezable names not in the model: {unknown[:3]}")
        return sorted(names)
    return sorted(
        name
        for name, value in arrays.items()
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not name.endswith(BUFFER_SUFFIXES)
    )


# ---------------------------------------------------------------------- stability
def ema_update(
    ema: np.ndarray,
    abs_ema: np.ndarray,
    delta: np.ndarray,
    alpha: float,
    where: np.ndarray | None = None,
) -> None:
    """In place: ``ema = a*ema + (1-a)*delta`` and the same for ``|delta|``.

    Parameters
    ----------
    ema, abs_ema : np.ndarray
        Running averages of the updates and of their magnitudes (updated in place).
    delta : np.ndarray
        This step's update (an update, never a parameter value).
    alpha : float
        Decay in [0, 1).
    where : np.ndarray | None (default: None)
        The entries to update, as a boolean mask or as flat positions (int); all when None.

    """
    if where is None:
        for average, value in ((ema, delta), (abs_ema, np.abs(delta))):
            average[...] = alpha * average + (1.0 - alpha) * value
        return
    # Gather, update, scatter at flat positions: the same float32 operations per entry as
    # whole-array arithmetic, without a boolean-mask pass (slow on scattered masks) over
    # every scalar.
    index = as_positions(where)
    step = delta[index]
    ema[index] = alpha * ema[index] + (1.0 - alpha) * step
    abs_ema[index] = alpha * abs_ema[index] + (1.0 - alpha) * np.abs(step)


def as_positions(where: np.ndarray) -> np.ndarray:
    """Flat positions (int64) of a boolean mask; an integer array is returned as is.

    Gathering and scattering at positions costs a fraction of boolean-mask indexing when
    the True entries are scattered (one pass to find them, then direct addressing), and
    the positions can be reused by every array indexed with the same mask.
    """
    where = np.asarray(where)
    if where.dtype == bool:
        return np.flatnonzero(where)
    return where


def stability(ema: np.ndarray, abs_ema: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Effective stepping rate ``|ema| / (abs_ema + eps)`` in [0, 1].

    Near 1: the updates keep one direction (the parameter is still moving). Near 0:
    they oscillate around zero (the parameter is stable), or there were none.
    """
    return np.abs(ema) / (abs_ema + eps)


# ---------------------------------------------------------------------- masks
def mask_key(name: str) -> str:
    """Wire key of mask ``name``'s change: ``mask-<name>@flips``."""
    return MASK_PREFIX + name + FLIPS_SUFFIX


def encode_mask_update(name: str, previous: np.ndarray, current: np.ndarray) -> dict[str, np.ndarray]:
    """The change from ``previous`` to ``current``: the flipped positions as a position set.

    The codec's position encoder picks the smallest form (uint32 indices when few flip,
    packed bits when many, zlib over either when that is smaller still).
    """
    return {mask_key(name): encode_positions(previous != current)}


def decode_mask(name: str, arrays: Mapping[str, np.ndarray], previous: np.ndarray) -> np.ndarray:
    """Read mask ``name`` from decoded arrays as a change of ``previous``.

    Raises
    ------
    CodecError
        If the change is missing or does not fit ``previous``.

    """
    blob = arrays.get(mask_key(name))
    if blob is None:
        raise CodecError(f"mask '{name}' missing from the message")
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise CodecError(f"mask '{name}' change is {blob.dtype}{blob.shape}, not a position set")
    mask = previous.copy()
    flips = decode_positions(blob, previous.size)
    mask[flips] = ~mask[flips]
    return mask


#: ``(name, within, initial)`` per mask, in decoding order: ``within`` is None (the
#: mask covers every position) or the name of an earlier mask whose False positions
#: are this mask's domain (it is False elsewhere); ``initial`` is its value before
#: round 1, against which a full message sends it.
MaskSpec = tuple[tuple[str, str | None, bool], ...]


def encode_masks(
    spec: MaskSpec, current: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Wire arrays of the masks ``current`` as changes of ``previous`` (None: initial)."""
    out: dict[str, np.ndarray] = {}
    for name, within, initial in spec:
        mask = current[name]
        before = np.full(mask.size, initial) if previous is None else previous[name]
        if within is None:
            out.update(encode_mask_update(name, before, mask))
            continue
        outside = current[within]
        if np.any(mask & outside):
            raise ValueError(f"mask '{name}' is set outside its domain ~{within}")
        domain = np.flatnonzero(~outside)
        out.update(encode_mask_update(name, before[domain], mask[domain]))
    return out


def decode_masks(
    spec: MaskSpec,
    arrays: Mapping[str, np.ndarray],
    size: int,
    previous: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_masks`.

    Raises
    ------
    CodecError
        If a mask is missing or does not fit.

    """
    masks: dict[str, np.ndarray] = {}
    for name, within, initial in spec:
        before = np.full(size, initial) if previous is None else previous[name]
        if within is None:
            masks[name] = decode_mask(name, arrays, before)
            continue
        domain = np.flatnonzero(~masks[within])
        mask = np.zeros(size, dtype=bool)
        mask[domain] = decode_mask(name, arrays, before[domain])
        masks[name] = mask
    return masks


def synced_positions(masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """The positions clients upload: the union of the masks."""
    return np.logical_or.reduce(list(masks.values()))


def mask_keys(names: Iterable[str]) -> set[str]:
    """Every wire key a mask of these names may use."""
    return {mask_key(n) for n in names}


# ---------------------------------------------------------------------- sizes
def record_size_signature(record: ArrayRecord) -> tuple[Any, ...]:
    """Everything the serialized sizes of an ArrayRecord's objects depend on.

    Each array's key, dtype, shape, serialization type and byte length, and which of the
    data chunks Flower cuts (:data:`ARRAY_CHUNK_SIZE` bytes) are byte-identical: Flower
    sends an object once per message, so equal chunks (or arrays) are counted once, and
    an array's header lists its chunks by their index among its distinct ones. Values
    and object ids (fixed-length hashes) change no size. Two records with the same
    signature serialize to objects of the same sizes.
    """
    classes: dict[int, list[tuple[np.ndarray, int]]] = {}
    pattern: list[int] = []
    meta = []
    for key, array in record.items():
        data = np.frombuffer(array.data, dtype=np.uint8)
        meta.append((key, array.dtype, tuple(array.shape), array.stype, data.size))
        for start in range(0, data.size, ARRAY_CHUNK_SIZE):
            chunk = data[start : start + ARRAY_CHUNK_SIZE]
            same = classes.setdefault(chunk.size, [])
            # A few edge bytes rule out almost every pair before a full comparison.
            match = next(
                (
                    cid
                    for rep, cid in same
                    if rep[:64].tobytes() == chunk[:64].tobytes()
                    and rep[-64:].tobytes() == chunk[-64:].tobytes()
                    and np.array_equal(rep, chunk)
                ),
                None,
            )
            if match is None:
                match = sum(len(group) for group in classes.values())
                same.append((chunk, match))
            pattern.append(match)
        pattern.append(-1)  # end of this array's chunks
    return tuple(meta), tuple(pattern)


# ---------------------------------------------------------------------- strategy
class PartialSyncStrategy(FedleanStrategy):
    """Base of the freezing strategies: per-node full/partial messages, masks, bytes.

    Subclasses declare their masks (:attr:`mask_spec`), add reply arrays
    (:meth:`extra_reply_arrays`) and decide the next round's masks from the aggregated
    update (:meth:`update_state`).

    Parameters
    ----------
    freezable_keys : Sequence[str] | None (default: None)
        Names of the trainable tensors (the builder passes the model's
        ``named_parameters``); None: every float array but BatchNorm statistics.
    measure_dense : bool (default: True)
        Also measure what FedAvg's messages (whole model both ways, same codec) would
        have cost this round, for the ``bytes_saved`` field.
    **kwargs
        Passed to :class:`fl_strategies.base.FedleanStrategy`.

    """

    #: Masks sent to clients; clients upload the positions of their union.
    mask_spec: MaskSpec = (("active", None, True),)
    #: The round's payload cache and the caches derived from the model and the masks are
    #: rebuilt, not checkpointed.
    checkpoint_exclude = ("_payloads", "_payloads_round", "_flat_cache", "_sync_cache", "_dense_cache")

    def __init__(
        self, freezable_keys: Sequence[str] | None = None, measure_dense: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.freezable_keys = list(freezable_keys) if freezable_keys is not None else None
        self.measure_dense = measure_dense
        self.layout: FlatLayout | None = None
        self.buffer_keys: list[str] = []
        #: Masks clients use in the round being configured.
        self.masks: dict[str, np.ndarray] = {}
        #: Masks of the previous round (what a node that took part in it holds).
        self.known_masks: dict[str, np.ndarray] | None = None
        #: Node id -> last round in which its reply was aggregated.
        self.node_round: dict[int, int] = {}
        self.round_stats: dict[int, dict[str, float]] = {}
        self.dense_bytes: dict[int, dict[str, int]] = {}
        # The round's two possible training payloads (full: True, partial: False), built
        # once each and shared by every node that gets that kind.
        self._payloads: dict[bool, RecordDict] = {}
        self._payloads_round = 0
        # Derived once per object they derive from (compared by identity: the global model
        # and the masks are replaced, never changed in place): (model, flat vector),
        # (masks, (union, its positions)), and the dense model record's sizes
        # (:meth:`dense_message_bytes`).
        self._flat_cache: tuple[dict[str, np.ndarray], np.ndarray] | None = None
        self._sync_cache: tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
        self._dense_cache: tuple[tuple[Any, ...], ArrayRecord, dict[str, int]] | None = None

    # ------------------------------------------------------------ subclass hooks
    def init_state(self, size: int) -> None:
        """Allocate the method's per-scalar state (default: masks at their initial values)."""
        self.masks = {name: np.full(size, initial) for name, _, initial in self.mask_spec}

    def extra_reply_arrays(self) -> dict[str, tuple[int, ...]]:
        """Method-specific reply arrays and shapes for this round (default: none)."""
        return {}

    def update_state(
        self, server_round: int, delta: np.ndarray, replies: list[ParsedReply]
    ) -> dict[str, float]:
        """Set :attr:`masks` for the next round; return per-round metrics."""
        raise NotImplementedError

    # ------------------------------------------------------------ helpers
    def _ensure_state(self) -> FlatLayout:
        if self.layout is None:
            names = freezable_names(self.global_arrays, self.freezable_keys)
            reserved = (
                {VALUES_KEY} | mask_keys(n for n, _, _ in self.mask_spec) | set(self.extra_reply_arrays())
            )
            clash = sorted(reserved & set(self.global_arrays))
            if clash:
                raise ValueError(f"model array names clash with the protocol keys: {clash}")
            self.layout = FlatLayout({n: self.global_arrays[n].shape for n in names})
            self.buffer_keys = [k for k in self.global_arrays if k not in set(names)]
            self.init_state(self.layout.size)
        return self.layout

    #: The round each node last synced; a node without one gets a full message.
    node_state_attributes = ("node_round",)

    def _sync(self) -> tuple[np.ndarray, np.ndarray]:
        cache = self._sync_cache
        if cache is None or cache[0] is not self.masks:
            union = synced_positions(self.masks)
            cache = self._sync_cache = (self.masks, (union, np.flatnonzero(union)))
        return cache[1]

    @property
    def sync_mask(self) -> np.ndarray:
        """Positions clients upload this round (boolean; computed once per mask set)."""
        return self._sync()[0]

    @property
    def sync_positions(self) -> np.ndarray:
        """The same positions as flat indices, in flat order."""
        return self._sync()[1]

    def flat_global(self) -> np.ndarray:
        """The global model's freezable arrays as one flat vector, made once per model.

        Read-only by convention: callers copy before changing it.
        """
        layout = self._ensure_state()
        cache = self._flat_cache
        if cache is None or cache[0] is not self.global_arrays:
            cache = self._flat_cache = (self.global_arrays, layout.flatten(self.global_arrays))
        return cache[1]

    def is_fresh(self, node_id: int, server_round: int) -> bool:
        """Whether a node holds last round's state, so a partial message suffices."""
        return (
            self.known_masks is not None
            and server_round > 1
            and self.node_round.get(node_id) == server_round - 1
        )

    def _full_arrays(self) -> ArrayRecord:
        masks = encode_masks(self.mask_spec, self.masks)
        return encode_arrays({**self.global_arrays, **masks}, encoding=self.encoding)

    def _partial_arrays(self) -> ArrayRecord:
        assert self.layout is not None and self.known_masks is not None
        known = np.flatnonzero(synced_positions(self.known_masks))
        arrays: dict[str, np.ndarray] = {VALUES_KEY: self.flat_global()[known]}
        arrays.update({k: self.global_arrays[k] for k in self.buffer_keys})
        arrays.update(encode_masks(self.mask_spec, self.masks, self.known_masks))
        return encode_arrays(arrays, encoding=self.encoding)

    # ------------------------------------------------------------ base hooks
    def encode_global(self, server_round: int, arrays: dict[str, np.ndarray]) -> ArrayRecord:
        """Nothing shared: every training payload is per node (:meth:`node_payload`)."""
        self._ensure_state()
        return ArrayRecord()

    def node_payload(
        self,
        server_round: int,
        node_id: int,
        message_type: str,
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> RecordDict | None:
        """A partial message for a fresh node, else a full one (one object of each per round)."""
        if message_type != MessageType.TRAIN:
            return None
        full = not self.is_fresh(node_id, server_round)
        if self._payloads_round != server_round:
            self._payloads, self._payloads_round = {}, server_round
        if full not in self._payloads:
            node_config = ConfigRecord(dict(config.items()))
            node_config[SYNC_FULL_KEY] = full
            node_config[SYNC_BASE_ROUND_KEY] = server_round - 1
            record = self._full_arrays() if full else self._partial_arrays()
            self._payloads[full] = RecordDict({ARRAYS_KEY: record, CONFIG_KEY: node_config})
        return self._payloads[full]

    # ------------------------------------------------------------ Flower's methods
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As the base (per-node full/partial payloads); then the round's freezing stats."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        node_ids = [m.metadata.dst_node_id for m in messages]
        stats = self.round_stats.setdefault(server_round, {})
        stats["full_messages"] = sum(1 for n in node_ids if not self.is_fresh(n, server_round))
        partial = self._payloads.get(False) if self._payloads_round == server_round else None
        if partial is not None:
            # Serialized payload of the masks in one partial message (npy bytes).
            record = partial.array_records[ARRAYS_KEY]
            stats["mask_bytes"] = sum(len(record[k].data) for k in record if k.startswith(MASK_PREFIX))
        if self.measure_dense:
            dense_config = ConfigRecord(
                {"server-round": server_round, RUN_CONFIG_KEY: self._client_config_json}
            )
            down = self.dense_message_bytes({CONFIG_KEY: dense_config}, node_ids[0])
            self.dense_bytes.setdefault(server_round, {})["down"] = len(messages) * down
        return messages

    def dense_message_bytes(self, records: Mapping[str, Any], node_id: int) -> int:
        """Serialized size of a FedAvg message: the whole model (downlink codec) and ``records``.

        Exact, without serializing the model every round: a serialized object's size
        depends only on its own fields, and an encoded model's on each array's key, dtype,
        shape, serialization type and byte length (its values and object ids, 64 hex
        digits each, do not change any size). So the sizes of the first such record's
        objects are measured once and reused while that signature holds; the message
        around them (config or metrics, metadata) is serialized anew each time.
        """
        record = self.downlink_record()
        signature = record_size_signature(record)
        if self._dense_cache is None or self._dense_cache[0] != signature:
            with no_object_id_recompute():
                sizes = {oid: len(obj.deflate()) for oid, obj in nested_objects(record).items()}
            self._dense_cache = (signature, record, sizes)
        _, stand_in, sizes = self._dense_cache
        message = Message(
            content=RecordDict({ARRAYS_KEY: stand_in, **records}),
            message_type=MessageType.TRAIN,
            dst_node_id=node_id,
        )
        return messages_bytes([message], known_sizes=sizes)

    def expected_reply_arrays(self, server_round: int) -> dict[str, tuple[int, ...]]:
        """Synced values, the non-freezable arrays whole, and the method's extras."""
        expected: dict[str, tuple[int, ...]] = {VALUES_KEY: (int(self.sync_positions.size),)}
        expected.update({k: self.global_arrays[k].shape for k in self.buffer_keys})
        expected.update(self.extra_reply_arrays())
        return expected

    def parse_train_reply(self, server_round: int, message: Message) -> ParsedReply:
        """The base checks plus: synced values are floats, extras are booleans."""
        parsed = super().parse_train_reply(server_round, message)
        if parsed.arrays[VALUES_KEY].dtype.kind != "f":
            raise ReplyError(f"'{VALUES_KEY}' has dtype {parsed.arrays[VALUES_KEY].dtype}, expected float")
        for name in self.extra_reply_arrays():
            if parsed.arrays[name].dtype != bool:
                raise ReplyError(
                    f"'{name}' has dtype {parsed.arrays[name].dtype}, expected bool (packed bits)"
                )
        return parsed

    def update_reference(self, server_round: int, reply: ParsedReply) -> dict[str, np.ndarray]:
        """The global values at the synced positions and the non-freezable arrays."""
        reference = {
            k: self.global_arrays[k] for k in self.buffer_keys if self.global_arrays[k].dtype.kind == "f"
        }
        reference[VALUES_KEY] = self.flat_global()[self.sync_positions]
        return reference

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """Weighted mean of the synced values and the non-freezable arrays.

        Positions not synced keep their global value. Then :meth:`update_state`
        decides the next round's masks from the update of the synced positions.
        """
        layout = self._ensure_state()
        weights = [r.weight for r in replies]
        keys = [VALUES_KEY, *self.buffer_keys]
        merged = weighted_mean([{k: r.arrays[k] for k in keys} for r in replies], weights)
        old_flat = self.flat_global()
        new_flat = old_flat.copy()
        sync, positions = self.sync_mask, self.sync_positions
        new_flat[positions] = merged[VALUES_KEY].astype(old_flat.dtype)
        # Unsynced positions keep their value, so their update is exactly 0.
        delta = np.zeros(old_flat.shape, np.float32)
        delta[positions] = (
            new_flat[positions].astype(np.float64) - old_flat[positions].astype(np.float64)
        ).astype(np.float32)
        self.known_masks = {name: mask.copy() for name, mask in self.masks.items()}
        stats = self.update_state(server_round, delta, replies)
        self.round_stats.setdefault(server_round, {}).update(
            {"synced_fraction": float(sync.mean()) if sync.size else 1.0, **stats}
        )
        for reply in replies:
            self.node_round[reply.node_id] = server_round
        new_global = dict(self.global_arrays)
        new_global.update(layout.unflatten(new_flat, like=self.global_arrays))
        new_global.update({k: merged[k] for k in self.buffer_keys})
        return new_global

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """As the base; a round without valid replies leaves the masks as they were."""
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if self.measure_dense:
            aggregated = [m for m in replies if self.node_round.get(m.metadata.src_node_id) == server_round]
            dense = self.dense_bytes.setdefault(server_round, {})
            dense["up"] = 0
            if aggregated:
                # FedAvg's reply: a whole trained model (the new global one stands in
                # for it, through the downlink codec the evaluation shares) and the same
                # metrics.
                first = aggregated[0].content.metric_records[METRICS_KEY]
                dense["up"] = len(aggregated) * self.dense_message_bytes(
                    {METRICS_KEY: MetricRecord(dict(first.items()))}, aggregated[0].metadata.src_node_id
                )
            # A dropped reply would have cost the same under FedAvg: count it as it was.
            dense["up"] += sum(
                message_bytes(m)
                for m in replies
                if self.node_round.get(m.metadata.src_node_id) != server_round
            )
        return arrays, metrics

    def method_metrics(self, server_round: int) -> dict[str, float]:
        """Freezing statistics and the bytes saved against FedAvg's whole-model messages.

        ``bytes_saved`` = (what the same round's messages would measure carrying the
        whole model through the same codec, both ways) - (measured bytes up + down).
        """
        out = dict(self.round_stats.get(server_round, {}))
        dense = self.dense_bytes.get(server_round)
        if dense is not None and "down" in dense:
            counts = self.bytes.get(server_round, {})
            actual = int(counts.get("bytes_down", 0)) + int(counts.get("bytes_up", 0))
            out["dense_equiv_bytes"] = int(dense.get("down", 0) + dense.get("up", 0))
            out["bytes_saved"] = out["dense_equiv_bytes"] - actual
        return out

    def summary_fields(self) -> dict[str, Any]:
        """Totals of the dense-equivalent bytes and of the savings."""
        saved = [self.method_metrics(r).get("bytes_saved") for r in sorted(self.dense_bytes)]
        dense = [self.method_metrics(r).get("dense_equiv_bytes") for r in sorted(self.dense_bytes)]
        return {
            "freezable_params": self.layout.size if self.layout else None,
            "total_bytes_saved": int(sum(s for s in saved if s is not None)),
            "total_dense_equiv_bytes": int(sum(d for d in dense if d is not None)),
        }


class StabilityFreezingStrategy(PartialSyncStrategy):
    """Partial sync whose freezing is judged by the stepping rate of update EMAs.

    Shared by GWPF and APF: both keep, per scalar, ``ema``/``abs_ema`` of the
    aggregated update (decay ``alpha``) and compare ``|ema| / (abs_ema + eps)`` with
    ``threshold``.

    Parameters
    ----------
    alpha : float
        EMA decay, in [0, 1).
    threshold : float
        Stepping-rate threshold, > 0.
    tighten_at : float
        Frozen fraction above which the threshold is tightened, in [0, 1].
    eps : float
        Added to ``abs_ema`` in the stepping rate.
    **kwargs
        Passed to :class:`PartialSyncStrategy`.

    """

    def __init__(self, alpha: float, threshold: float, tighten_at: float, eps: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if not 0.0 <= tighten_at <= 1.0:
            raise ValueError(f"tighten_at must be in [0, 1], got {tighten_at}")
        self.alpha = float(alpha)
        self.threshold = float(threshold)
        self.initial_threshold = float(threshold)
        self.tighten_at = float(tighten_at)
        self.eps = float(eps)
        self.ema = np.zeros(0, np.float32)
        self.abs_ema = np.zeros(0, np.float32)

    def init_state(self, size: int) -> None:
        """Masks at their initial values, EMAs at zero."""
        super().init_state(size)
        self.ema = np.zeros(size, np.float32)
        self.abs_ema = np.zeros(size, np.float32)
