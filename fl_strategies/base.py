"""Common base of every fedlean strategy.

:class:`FedleanStrategy` is Flower's ``FedAvg`` plus three things every method needs:

* **measured bytes** of every message each way (Flower's own serialization, see
  :mod:`fl_strategies.wire`), per round and cumulative, training and evaluation apart;
* **validated replies**: error replies, missing records or keys, undecodable payloads,
  wrong shapes/dtypes, non-finite values and implausible ``num-examples`` are dropped
  with one log line naming the node and the reason, and the round completes with the
  rest;
* **per-round records** (:meth:`round_record`) that the results writer stores.

Methods override small hooks instead of Flower's methods: :meth:`encode_global` (what
every sampled node may share), :meth:`node_payload` (what each sampled node gets; the
base samples the nodes, once, through Flower's ``FedAvg``), :meth:`decode_reply` (the one
decoding path of every reply array, training and evaluation), :meth:`expected_reply_arrays`
and :meth:`parse_train_reply` / :meth:`parse_evaluate_reply` (what must come up),
:meth:`aggregate_replies` (how the new global model is made) and :meth:`method_metrics`
(extra per-round fields).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from .codec import CodecError, decode_arrays, encode_arrays
from .flwr_compat import log
from .wire import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY, RUN_CONFIG_KEY, messages_bytes


class ReplyError(ValueError):
    """A client reply that cannot be used this round; the message says why."""


@dataclass
class ParsedReply:
    """A validated training reply."""

    node_id: int
    num_examples: int
    arrays: dict[str, np.ndarray]
    metrics: MetricRecord
    content: RecordDict = field(repr=False, default_factory=RecordDict)


def arrayrecord_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Plain (dense) ArrayRecord to a dict of numpy arrays."""
    return {key: array.numpy() for key, array in record.items()}


