"""Common base of every fedlean strategy.

:class:`FedleanStrategy` is Flower's ``FedAvg`` plus three things every method needs:

* **measured bytes** of every message each way (Flower's own serialization, see
  :mod:`fl_strategies.wire`), per round and cumulative, training and evaluation apart;
* **validated replies**: error replies, missing records or keys, undecodable payloads,
  wrong shapes/dtypes, non-finite values, implausible ``num-examples`` and metrics that
  are not finite numbers (or whose keys differ from the other replies') are dropped
  with one log line naming the round, the node and the reason, and the round completes
  with the rest; no reply can raise out of the strategy;
* **weights that cannot be gamed**: ``num-examples`` bounded by the node's partition
  (simulation) or ``max_num_examples``, an optional cap on one reply's share of the
  weight, an optional bound on a reply's update norm (clipped) and, for the plain
  FedAvg/FedProx aggregation, Flower's robust aggregators (median, trimmed mean, Krum);
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
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import DEBUG, INFO, WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from .codec import CodecError, decode_arrays, encode_arrays
from .flwr_compat import LOST_NODE_ERROR_CODES, log, log_strategy_start_info, select_multikrum, trim_mean
from .wire import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY, RUN_CONFIG_KEY, messages_bytes

#: ``num-examples`` bound where the server knows no partition sizes (deployment).
DEFAULT_MAX_NUM_EXAMPLES = 100_000
#: How :meth:`FedleanStrategy.aggregate_replies` may merge dense models.
ROBUST_AGGREGATIONS = ("mean", "median", "trimmed_mean", "krum")


class ReplyError(ValueError):
    """A client reply that cannot be used this round; the message says why."""


def first_line(text: object) -> str:
    """The first non-empty line of ``text`` (a drop reason is one log line)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def check_num_examples(value: Any, bound: int | None = None, what: str = "accepted") -> int:
    """A reply's ``num-examples`` as a positive int within ``bound``; :class:`ReplyError` if not.

    Parameters
    ----------
    value : Any
        The value the reply sent (anything: NaN, inf, bool, a list...).
    bound : int | None (default: None)
        Largest count accepted; ``None`` accepts any positive integer.
    what : str (default: "accepted")
        Where the bound comes from, for the message (e.g. "of partition 3").
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReplyError(f"'{NUM_EXAMPLES_KEY}' missing or not a number ({type(value).__name__})")
    if not math.isfinite(value) or value <= 0 or value != int(value):
        raise ReplyError(f"'{NUM_EXAMPLES_KEY}'={value!r} is not a positive integer")
    if bound is not None and value > bound:
        raise ReplyError(
            f"'{NUM_EXAMPLES_KEY}'={int(value)} is implausible (more than the {bound} examples {what})"
        )
    return int(value)


def check_metrics(record: MetricRecord) -> MetricRecord:
    """A copy of a reply's metrics holding only finite numbers; :class:`ReplyError` otherwise.

    Values must be finite ints/floats or non-empty lists of them (what a MetricRecord
    may hold on the wire); what Flower's metric aggregation reads is this copy only.
    """
    clean: dict[str, Any] = {}
    for key, value in record.items():
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            raise ReplyError(f"metric '{key}' is an empty list")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ReplyError(f"metric '{key}' is a {type(item).__name__}, not a number")
            if not math.isfinite(item):
                raise ReplyError(f"metric '{key}'={item!r} is not finite")
        clean[key] = list(value) if isinstance(value, list) else value
    return MetricRecord(clean)


def metric_signature(record: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """Keys of a metric record with each value's length (0 for a scalar)."""
    return tuple(sorted((k, len(v) if isinstance(v, list) else 0) for k, v in record.items()))


