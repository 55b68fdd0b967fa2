"""FedSparsify-Global: FedAvg, then progressive global magnitude pruning at the server.

Stripelis et al., "Federated Progressive Sparsification (Purge-Merge-Tune)+", 2022.
Each round the server averages the clients' models, prunes the average to the
round's target sparsity ``s_t`` (:func:`fl_strategies.pruning.sparsity_at`) by
global unstructured magnitude pruning, and sends the pruned model on. Clients
train with the global mask enforced, so pruned weights stay exactly zero.

**Known-mask encoding.** Server and client both hold the keep mask, so training
messages carry values only at the kept positions, no per-message position set
(:func:`fl_strategies.codec.encode_known_values`, key ``known-values``). Each mask the
server makes gets an id (``mask-id``; 0 is the all-keep mask every node knows). A
training message says which mask its values follow and which mask its change is
against (``mask-base``); the change travels (``prune-mask@flips``, a position set over
the prunable positions) only when the node's mask differs from the current one. The
server sends a change against a mask only if the node confirmed holding it with a
valid reply made with it; otherwise (new node, a dropped reply, a server or client
restart) against mask 0, i.e. the whole mask. A client that does not hold the base
mask fails the round with a one-line error, and gets the whole mask next time.
Replies carry the values at the same positions, XOR-coded against the values the
client received when that is smaller, and echo ``mask-id``.

This module also holds the base that the other server-side pruning methods
(:mod:`.fedsparsify_local`, :mod:`.oneshot`, :mod:`.random_prune`,
:mod:`.prune_at_init`) subclass: they change only :meth:`target_sparsity`,
:meth:`select_keep`, :meth:`initial_mask` or the reply format.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from .base import FedleanStrategy, ParsedReply, ReplyError, check_reply_array
from .codec import (
    CodecError,
    decode_arrays,
    decode_known_values,
    encode_arrays,
    encode_known_values,
    encode_positions,
)
from .flwr_compat import log, nested_objects, no_object_id_recompute
from .pruning import (
    PRUNE_SCOPES,
    Mask,
    apply_mask,
    flat_mask,
    full_mask,
    gather_known,
    known_count,
    known_names,
    magnitude_prune,
    mask_counts,
    prunable_names,
    scatter_known,
    sparsity_at,
    target_count,
)
from .wire import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY

# ConfigRecord entries (server -> client).
PRUNE_SCOPE_KEY = "prune-scope"  # str: which tensors are prunable (weights | all)
MASKED_KEY = "mask-from-zeros"  # bool: anything is pruned (evaluation messages: the zeros are the mask)
LOCAL_SPARSITY_KEY = "local-sparsity"  # float: FedSparsify-Local's per-round target
SCORE_KEY = "prune-score"  # str: round-0 request for SNIP/GraSP scores
SCORE_BATCHES_KEY = "score-batches"  # int: batches to score on (0 = all local data)
GRASP_TEMPERATURE_KEY = "grasp-temperature"  # float: softmax temperature of GraSP
MASK_ID_KEY = "mask-id"  # int: the mask the message's known values follow (also echoed up)
MASK_BASE_KEY = "mask-base"  # int: the mask the message's mask change applies to (0 = all-keep)
# ArrayRecord entries (both directions).
KNOWN_VALUES_KEY = "known-values"  # uint8: float32 values at the known positions
MASK_FLIPS_KEY = "prune-mask@flips"  # uint8 position set: mask change over the prunable positions
LOCAL_MASK_KEY = "local-mask@positions"  # uint8 position set: Local's mask within the global one
# RecordDict entries (client -> server) besides the model.
SCORES_KEY = "scores"  # ArrayRecord of importance scores (round 0 of SNIP/GraSP)
#: The mask every node holds without being told: nothing pruned.
FULL_MASK_ID = 0

MB = 1e6

#: ``final arrays -> summary fields``; supplied by ``simulations`` (e.g. CPU
#: inference throughput, which needs the model class that ``fl_strategies`` lacks).
FinalModelFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, Any]]


def scatter_known_checked(
    values: np.ndarray, shapes: Mapping[str, tuple[int, ...]], keep: Mask
) -> dict[str, np.ndarray]:
    """:func:`fl_strategies.pruning.scatter_known`, a count mismatch as :class:`ReplyError`."""
    try:
        return scatter_known(values, shapes, keep)
    except ValueError as exc:
        raise ReplyError(str(exc)) from exc


def record_bytes(record: ArrayRecord) -> int:
    """Serialized size of one ArrayRecord, as Flower puts it on the wire."""
    with no_object_id_recompute():
        return sum(len(obj.deflate()) for obj in nested_objects(record).values())


class FedSparsifyGlobal(FedleanStrategy):
    """FedSparsify-Global: FedAvg plus progressive global magnitude pruning.

    Parameters
    ----------
    num_rounds : int
        Rounds of the run; the default end of the schedule (``T``).
    s_f : float (default: 0.9)
        Final sparsity over the prunable tensors.
    s_0 : float (default: 0.0)
        Initial sparsity.
    t_0 : int (default: 1)
        First pruning round.
    t_end : int | None (default: None)
        Round at which ``s_f`` is reached (``T`` of eq. 1); ``None`` = ``num_rounds``.
    frequency : int (default: 1)
        Prune every ``frequency`` rounds.
    exponent : float (default: 3.0)
        Exponent of the schedule.
    prune_scope : str (default: "weights")
        ``weights``: Conv/Linear weights (ndim >= 2); ``all``: every float parameter
        (the reference's choice, biases and BatchNorm affine parameters included).
    seed : int (default: 0)
        Seed of the method's own randomness (random pruning, scoring client).
    final_model_fn : FinalModelFn | None (default: None)
        Called once on the final model; its fields go into ``summary.json``.
    **kwargs
        Passed to :class:`fl_strategies.base.FedleanStrategy`.

    """

    method_name = "fedsparsify_global"

    def __init__(
        self,
        num_rounds: int,
        s_f: float = 0.9,
        s_0: float = 0.0,
        t_0: int = 1,
        t_end: int | None = None,
        frequency: int = 1,
        exponent: float = 3.0,
        prune_scope: str = "weights",
        seed: int = 0,
        final_model_fn: FinalModelFn | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= s_0 <= s_f < 1.0:
            raise ValueError(f"need 0 <= s_0 <= s_f < 1, got s_0={s_0}, s_f={s_f}")
        if prune_scope not in PRUNE_SCOPES:
            raise ValueError(f"prune_scope must be one of {PRUNE_SCOPES}, got {prune_scope!r}")
        self.num_rounds = int(num_rounds)
        self.s_f, self.s_0 = float(s_f), float(s_0)
        self.t_0 = int(t_0)
        self.t_end = int(t_end) if t_end is not None else self.num_rounds
        self.frequency = int(frequency)
        self.exponent = float(exponent)
        self.prune_scope = prune_scope
        self.seed = int(seed)
        self.final_model_fn = final_model_fn
        # Validates t_0/T/frequency/exponent once, before any round runs.
        sparsity_at(self.t_0, self.s_0, self.s_f, self.t_0, self.t_end, self.frequency, self.exponent)
        self.keep: Mask = {}
        self.mask_bytes: dict[int, int] = defaultdict(int)
        self.targets: dict[int, float] = {}
        # Known-mask protocol state (plain values, checkpointable): the id of ``keep``,
        # the previous mask and its id, the mask id each node confirmed holding, and
        # the id sent to each node this round.
        self.mask_id = FULL_MASK_ID
        self.identified_keep: Mask = {}
        self.previous_keep: Mask = {}
        self.previous_mask_id = FULL_MASK_ID
        self.node_mask_ids: dict[int, int] = {}
        self.sent_mask_ids: dict[int, int] = {}
        # The paper's accounting (nonzeros x 32 bits + 1 bit per parameter per mask sent).
        self.paper_bytes: dict[int, int] = defaultdict(int)
        self._round_payloads: dict[int, RecordDict] = {}
        # Known values of the global model at a mask, by mask id: the XOR reference of
        # every reply that follows that mask (the model it was gathered from, kept to
        # tell when the model changes).
        self._references: dict[int, tuple[dict[str, np.ndarray], np.ndarray]] = {}

    #: The round's payload and reference caches (built again on demand) stay out of checkpoints.
    checkpoint_exclude = ("_round_payloads", "_references")

    #: The mask id each node holds and was last sent; a node without one gets the whole mask.
    node_state_attributes = ("node_mask_ids", "sent_mask_ids")

    # ------------------------------------------------------------ the method
    def target_sparsity(self, server_round: int) -> float:
        """Sparsity the global model has after round ``server_round`` (eq. 1)."""
        return sparsity_at(
            server_round, self.s_0, self.s_f, self.t_0, self.t_end, self.frequency, self.exponent
        )

    def select_keep(self, server_round: int, arrays: Mapping[str, np.ndarray], sparsity: float) -> Mask:
        """New keep mask at ``sparsity`` (default: global magnitude pruning)."""
        return magnitude_prune(arrays, self.keep, sparsity)

    def initial_mask(
        self, grid: Grid, arrays: dict[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]:
        """Mask the initial model before round 1 (default: nothing is pruned)."""
        return arrays

    @property
    def is_masked(self) -> bool:
        """Whether any prunable position is pruned."""
        return mask_counts(self.keep)[0] > 0

    # ------------------------------------------------------------------ hooks
    def add_train_config(self, server_round: int, config: ConfigRecord) -> None:
        """Tell clients the prunable scope and whether anything is pruned; name the mask."""
        config[PRUNE_SCOPE_KEY] = self.prune_scope
        config[MASKED_KEY] = self.is_masked
        self._identify_mask()
        self._round_payloads = {}

    # -------------------------------------------------------- known-mask wire
    def _identify_mask(self) -> None:
        """Give ``keep`` a new id if it changed since it was last identified."""
        if not self.identified_keep and all(m.all() for m in self.keep.values()):
            # Nothing pruned yet: still mask 0, which every node holds untold.
            self.identified_keep = {n: m.copy() for n, m in self.keep.items()}
            return
        same = set(self.keep) == set(self.identified_keep) and all(
            np.array_equal(self.keep[n], self.identified_keep[n]) for n in self.keep
        )
        if not same:
            if self.identified_keep:
                self.previous_keep, self.previous_mask_id = self.identified_keep, self.mask_id
            self.mask_id += 1
            self.identified_keep = {n: m.copy() for n, m in self.keep.items()}

    def _mask_with_id(self, mask_id: int) -> Mask | None:
        """The mask of an id the server still holds (None if it holds it no more)."""
        if mask_id == FULL_MASK_ID:
            return {n: np.ones_like(m, dtype=bool) for n, m in self.keep.items()}
        if mask_id == self.mask_id:
            return self.keep
        if mask_id == self.previous_mask_id and self.previous_keep:
            return self.previous_keep
        return None

    def _known_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: self.global_arrays[n].shape for n in known_names(self.global_arrays)}

    def encode_global(self, server_round: int, arrays: dict[str, np.ndarray]) -> ArrayRecord:
        """Nothing shared: every training message is made per node (:meth:`node_payload`)."""
        return ArrayRecord()

    def node_payload(
        self,
        server_round: int,
        node_id: int,
        message_type: str,
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> RecordDict | None:
        """Known values, plus the mask change against the mask the node confirmed holding."""
        if message_type != MessageType.TRAIN:
            return None
        # Popped: the node holds the mask sent now only once a valid reply confirms it
        # (a failed or lost reply leaves it unknown, and the next message sends it whole).
        held = self.node_mask_ids.pop(node_id, FULL_MASK_ID)
        if held != self.mask_id and self._mask_with_id(held) is None:
            held = FULL_MASK_ID
        self.sent_mask_ids[node_id] = self.mask_id
        if held not in self._round_payloads:
            self._round_payloads[held] = self._known_payload(held, config)
        content = self._round_payloads[held]
        self.paper_bytes[server_round] += self._paper_message_bytes(self.global_arrays, self.is_masked)
        if MASK_FLIPS_KEY in content.array_records[ARRAYS_KEY]:
            self.mask_bytes[server_round] += record_bytes(
                ArrayRecord({MASK_FLIPS_KEY: content.array_records[ARRAYS_KEY][MASK_FLIPS_KEY]})
            )
        return content

    def _known_payload(self, base: int, config: ConfigRecord) -> RecordDict:
        """One training message for every node holding mask ``base`` (serialised once)."""
        names = known_names(self.global_arrays)
        record = encode_arrays(
            {k: v for k, v in self.global_arrays.items() if k not in names}, encoding=self.encoding
        )
        values = gather_known(self.global_arrays, self.keep, names)
        record[KNOWN_VALUES_KEY] = Array(encode_known_values(values))
        if base != self.mask_id:
            base_mask = self._mask_with_id(base)
            assert base_mask is not None
            flips = flat_mask(base_mask) != flat_mask(self.keep)
            record[MASK_FLIPS_KEY] = Array(encode_positions(flips, fast=True))
        message_config = ConfigRecord(dict(config))
        message_config[MASK_ID_KEY] = self.mask_id
        message_config[MASK_BASE_KEY] = base
        return RecordDict({ARRAYS_KEY: record, CONFIG_KEY: message_config})

    def _paper_message_bytes(self, arrays: Mapping[str, np.ndarray], with_mask: bool) -> int:
        """One message in the paper's accounting: 4 bytes per nonzero, 1 bit per parameter per mask."""
        floats = [v for v in arrays.values() if np.issubdtype(v.dtype, np.floating)]
        nonzeros = sum(int(np.count_nonzero(v)) for v in floats)
        params = sum(int(v.size) for v in floats)
        return 4 * nonzeros + ((params + 7) // 8 if with_mask else 0)

    def reply_mask(self, server_round: int, message: Message) -> tuple[int, Mask]:
        """The mask a training reply's values follow: the one sent to its node this round."""
        node = message.metadata.src_node_id
        sent = self.sent_mask_ids.get(node)
        if sent is None:
            raise ReplyError("no training message was sent to this node")
        reply_config = message.content.config_records.get(CONFIG_KEY)
        claimed = reply_config.get(MASK_ID_KEY) if reply_config is not None else None
        if claimed != sent:
            raise ReplyError(f"reply follows mask {claimed!r}, the node was sent mask {sent}")
        mask = self._mask_with_id(sent)
        if mask is None:
            raise ReplyError(f"mask {sent} is no longer held")
        return sent, mask

    def decode_known_reply(
        self,
        message: Message,
        keep: Mask,
        extra_keys: tuple[str, ...] = (),
        mask_id: int | None = None,
    ) -> dict[str, np.ndarray]:
        """A reply's model: known values at ``keep`` (count checked first), the rest by codec.

        ``mask_id``: the id of ``keep`` when it is a mask the server made (not a
        client's own), so that the reference values are gathered once per model and mask.
        """
        content = message.content
        if ARRAYS_KEY not in content.array_records:
            raise ReplyError(f"no ArrayRecord '{ARRAYS_KEY}'")
        record = content.array_records[ARRAYS_KEY]
        shapes = self._known_shapes()
        others = {k: v.shape for k, v in self.global_arrays.items() if k not in shapes}
        extra = set(extra_keys)
        if KNOWN_VALUES_KEY not in record:
            raise ReplyError(f"array '{KNOWN_VALUES_KEY}' missing")
        try:
            rest = decode_arrays(
                ArrayRecord({k: v for k, v in record.items() if k not in {KNOWN_VALUES_KEY, *extra}}),
                others,
            )
        except (CodecError, ValueError, TypeError) as exc:
            raise ReplyError(f"undecodable payload: {exc}") from exc
        if set(rest) != set(others):
            raise ReplyError(f"array keys differ from the model's: {sorted(set(rest) ^ set(others))[:3]}")
        names = list(shapes)
        count = known_count(shapes, keep)
        reference = self._reference(keep, names, mask_id)
        blob = record[KNOWN_VALUES_KEY].numpy()
        try:
            values = decode_known_values(blob, count, np.float32, reference)
        except CodecError as exc:
            raise ReplyError(f"'{KNOWN_VALUES_KEY}': {exc}") from exc
        arrays = {**rest, **scatter_known_checked(values, shapes, keep)}
        for name, reference_value in self.global_arrays.items():
            check_reply_array(name, arrays[name], reference_value.shape, reference_value.dtype.kind)
        return {name: arrays[name] for name in self.global_arrays}

    def _reference(self, keep: Mask, names: list[str], mask_id: int | None) -> np.ndarray:
        """The global model's known values at ``keep`` (cached by ``mask_id`` when given)."""
        if mask_id is None:
            return gather_known(self.global_arrays, keep, names)
        cached = self._references.get(mask_id)
        if cached is None or cached[0] is not self.global_arrays:
            cached = (self.global_arrays, gather_known(self.global_arrays, keep, names))
            self._references = {mask_id: cached}
        return cached[1]

    def parse_train_reply(self, server_round: int, message: Message) -> ParsedReply:
        """Validate a reply: the mask it follows, then its known values and other arrays."""
        num_examples = self._num_examples(message.content)
        mask_id, keep = self.reply_mask(server_round, message)
        arrays = self.decode_known_reply(message, keep, mask_id=mask_id)
        self.node_mask_ids[message.metadata.src_node_id] = mask_id
        self.paper_bytes[server_round] += self._paper_message_bytes(arrays, False)
        return ParsedReply(
            node_id=message.metadata.src_node_id,
            num_examples=num_examples,
            arrays=arrays,
            metrics=message.content.metric_records[METRICS_KEY],
            content=message.content,
        )

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """FedAvg, then prune the average to this round's target sparsity."""
        merged = apply_mask(super().aggregate_replies(server_round, replies), self.keep)
        return self.prune(server_round, merged)

    def prune(self, server_round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Prune ``arrays`` to this round's target (never below the current sparsity)."""
        target = self.target_sparsity(server_round)
        self.targets[server_round] = target
        pruned, total = mask_counts(self.keep)
        if target_count(total, target) > pruned:
            self.keep = self.select_keep(server_round, arrays, target)
        return apply_mask(arrays, self.keep)

    def method_metrics(self, server_round: int) -> dict[str, float]:
        """Sparsity over the prunable tensors, nonzero parameters, mask bytes."""
        pruned, total = mask_counts(self.keep)
        return {
            "sparsity": pruned / total if total else 0.0,
            "target_sparsity": self.targets.get(server_round, self.target_sparsity(server_round)),
            "nonzero_params": self._nonzero_params(),
            "mask_bytes": int(self.mask_bytes.get(server_round, 0)),
            "paper_formula_bytes": int(self.paper_bytes.get(server_round, 0)),
        }

    def summary_fields(self) -> dict[str, Any]:
        """Final sparsity, model sizes dense vs codec-encoded, and ``final_model_fn``."""
        arrays = self.global_arrays
        pruned, total = mask_counts(self.keep)
        fields: dict[str, Any] = {
            "prune_scope": self.prune_scope,
            "s_f": self.s_f,
            "final_sparsity": pruned / total if total else 0.0,
            "prunable_params": total,
            "final_nonzero_params": self._nonzero_params(),
            "final_model_dense_mb": record_bytes(encode_arrays(arrays, encoding="dense")) / MB,
            "final_model_sparse_mb": record_bytes(encode_arrays(arrays, encoding="auto")) / MB,
            "total_mask_mb": sum(self.mask_bytes.values()) / MB,
            "paper_formula_bytes": int(sum(self.paper_bytes.values())),
        }
        if self.final_model_fn is not None:
            fields.update(self.final_model_fn(arrays))
        return fields

    def summary(self) -> None:
        """Log the schedule."""
        log(
            INFO,
            "\t├──> pruning: s_0=%s s_f=%s t_0=%s T=%s f=%s n=%s scope=%s",
            self.s_0,
            self.s_f,
            self.t_0,
            self.t_end,
            self.frequency,
            self.exponent,
            self.prune_scope,
        )
        super().summary()

    # ------------------------------------------------------- Flower's methods
    def prepare_initial(
        self, grid: Grid, arrays: dict[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]:
        """Start from an all-keep mask (or :meth:`initial_mask`'s)."""
        self.keep = full_mask(arrays, prunable_names(arrays, self.prune_scope))
        return self.initial_mask(grid, arrays, timeout)

    # --------------------------------------------------------------- helpers
    def _nonzero_params(self) -> int:
        return sum(
            int(np.count_nonzero(v))
            for v in self.global_arrays.values()
            if np.issubdtype(v.dtype, np.floating)
        )