def numpy_to_arrayrecord(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Dict of numpy arrays to a plain (dense) ArrayRecord."""
    return ArrayRecord({key: Array(np.require(v, requirements="C")) for key, v in arrays.items()})


def weighted_mean(
    arrays: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Weighted mean of same-keyed arrays, kept in each array's dtype.

    Integer arrays (e.g. BatchNorm's ``num_batches_tracked``) are rounded back.
    """
    total = float(sum(weights))
    if not arrays or total <= 0:
        raise ValueError("weighted_mean needs at least one reply with positive weight")
    out: dict[str, np.ndarray] = {}
    for key, first in arrays[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for item, weight in zip(arrays, weights, strict=True):
            acc += item[key].astype(np.float64) * (weight / total)
        if np.issubdtype(first.dtype, np.integer):
            acc = np.rint(acc)
        out[key] = acc.astype(first.dtype)
    return out


def scalar_metric(metrics: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    """A metric as a float; ``default`` where it is absent or not a number (e.g. a list)."""
    value = metrics.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _check_finite(name: str, value: np.ndarray) -> None:
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
        raise ReplyError(f"array '{name}' has non-finite values")


def decode_reply_arrays(
    content: RecordDict,
    key: str = ARRAYS_KEY,
    expected_keys: Mapping[str, tuple[int, ...]] | Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Decode one ArrayRecord of a reply; :class:`ReplyError` if absent or malformed.

    With ``expected_keys``, the decoded names must be exactly those; given as a mapping
    of names to shapes, an entry claiming another shape is rejected by the codec before
    anything is allocated for it.
    """
    if key not in content.array_records:
        raise ReplyError(f"no ArrayRecord '{key}'")
    shapes = dict(expected_keys) if isinstance(expected_keys, Mapping) else None
    try:
        arrays = decode_arrays(content.array_records[key], shapes)
    except (CodecError, ValueError, TypeError) as exc:
        raise ReplyError(f"undecodable payload: {exc}") from exc
    if expected_keys is not None:
        expected = set(expected_keys)
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        if missing or extra:
            raise ReplyError(f"array keys differ: missing {missing[:3]}, unexpected {extra[:3]}")
    return arrays


def check_reply_array(name: str, value: np.ndarray, shape: tuple[int, ...], kinds: str | None = None) -> None:
    """Shape, dtype kind (numpy ``dtype.kind`` letters) and finiteness of one array."""
    if tuple(value.shape) != tuple(shape):
        raise ReplyError(f"array '{name}' has shape {value.shape}, expected {tuple(shape)}")
    if kinds is not None and value.dtype.kind not in kinds:
        raise ReplyError(f"array '{name}' has dtype {value.dtype}, expected kind '{kinds}'")
    _check_finite(name, value)


class FedleanStrategy(FedAvg):
    """FedAvg with measured bytes, validated replies and per-round records.

    Parameters
    ----------
    client_config : Mapping[str, Any] | None (default: None)
        Client-side run settings (dataset, model, training, method options). Sent as
        JSON in every message's ConfigRecord so that clients need no Hydra.
    max_num_examples : int | None (default: None)
        Largest plausible ``num-examples`` in a reply (e.g. the training set size);
        replies above it are dropped. ``None`` accepts any positive count.
    encoding : str (default: "auto")
        Codec encoding of the global model sent down (see
        :func:`fl_strategies.codec.encode_arrays`).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.

    """

    #: Name used in logs and results; subclasses set their own.
    method_name = "fedavg"

    def __init__(
        self,
        client_config: Mapping[str, Any] | None = None,
        max_num_examples: int | None = None,
        encoding: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client_config = dict(client_config or {})
        self.max_num_examples = max_num_examples
        self.encoding = encoding
        self.bytes: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.dropped: dict[int, list[str]] = defaultdict(list)
        self.train_metrics: dict[int, MetricRecord] = {}
        self.eval_metrics: dict[int, MetricRecord] = {}
        self._global_arrays: dict[str, np.ndarray] = {}
        self._global_record: ArrayRecord | None = None
        self._downlink_record: ArrayRecord | None = None
        self._client_config_json = json.dumps(self.client_config, sort_keys=True)
        #: Node id -> partition id where the runtime tells (simulation); sampling follows it.
        self.node_partitions: dict[int, int] = {}
        #: Seed of the client sampling (the run's seed, as clients get it).
        self.sampling_seed = int(self.client_config.get("seed", 0))

    # ------------------------------------------------------------ global model
    @property
    def global_arrays(self) -> dict[str, np.ndarray]:
        """The server's global model as numpy: the one copy every hook works on.

        Assigning a new model drops the records made of the previous one; the dict must
        not be changed in place (assign a new one).
        """
        return self._global_arrays

    @global_arrays.setter
    def global_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._global_arrays = arrays
        self._global_record = None
        self._downlink_record = None

    def global_record(self) -> ArrayRecord:
        """The global model as a plain ArrayRecord (Flower's round loop, ``Result.arrays``).

        Made once per model: the ArrayRecord handed back by this method is recognised
        when Flower passes it in again, so no hook converts it back to numpy.
        """
        if self._global_record is None:
            self._global_record = numpy_to_arrayrecord(self._global_arrays)
        return self._global_record

    def downlink_record(self) -> ArrayRecord:
        """The global model through the codec (``encoding``), made once per model.

        Training (default :meth:`encode_global`) and evaluation messages share it.
        """
        if self._downlink_record is None:
            self._downlink_record = encode_arrays(self._global_arrays, encoding=self.encoding)
        return self._downlink_record

    def _adopt(self, arrays: ArrayRecord) -> dict[str, np.ndarray]:
        """Numpy view of a model Flower passed in: the global one without a conversion."""
        if arrays is self._global_record:
            return self._global_arrays
        return arrayrecord_to_numpy(arrays)

    # ------------------------------------------------------------------ hooks
    def encode_global(self, server_round: int, arrays: dict[str, np.ndarray]) -> ArrayRecord:
        """ArrayRecord sent down for training (default: the whole model via the codec)."""
        if arrays is self._global_arrays:
            return self.downlink_record()
        return encode_arrays(arrays, encoding=self.encoding)

    def node_payload(
        self,
        server_round: int,
        node_id: int,
        message_type: str,
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> RecordDict | None:
        """Content of the message to one sampled node (default: None, the shared payload).

        Parameters
        ----------
        server_round : int
            The round being configured.
        node_id : int
            The sampled node the message goes to.
        message_type : str
            ``MessageType.TRAIN`` or ``MessageType.EVALUATE``.
        arrays : ArrayRecord
            What :meth:`encode_global` (training) or the codec (evaluation) made of the
            global model for this round.
        config : ConfigRecord
            The round's ConfigRecord (``server-round`` and the run settings included).

        Returns
        -------
        RecordDict | None
            The message content; None keeps the payload Flower's ``FedAvg`` built for
            every sampled node (``arrays`` and ``config``). Returning one object for
            several nodes lets it be serialized once.

        """
        return None

    def decode_reply(
        self,
        server_round: int,
        content: RecordDict,
        key: str = ARRAYS_KEY,
        expected_keys: Mapping[str, tuple[int, ...]] | Iterable[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Decode one ArrayRecord of a reply (training or evaluation) through the codec.

        Every method reads reply arrays through this hook; :class:`ReplyError` if the
        record is absent, malformed or (with ``expected_keys``) holds other names.
        Shapes given as a mapping are checked before the codec allocates anything.
        """
        return decode_reply_arrays(content, key, expected_keys)

    def add_train_config(self, server_round: int, config: ConfigRecord) -> None:
        """Add per-round entries to the training ConfigRecord (default: none)."""

    def expected_reply_arrays(self, server_round: int) -> dict[str, tuple[int, ...]]:
        """Names and shapes a training reply must carry (default: the whole model)."""
        return {key: value.shape for key, value in self.global_arrays.items()}

    def parse_train_reply(self, server_round: int, message: Message) -> ParsedReply:
        """Validate one training reply; raise :class:`ReplyError` to drop it."""
        content = message.content
        num_examples = self._num_examples(content)
        expected = self.expected_reply_arrays(server_round)
        arrays = self.decode_reply(server_round, content, ARRAYS_KEY, expected)
        for name, shape in expected.items():
            reference = self.global_arrays.get(name)
            check_reply_array(
                name, arrays[name], shape, reference.dtype.kind if reference is not None else None
            )
        return ParsedReply(
            node_id=message.metadata.src_node_id,
            num_examples=num_examples,
            arrays=arrays,
            metrics=content.metric_records[METRICS_KEY],
            content=content,
        )

    def parse_evaluate_reply(self, server_round: int, message: Message) -> RecordDict:
        """Validate one evaluation reply (``num-examples``, finite metrics); raise to drop it."""
        content = message.content
        self._num_examples(content)
        for name, value in content.metric_records[METRICS_KEY].items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ReplyError(f"metric '{name}' is not finite")
        return content

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """New global model from validated replies (default: weighted mean)."""
        merged = weighted_mean([r.arrays for r in replies], [r.num_examples for r in replies])
        return {**self.global_arrays, **merged}

    def method_metrics(self, server_round: int) -> dict[str, float]:
        """Method-specific per-round fields for the results (default: none)."""
        return {}

    def summary_fields(self) -> dict[str, Any]:
        """Method-specific fields for the run's ``summary.json`` (default: none)."""
        return {}

    def order_nodes(self, node_ids: Iterable[int]) -> list[int]:
        """Node ids in an order the project controls: by partition id, then by node id.

        Runtime node ids are random in Flower's simulation; partition ids are not, so
        anything chosen from this order is the same on every backend for one seed.
        """
        return sorted(node_ids, key=lambda n: (self.node_partitions.get(n, -1), n))

    def sample_nodes(
        self, server_round: int, node_ids: Iterable[int], num: int, phase: str = "train"
    ) -> list[int]:
        """The ``num`` nodes sampled this round (default: uniform without replacement).

        Drawn from :meth:`order_nodes` with a generator seeded by (``sampling_seed``,
        ``server_round``, ``phase``), so that the same seed samples the same partitions
        in every runtime and on resume, whatever the node ids or earlier draws.
        """
        ordered = self.order_nodes(node_ids)
        if num >= len(ordered):
            return ordered
        rng = np.random.default_rng([self.sampling_seed, server_round, 0 if phase == "train" else 1])
        picked = np.sort(rng.choice(len(ordered), size=num, replace=False))
        return [ordered[i] for i in picked]

    # ------------------------------------------------------- Flower's methods
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes (Flower's FedAvg), give each its :meth:`node_payload`, count bytes."""
        if arrays is not self._global_record:
            # A model from outside the strategy (e.g. Flower's loop given another start).
            self.global_arrays = arrayrecord_to_numpy(arrays)
        config[RUN_CONFIG_KEY] = self._client_config_json
        self.add_train_config(server_round, config)
        encoded = self.encode_global(server_round, self.global_arrays)
        sampled = self._sampled_messages(server_round, encoded, config, grid, MessageType.TRAIN)
        messages = self._per_node(server_round, sampled, encoded, config)
        self._count(server_round, "bytes_down", messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, drop bad ones with a log line, aggregate the rest."""
        replies = list(replies)
        self._count(server_round, "bytes_up", replies)
        parsed: list[ParsedReply] = []
        for message in replies:
            try:
                if message.has_error():
                    raise ReplyError(f"error reply: {message.error.reason}")
                parsed.append(self.parse_train_reply(server_round, message))
            except ReplyError as exc:
                self._drop(server_round, message, "train", exc)
        log(INFO, "aggregate_train: %d valid replies, %d dropped", len(parsed), len(replies) - len(parsed))
        if not parsed:
            return None, None
        new_global = self.aggregate_replies(server_round, parsed)
        self.global_arrays = new_global
        metrics = self.train_metrics_aggr_fn([r.content for r in parsed], self.weighted_by_key)
        self.train_metrics[server_round] = metrics
        return self.global_record(), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model for client-side evaluation; count the bytes."""
        if self.fraction_evaluate == 0.0:
            return []
        config[RUN_CONFIG_KEY] = self._client_config_json
        if arrays is self._global_record:
            encoded = self.downlink_record()
        else:
            encoded = encode_arrays(arrayrecord_to_numpy(arrays), encoding=self.encoding)
        sampled = self._sampled_messages(server_round, encoded, config, grid, MessageType.EVALUATE)
        messages = self._per_node(server_round, sampled, encoded, config)
        self._count(server_round, "eval_bytes_down", messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate evaluation metrics of the valid replies."""
        replies = list(replies)
        self._count(server_round, "eval_bytes_up", replies)
        valid: list[RecordDict] = []
        for message in replies:
            try:
                if message.has_error():
                    raise ReplyError(f"error reply: {message.error.reason}")
                valid.append(self.parse_evaluate_reply(server_round, message))
            except ReplyError as exc:
                self._drop(server_round, message, "evaluate", exc)
        if not valid:
            return None
        metrics = self.evaluate_metrics_aggr_fn(valid, self.weighted_by_key)
        self.eval_metrics[server_round] = metrics
        return metrics

    def summary(self) -> None:
        """Log the method and its settings before the base summary."""
        log(INFO, "\t├──> fedlean method: %s", self.method_name)
        super().summary()

    def prepare_initial(
        self, grid: Grid, arrays: dict[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]:
        """Set up method state before round 1; may change the initial model (default: no).

        Runs after :attr:`global_arrays` is set to ``arrays``; it may exchange
        messages over ``grid`` (e.g. a scoring round 0) as long as it counts their bytes.
        """
        return arrays

    def central_view(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model the centralized evaluation sees (default: the global model)."""
        return arrays

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        on_round_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> Result:
        """Run Flower's round loop; after each round hand :meth:`round_record` on.

        Parameters
        ----------
        grid : Grid
            Where the messages go (inline, Ray's in-memory grid, a SuperLink).
        initial_arrays : ArrayRecord
            The initial global model (dense).
        num_rounds : int (default: 3)
            Number of rounds.
        timeout : float (default: 3600)
            Seconds to wait for replies each round.
        train_config : ConfigRecord | None (default: None)
            Sent with every training message (method entries are added per round).
        evaluate_config : ConfigRecord | None (default: None)
            Sent with every evaluation message.
        evaluate_fn : Callable[[int, ArrayRecord], MetricRecord | None] | None
            Centralized evaluation; it sees :meth:`central_view` of the global model.
        on_round_end : Callable[[dict], None] | None (default: None)
            Called with the round record after every round (round 0 = initial model),
            once the centralized evaluation (if any) is done.

        """
        self.global_arrays = arrayrecord_to_numpy(initial_arrays)
        self._global_record = initial_arrays
        initial = self.prepare_initial(grid, self.global_arrays, timeout)
        if initial is not self._global_arrays:
            self.global_arrays = initial

        def evaluate_and_record(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            central = None
            if evaluate_fn is not None:
                model = self._adopt(arrays)
                view = self.central_view(model)
                record = self.global_record() if view is self._global_arrays else (numpy_to_arrayrecord(view))
                central = evaluate_fn(server_round, record)
            if on_round_end is not None:
                on_round_end(self.round_record(server_round, central))
            return central

        return super().start(
            grid,
            self.global_record(),
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_and_record,
        )

    # ---------------------------------------------------------------- records
    def round_record(self, server_round: int, central: MetricRecord | None) -> dict[str, Any]:
        """Everything known about one round, as a flat JSON-able dict."""
        record: dict[str, Any] = {"round": server_round}
        for key, value in (central or {}).items():
            record[f"central_{key}"] = value
        for prefix, source in (("train", self.train_metrics), ("client", self.eval_metrics)):
            for key, value in source.get(server_round, {}).items():
                if key != NUM_EXAMPLES_KEY:
                    record[f"{prefix}_{key}"] = value
        counts = self.bytes.get(server_round, {})
        for key in ("bytes_up", "bytes_down", "eval_bytes_up", "eval_bytes_down"):
            record[key] = int(counts.get(key, 0))
            record[f"cum_{key}"] = sum(
                int(self.bytes[r].get(key, 0)) for r in list(self.bytes) if r <= server_round
            )
        record["dropped"] = len(self.dropped.get(server_round, []))
        if server_round > 0:
            record.update(self.method_metrics(server_round))
        return record

    # --------------------------------------------------------------- helpers
    def _sampled_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, message_type: str
    ) -> list[Message]:
        """FedAvg's sample size and messages, with the nodes from :meth:`sample_nodes`."""
        train = message_type == MessageType.TRAIN
        fraction = self.fraction_train if train else self.fraction_evaluate
        if fraction == 0.0:
            return []
        phase = "train" if train else "evaluate"
        num = max(
            int(len(list(grid.get_node_ids())) * fraction),
            self.min_train_nodes if train else self.min_evaluate_nodes,
        )
        # As Flower's FedAvg: wait until enough nodes are connected (deployment).
        while len(all_nodes := list(grid.get_node_ids())) < max(self.min_available_nodes, num):
            log(
                INFO,
                "Waiting for nodes to connect: %d connected (minimum required: %d).",
                len(all_nodes),
                max(self.min_available_nodes, num),
            )
            time.sleep(1)
        node_ids = self.sample_nodes(server_round, all_nodes, num, phase)
        log(INFO, "configure_%s: sampled %d nodes (out of %d)", phase, len(node_ids), len(all_nodes))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=message_type, dst_node_id=node) for node in node_ids]

    def _per_node(
        self,
        server_round: int,
        sampled: Iterable[Message],
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> list[Message]:
        """Flower's sampled messages, each with its node's :meth:`node_payload`."""
        messages = []
        for message in sampled:
            node_id = message.metadata.dst_node_id
            message_type = message.metadata.message_type
            content = self.node_payload(server_round, node_id, message_type, arrays, config)
            if content is None:
                messages.append(message)
            else:
                messages.append(Message(content=content, message_type=message_type, dst_node_id=node_id))
        return messages

    def _count(self, server_round: int, key: str, messages: list[Message]) -> None:
        self.bytes[server_round][key] += messages_bytes(messages)

    def _num_examples(self, content: RecordDict) -> int:
        if METRICS_KEY not in content.metric_records:
            raise ReplyError(f"no MetricRecord '{METRICS_KEY}'")
        value = content.metric_records[METRICS_KEY].get(NUM_EXAMPLES_KEY)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ReplyError(f"'{NUM_EXAMPLES_KEY}' missing or not a number")
        if value <= 0 or value != int(value):
            raise ReplyError(f"'{NUM_EXAMPLES_KEY}'={value} is not a positive integer")
        if self.max_num_examples is not None and value > self.max_num_examples:
            raise ReplyError(
                f"'{NUM_EXAMPLES_KEY}'={value} is implausible (more than the "
                f"{self.max_num_examples} examples that exist)"
            )
        return int(value)

    def _drop(self, server_round: int, message: Message, phase: str, exc: Exception) -> None:
        node = message.metadata.src_node_id
        self.dropped[server_round].append(f"{node}: {exc}")
        log(WARNING, "round %d %s: dropped reply from node %s: %s", server_round, phase, node, exc)