def capped_weights(weights: Sequence[float], max_share: float | None) -> list[float]:
    """Weights rescaled so that no entry holds more than ``max_share`` of their sum.

    The excess of capped entries goes to the others in proportion to their weights
    (water filling). Where ``len(weights) * max_share < 1`` no such split exists: every
    entry gets the same weight.
    """
    total = float(sum(weights))
    if max_share is None or total <= 0 or not weights:
        return [float(w) for w in weights]
    if len(weights) * max_share < 1:
        return [total / len(weights)] * len(weights)
    shares = [float(w) / total for w in weights]
    capped: set[int] = set()
    while True:
        over = {i for i, s in enumerate(shares) if s > max_share + 1e-12} - capped
        if not over:
            break
        capped |= over
        free = [i for i in range(len(shares)) if i not in capped]
        rest = 1.0 - max_share * len(capped)
        free_total = sum(float(weights[i]) for i in free)
        for i in capped:
            shares[i] = max_share
        for i in free:
            shares[i] = rest * float(weights[i]) / free_total if free_total > 0 else rest / len(free)
    return [s * total for s in shares]


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``arrays - reference`` over the names of ``reference``."""
    squares = 0.0
    for name, ref in reference.items():
        squares += float(np.sum(np.square(arrays[name].astype(np.float64) - ref.astype(np.float64))))
    return math.sqrt(squares)


def clip_update(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], bound: float
) -> tuple[dict[str, np.ndarray], float]:
    """``arrays`` with their update from ``reference`` scaled to L2 norm at most ``bound``.

    Returns the (possibly) clipped arrays and the norm before clipping; names not in
    ``reference`` are kept as they are.
    """
    norm = update_norm(arrays, reference)
    if norm <= bound:
        return dict(arrays), norm
    scale = bound / norm
    out = dict(arrays)
    for name, ref in reference.items():
        base = ref.astype(np.float64)
        out[name] = (base + (arrays[name].astype(np.float64) - base) * scale).astype(arrays[name].dtype)
    return out, norm


def robust_mean(
    arrays: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    how: str,
    trim_beta: float = 0.2,
    num_malicious: int = 0,
) -> dict[str, np.ndarray]:
    """Merge same-keyed dense models with one of :data:`ROBUST_AGGREGATIONS`.

    ``mean`` is :func:`weighted_mean`; ``median`` (Flower's ``FedMedian``) and
    ``trimmed_mean`` (Flower's ``FedTrimmedAvg`` ``trim_mean``, cutting ``trim_beta``
    of the replies at each end per coordinate) are coordinate-wise and unweighted;
    ``krum`` keeps the one reply Flower's ``select_multikrum`` picks for
    ``num_malicious`` faulty nodes.
    """
    if how == "mean":
        return weighted_mean(arrays, weights)
    if how == "krum":
        contents = [RecordDict({ARRAYS_KEY: numpy_to_arrayrecord(a)}) for a in arrays]
        chosen = select_multikrum(contents, num_malicious_nodes=num_malicious, num_nodes_to_select=1)
        index = next(i for i, c in enumerate(contents) if c is chosen[0])
        return {k: np.array(v) for k, v in arrays[index].items()}
    if how not in ROBUST_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {ROBUST_AGGREGATIONS}, got {how!r}")
    out: dict[str, np.ndarray] = {}
    for key, first in arrays[0].items():
        stacked = np.stack([a[key].astype(np.float64) for a in arrays])
        merged = np.median(stacked, axis=0) if how == "median" else trim_mean(stacked, trim_beta)
        if np.issubdtype(first.dtype, np.integer):
            merged = np.rint(merged)
        out[key] = np.asarray(merged).astype(first.dtype)
    return out


class TooFewRepliesError(RuntimeError):
    """A training round got fewer usable replies than ``min_replies`` (``on_too_few_replies=stop``)."""


#: What :meth:`FedleanStrategy.start` does with a round below ``min_replies``.
TOO_FEW_REPLIES_POLICIES = ("stop", "skip")


def required_replies(min_replies: float, sampled: int) -> int:
    """Usable replies a round needs: ``min_replies`` itself (>= 1) or that fraction of ``sampled``.

    >>> required_replies(1, 10), required_replies(3, 10), required_replies(0.5, 5)
    (1, 3, 3)
    """
    if min_replies >= 1:
        if min_replies != int(min_replies):
            raise ValueError(f"min_replies={min_replies}: must be an integer >= 1 or a fraction in (0, 1)")
        return int(min_replies)
    if not 0 < min_replies < 1:
        raise ValueError(f"min_replies={min_replies}: must be an integer >= 1 or a fraction in (0, 1)")
    return max(1, math.ceil(min_replies * sampled))


def _byte_counters() -> defaultdict[str, int]:
    # A named factory (not a lambda): the counters are pickled into checkpoints.
    return defaultdict(int)


@dataclass
class ParsedReply:
    """A validated training reply."""

    node_id: int
    num_examples: int
    arrays: dict[str, np.ndarray]
    metrics: MetricRecord
    content: RecordDict = field(repr=False, default_factory=RecordDict)
    #: Aggregation weight: ``num-examples``, after the server's share cap.
    weight: float = field(default=0.0, kw_only=True)

    def __post_init__(self) -> None:
        if not self.weight:
            self.weight = float(self.num_examples)


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
    max_elements: int | None = None,
    exact_keys: bool = True,
) -> dict[str, np.ndarray]:
    """Decode one ArrayRecord of a reply; :class:`ReplyError` if absent or malformed.

    With ``expected_keys``, the decoded names must be exactly those; given as a mapping
    of names to shapes, an entry claiming another shape is rejected by the codec before
    anything is allocated for it. ``max_elements`` bounds what an encoded entry not
    named there may claim (default: the codec's :data:`~fl_strategies.codec.MAX_ELEMENTS`).
    ``exact_keys=False`` checks the shapes of the names given but lets other names come.
    """
    if key not in content.array_records:
        raise ReplyError(f"no ArrayRecord '{key}'")
    if isinstance(expected_keys, Mapping):
        shapes = {name: tuple(int(d) for d in shape) for name, shape in expected_keys.items()}
    else:
        shapes = None
    try:
        if max_elements is None:
            arrays = decode_arrays(content.array_records[key], shapes)
        else:
            arrays = decode_arrays(content.array_records[key], shapes, max_elements)
    except (CodecError, ValueError, TypeError) as exc:
        raise ReplyError(f"undecodable payload: {first_line(exc)}") from exc
    if expected_keys is not None and exact_keys:
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
    max_num_examples : int | None (default: :data:`DEFAULT_MAX_NUM_EXAMPLES`)
        Largest plausible ``num-examples`` in a reply; replies above it are dropped.
        ``None`` accepts any positive count. Where the runtime fills
        :attr:`node_partitions` and :attr:`partition_sizes` (simulation), a training
        reply must not claim more than its partition's training examples either.
    encoding : str (default: "auto")
        Codec encoding of the global model sent down (see
        :func:`fl_strategies.codec.encode_arrays`).
    max_weight_share : float | None (default: None)
        Largest share (0 < share <= 1) of a round's aggregation weight one reply may
        hold (:func:`capped_weights`); ``None``: weights as the replies' counts.
    update_norm_bound : float | None (default: None)
        Largest L2 norm of a reply's update against the global model; longer updates
        are scaled down to it (clipped). Applies where :meth:`update_reference` names
        the reply's dense arrays.
    robust_aggregation : str (default: "mean")
        One of :data:`ROBUST_AGGREGATIONS`; anything but ``mean`` only for strategies
        that keep the base :meth:`aggregate_replies` (FedAvg, FedProx).
    trim_beta : float (default: 0.2)
        Fraction cut at each end by ``trimmed_mean``.
    krum_num_malicious : int (default: 1)
        Faulty nodes Krum assumes.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.

    """

    #: Name used in logs and results; subclasses set their own.
    method_name = "fedavg"

    def __init__(
        self,
        client_config: Mapping[str, Any] | None = None,
        max_num_examples: int | None = DEFAULT_MAX_NUM_EXAMPLES,
        encoding: str = "auto",
        max_weight_share: float | None = None,
        update_norm_bound: float | None = None,
        robust_aggregation: str = "mean",
        trim_beta: float = 0.2,
        krum_num_malicious: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_weight_share is not None and not 0 < max_weight_share <= 1:
            raise ValueError(f"max_weight_share must be in (0, 1], got {max_weight_share}")
        if update_norm_bound is not None and not (update_norm_bound > 0 and math.isfinite(update_norm_bound)):
            raise ValueError(f"update_norm_bound must be > 0, got {update_norm_bound}")
        if robust_aggregation not in ROBUST_AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {ROBUST_AGGREGATIONS}, got {robust_aggregation!r}")
        if (
            robust_aggregation != "mean"
            and type(self).aggregate_replies is not FedleanStrategy.aggregate_replies
        ):
            raise ValueError(
                f"aggregation={robust_aggregation} is not supported by {self.method_name} "
                "(only fedavg and fedprox aggregate plain dense models)"
            )
        self.client_config = dict(client_config or {})
        self.max_num_examples = max_num_examples
        self.encoding = encoding
        self.max_weight_share = max_weight_share
        self.update_norm_bound = update_norm_bound
        self.robust_aggregation = robust_aggregation
        self.trim_beta = float(trim_beta)
        self.krum_num_malicious = int(krum_num_malicious)
        #: Node id -> partition id, filled by the runtime before :meth:`start` (simulation);
        #: sampling and the num-examples bound follow it.
        self.node_partitions: dict[int, int] = {}
        #: Training examples of each partition (simulation); ``None`` where unknown.
        self.partition_sizes: list[int] | None = None
        #: Replies whose update was clipped, per round (node ids).
        self.clipped: dict[int, list[int]] = defaultdict(list)
        self.bytes: dict[int, dict[str, int]] = defaultdict(_byte_counters)
        self.dropped: dict[int, list[str]] = defaultdict(list)
        #: Round -> reply counts of its phases (``sampled``, ``replied``, ``dropped``,
        #: ``missing``, ``eval_*``; ``skipped``), filled by :meth:`start`.
        self.participation: dict[int, dict[str, int]] = defaultdict(dict)
        self.min_replies: float = 1
        self.on_too_few_replies = "stop"
        self.train_metrics: dict[int, MetricRecord] = {}
        self.eval_metrics: dict[int, MetricRecord] = {}
        self._global_arrays: dict[str, np.ndarray] = {}
        self._global_record: ArrayRecord | None = None
        self._downlink_record: ArrayRecord | None = None
        self._client_config_json = json.dumps(self.client_config, sort_keys=True)
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
        exact_keys: bool = True,
    ) -> dict[str, np.ndarray]:
        """Decode one ArrayRecord of a reply (training or evaluation) through the codec.

        Every method reads reply arrays through this hook; :class:`ReplyError` if the
        record is absent, malformed or (with ``expected_keys``) holds other names.
        Shapes given as a mapping are checked before the codec allocates anything; an
        encoded entry not named there may claim at most one model's worth of elements.
        """
        bound = max(1, sum(int(v.size) for v in self.global_arrays.values()))
        return decode_reply_arrays(content, key, expected_keys, max_elements=bound, exact_keys=exact_keys)

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
        check_metrics(content.metric_records[METRICS_KEY])
        return content

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """New global model from validated replies (default: weighted mean, or ``robust_aggregation``)."""
        merged = robust_mean(
            [r.arrays for r in replies],
            [r.weight for r in replies],
            self.robust_aggregation,
            self.trim_beta,
            self.krum_num_malicious,
        )
        return {**self.global_arrays, **merged}

    def update_reference(self, server_round: int, reply: ParsedReply) -> dict[str, np.ndarray]:
        """What a reply's dense arrays are an update of, by name (``update_norm_bound``).

        Default: the global model's float arrays the reply carries. Methods whose
        replies hold other arrays name their own (an empty dict: no bound applies).
        """
        return {
            name: self.global_arrays[name]
            for name in reply.arrays
            if name in self.global_arrays and self.global_arrays[name].dtype.kind == "f"
        }

    def validated_train_reply(self, server_round: int, message: Message) -> ParsedReply:
        """One training reply through every check: error, :meth:`parse_train_reply`, bounds.

        The metrics of the returned reply are :func:`check_metrics`' copy (what the
        metric aggregation reads); its update is clipped to ``update_norm_bound``.
        """
        if message.has_error():
            raise ReplyError(f"error reply: {first_line(message.error.reason)}")
        reply = self.parse_train_reply(server_round, message)
        node = message.metadata.src_node_id
        partition = self.node_partitions.get(node)
        if self.partition_sizes is not None and partition is not None:
            if not 0 <= partition < len(self.partition_sizes):
                raise ReplyError(f"node's partition {partition} is unknown")
            check_num_examples(
                reply.num_examples, self.partition_sizes[partition], f"of partition {partition}"
            )
        reply.metrics = check_metrics(reply.metrics)
        if self.update_norm_bound is not None:
            reference = self.update_reference(server_round, reply)
            if reference:
                reply.arrays, norm = clip_update(reply.arrays, reference, self.update_norm_bound)
                if norm > self.update_norm_bound:
                    self.clipped[server_round].append(node)
                    log(
                        INFO,
                        "round %d train: clipped the update of node %s (norm %.4g > %.4g)",
                        server_round,
                        node,
                        norm,
                        self.update_norm_bound,
                    )
        return reply

    def method_metrics(self, server_round: int) -> dict[str, float]:
        """Method-specific per-round fields for the results (default: none)."""
        return {}

    def summary_fields(self) -> dict[str, Any]:
        """Method-specific fields for the run's ``summary.json`` (default: none)."""
        return {}

    # ------------------------------------------------------------ checkpoints
    #: Attributes :meth:`checkpoint_state` leaves out: caches rebuilt on demand and
    #: runtime objects. Each class lists its own; the lists of its bases apply too.
    checkpoint_exclude: ClassVar[tuple[str, ...]] = ("_global_record", "_downlink_record")

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything the strategy needs to continue a run, as picklable values.

        Default: the instance's attributes (global model, counters, per-round records,
        method state such as masks and EMAs) except callables (functions given by
        the builder, e.g. metric aggregation: configuration, rebuilt with the
        strategy) and those in :attr:`checkpoint_exclude` of the class and its bases.
        Override where an attribute is a runtime object whose state must be taken
        apart (e.g. a torch model and its optimizer).
        """
        excluded = {name for cls in type(self).__mro__ for name in vars(cls).get("checkpoint_exclude", ())}
        return {
            key: value for key, value in vars(self).items() if key not in excluded and not callable(value)
        }

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned (on a strategy built from the same config)."""
        vars(self).update(state)
        self.global_arrays = self._global_arrays  # the records made of the model are rebuilt

    #: Attributes that are dicts keyed by node id and say what each node holds (the
    #: round it last synced, the mask it has, its KD targets). Each class lists its own;
    #: the lists of its bases apply too.
    node_state_attributes: ClassVar[tuple[str, ...]] = ()

    def _node_state_dicts(self) -> list[dict[int, Any]]:
        names = {name for cls in type(self).__mro__ for name in vars(cls).get("node_state_attributes", ())}
        return [getattr(self, name) for name in sorted(names)]

    def reset_node_state(self) -> None:
        """Forget what the nodes hold, so every node is treated as new (full resync).

        Called when a run resumes where the nodes' own state could not be restored
        (SuperNodes of a new run, Ray with ``client_state=memory``): empties every
        attribute in :attr:`node_state_attributes`.
        """
        for per_node in self._node_state_dicts():
            per_node.clear()

    def rekey_nodes(self, new_ids: Mapping[int, int]) -> None:
        """Follow the nodes to new ids (a resumed Ray run names its nodes anew).

        ``new_ids`` maps a node id of the checkpointed run to the id of the node that
        serves the same partition now; what a node without a new id held is dropped
        (it resyncs in full if it comes back).
        """
        for per_node in self._node_state_dicts():
            held = dict(per_node)
            per_node.clear()
            per_node.update({new_ids[node]: value for node, value in held.items() if node in new_ids})

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
                parsed.append(self.validated_train_reply(server_round, message))
            except Exception as exc:  # noqa: BLE001 - no reply may end the run
                self._drop(server_round, message, "train", exc)
        parsed = self._same_metric_keys(server_round, "train", parsed)
        log(INFO, "aggregate_train: %d valid replies, %d dropped", len(parsed), len(replies) - len(parsed))
        if not parsed or not self._enough_replies(server_round, len(parsed), len(replies)):
            return None, None
        for reply, weight in zip(
            parsed, capped_weights([r.num_examples for r in parsed], self.max_weight_share), strict=True
        ):
            reply.weight = weight
        new_global = self.aggregate_replies(server_round, parsed)
        self.global_arrays = new_global
        metrics = self.train_metrics_aggr_fn(
            [self._metrics_content(r.metrics, r.weight) for r in parsed], self.weighted_by_key
        )
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
        valid: list[ParsedReply] = []
        for message in replies:
            try:
                if message.has_error():
                    raise ReplyError(f"error reply: {first_line(message.error.reason)}")
                content = self.parse_evaluate_reply(server_round, message)
                record = check_metrics(content.metric_records[METRICS_KEY])
                count = self._num_examples(content)
                valid.append(ParsedReply(message.metadata.src_node_id, count, {}, record, content))
            except Exception as exc:  # noqa: BLE001 - no reply may end the run
                self._drop(server_round, message, "evaluate", exc)
        valid = self._same_metric_keys(server_round, "evaluate", valid)
        if not valid:
            return None
        weights = capped_weights([r.num_examples for r in valid], self.max_weight_share)
        metrics = self.evaluate_metrics_aggr_fn(
            [self._metrics_content(r.metrics, w) for r, w in zip(valid, weights, strict=True)],
            self.weighted_by_key,
        )
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
        *,
        start_round: int = 0,
        min_replies: float = 1,
        on_too_few_replies: str = "stop",
    ) -> Result:
        """Run the rounds (Flower's ``Strategy.start`` loop); after each hand :meth:`round_record` on.

        Each round: :meth:`configure_train`, ``grid.send_and_receive(timeout)``,
        :meth:`aggregate_train`, :meth:`configure_evaluate`, ``send_and_receive``,
        :meth:`aggregate_evaluate`, then ``evaluate_fn``, as in Flower's loop. Beyond
        it: every sampled node without a reply (timed out, or a SuperLink error reply
        saying the node or message is gone) is counted ``missing`` with one log line,
        a training round with fewer usable replies than ``min_replies`` stops the run
        or is skipped, and the loop can start at a later round (resume).

        Parameters
        ----------
        grid : Grid
            Where the messages go (inline, Ray's in-memory grid, a SuperLink).
        initial_arrays : ArrayRecord
            The initial global model (dense); unused when ``start_round > 0``.
        num_rounds : int (default: 3)
            Last round.
        timeout : float (default: 3600)
            Seconds to wait for replies in each phase of a round.
        train_config : ConfigRecord | None (default: None)
            Sent with every training message (method entries are added per round).
        evaluate_config : ConfigRecord | None (default: None)
            Sent with every evaluation message.
        evaluate_fn : Callable[[int, ArrayRecord], MetricRecord | None] | None
            Centralized evaluation; it sees :meth:`central_view` of the global model.
        on_round_end : Callable[[dict], None] | None (default: None)
            Called with the round record after every round (round 0 = initial model),
            once the centralized evaluation (if any) is done.
        start_round : int (default: 0)
            First round to run. 0: a new run (:meth:`prepare_initial`, the initial
            model's evaluation as round 0, then rounds 1, 2, ...). Above 0 the strategy
            continues a run whose state :meth:`load_checkpoint_state` restored, with
            the restored global model.
        min_replies : float (default: 1)
            Usable training replies a round needs: an integer >= 1, or a fraction in
            (0, 1) of the nodes sampled that round.
        on_too_few_replies : str (default: "stop")
            Below ``min_replies``: ``stop`` raises :class:`TooFewRepliesError` (the
            round is not recorded); ``skip`` keeps the global model and every method
            state as they were, records the round with ``skipped: true`` and goes on.

        Returns
        -------
        Result
            Flower's result: ``arrays`` is the model of the last round that aggregated
            replies in this call (empty if none did), plus the metrics per round.

        """
        required_replies(min_replies, 1)  # the value's check
        if on_too_few_replies not in TOO_FEW_REPLIES_POLICIES:
            raise ValueError(
                f"on_too_few_replies={on_too_few_replies!r}: must be one of {TOO_FEW_REPLIES_POLICIES}"
            )
        self.min_replies, self.on_too_few_replies = min_replies, on_too_few_replies
        log(INFO, "Starting %s strategy:", self.__class__.__name__)
        log_strategy_start_info(num_rounds, initial_arrays, train_config, evaluate_config)
        self.summary()
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result()
        t_start = time.time()

        def evaluate_and_record(server_round: int) -> None:
            central = None
            if evaluate_fn is not None:
                view = self.central_view(self.global_arrays)
                record = self.global_record() if view is self._global_arrays else numpy_to_arrayrecord(view)
                central = evaluate_fn(server_round, record)
                log(INFO, "\t└──> Global evaluation: %s", central)
                if central is not None:
                    result.evaluate_metrics_serverapp[server_round] = central
            if on_round_end is not None:
                on_round_end(self.round_record(server_round, central))

        if start_round <= 0:
            self.global_arrays = arrayrecord_to_numpy(initial_arrays)
            self._global_record = initial_arrays
            initial = self.prepare_initial(grid, self.global_arrays, timeout)
            if initial is not self._global_arrays:
                self.global_arrays = initial
            evaluate_and_record(0)
            start_round = 1
        else:
            log(INFO, "Resuming at round %d of %d", start_round, num_rounds)

        for current_round in range(start_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", current_round, num_rounds)
            # --- training (ClientApp side)
            messages = list(self.configure_train(current_round, self.global_record(), train_config, grid))
            replies = self._send_and_receive(current_round, "train", grid, messages, timeout)
            dropped_before = len(self.dropped.get(current_round, []))
            agg_arrays, agg_metrics = self.aggregate_train(current_round, replies)
            counts = self.participation[current_round]
            counts["dropped"] = len(self.dropped.get(current_round, [])) - dropped_before
            if agg_arrays is None:
                self._too_few_replies(current_round, timeout)
            else:
                result.arrays = agg_arrays
            if agg_metrics is not None:
                log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_metrics)
                result.train_metrics_clientapp[current_round] = agg_metrics
            # --- evaluation (ClientApp side)
            messages = list(
                self.configure_evaluate(current_round, self.global_record(), evaluate_config, grid)
            )
            replies = self._send_and_receive(current_round, "eval", grid, messages, timeout)
            dropped_before = len(self.dropped.get(current_round, []))
            agg_evaluate = self.aggregate_evaluate(current_round, replies) if messages else None
            counts["eval_dropped"] = len(self.dropped.get(current_round, [])) - dropped_before
            if agg_evaluate is not None:
                log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_evaluate)
                result.evaluate_metrics_clientapp[current_round] = agg_evaluate
            # --- evaluation (ServerApp side) and the round's record
            evaluate_and_record(current_round)

        log(INFO, "")
        log(INFO, "Strategy execution finished in %.2fs", time.time() - t_start)
        return result

    def _send_and_receive(
        self, server_round: int, phase: str, grid: Grid, messages: list[Message], timeout: float
    ) -> list[Message]:
        """Send, wait up to ``timeout``; count and log every sampled node left without a reply.

        Replies the SuperLink made up for a node that is gone (:data:`LOST_NODE_ERROR_CODES`)
        count as missing, not as the node's own (dropped) reply.
        """
        prefix = "" if phase == "train" else "eval_"
        replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        answered: dict[int, str] = {}
        kept: list[Message] = []
        for reply in replies:
            node = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error() and reply.error.code in LOST_NODE_ERROR_CODES:
                reason = (reply.error.reason or f"error code {reply.error.code}").splitlines()[0]
                answered.setdefault(node, f"node lost: {reason}")
                continue
            answered[node] = ""
            kept.append(reply)
        missing = 0
        for message in messages:
            node = message.metadata.dst_node_id
            why = answered.get(node, f"no reply within timeout={timeout:g} s / node lost")
            if why:
                missing += 1
                log(WARNING, "round %d %s: no reply from node %s: %s", server_round, phase, node, why)
        counts = self.participation[server_round]
        counts[f"{prefix}sampled"] = len(messages)
        counts[f"{prefix}replied"] = len(kept)
        counts[f"{prefix}missing"] = missing
        return kept

    def _enough_replies(self, server_round: int, usable: int, received: int) -> bool:
        """Whether ``usable`` valid training replies meet ``min_replies``; notes the shortfall."""
        counts = self.participation[server_round]
        needed = required_replies(self.min_replies, counts.get("sampled", received))
        if usable >= needed:
            return True
        counts["usable"], counts["required"] = usable, needed
        return False

    def _too_few_replies(self, server_round: int, timeout: float) -> None:
        """A round that aggregated nothing: stop the run or record it as skipped."""
        counts = self.participation[server_round]
        sampled, missing, dropped = (counts.get(k, 0) for k in ("sampled", "missing", "dropped"))
        usable = counts.get("usable", 0)
        needed = counts.get("required", required_replies(self.min_replies, sampled))
        what = (
            f"round {server_round}: {usable} usable training replies of {sampled} sampled nodes, "
            f"min_replies={self.min_replies:g} needs {needed} ({missing} missing, {dropped} dropped)"
        )
        hints = []
        if missing:
            hints.append(f"the 'no reply from node' lines (timeout={timeout:g} s too short? nodes lost?)")
        if dropped:
            hints.append("the 'dropped reply from node' lines (client errors, invalid replies)")
        check = "; check " + " and ".join(hints) if hints else ""
        if self.on_too_few_replies == "stop":
            raise TooFewRepliesError(f"{what}{check}")
        counts["skipped"] = 1
        log(WARNING, "%s: round skipped, global model kept%s", what, check)

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
        counts = self.participation.get(server_round, {})
        for prefix in ("", "eval_"):
            for key in ("sampled", "replied", "dropped", "missing"):
                record[f"{prefix}{key}"] = int(counts.get(f"{prefix}{key}", 0))
        if not counts:  # a phase outside the round loop (e.g. a scoring round 0)
            record["dropped"] = len(self.dropped.get(server_round, []))
        record["skipped"] = bool(counts.get("skipped", 0))
        if self.update_norm_bound is not None:
            record["clipped"] = len(self.clipped.get(server_round, []))
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
        return check_num_examples(value, self.max_num_examples, "accepted (max_num_examples)")

    @staticmethod
    def _metrics_content(metrics: MetricRecord, weight: float) -> RecordDict:
        """What Flower's metric aggregation reads: the checked metrics, weighted as aggregated."""
        return RecordDict(
            {METRICS_KEY: MetricRecord({**dict(metrics.items()), NUM_EXAMPLES_KEY: float(weight)})}
        )

    def _same_metric_keys(
        self, server_round: int, phase: str, replies: list[ParsedReply]
    ) -> list[ParsedReply]:
        """Drop replies whose metric keys (and list lengths) differ from most replies'.

        Flower's aggregation averages each key over the replies that have it; a reply
        with other keys would skew or break it. Ties go to the earliest reply's keys.
        """
        if len(replies) < 2:
            return replies
        signatures = [metric_signature(r.metrics) for r in replies]
        common = Counter(signatures).most_common(1)[0][0]
        kept = []
        for reply, signature in zip(replies, signatures, strict=True):
            if signature == common:
                kept.append(reply)
                continue
            ours, theirs = dict(signature), dict(common)
            missing = sorted(set(theirs) - set(ours))
            extra = sorted(set(ours) - set(theirs))
            other = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
            reason = ReplyError(
                f"metric keys differ from the other replies': missing {missing[:3]}, "
                f"unexpected {extra[:3]}, other length {other[:3]}"
            )
            self._drop_node(server_round, reply.node_id, phase, reason)
        return kept

    def _drop(self, server_round: int, message: Message, phase: str, exc: BaseException) -> None:
        self._drop_node(server_round, message.metadata.src_node_id, phase, exc)

    def _drop_node(self, server_round: int, node: int, phase: str, exc: BaseException) -> None:
        """One WARNING line per dropped reply (first line of the reason); the traceback at DEBUG."""
        reason = first_line(exc) or "(no message)"
        if not isinstance(exc, ReplyError):
            reason = f"{type(exc).__name__}: {reason}"
        self.dropped[server_round].append(f"{node}: {reason}")
        log(WARNING, "round %d %s: dropped reply from node %s: %s", server_round, phase, node, reason)
        log(DEBUG, "round %d %s: reply from node %s", server_round, phase, node, exc_info=exc)
