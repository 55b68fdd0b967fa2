"""FedGKT (He et al., NeurIPS 2020) on fedlean's base: group knowledge transfer.

Clients train a small edge CNN and upload per-sample features, logits, labels and
sample indices; the server trains a large CNN on all uploaded features (CE + KD toward
the client logits) and sends each client **only its own** server logits, keyed by the
same sample indices, as KD targets for its next round. No model weights travel.

The server model (with its optimizer and device) is injected as a
:class:`DistillationServer`: strategies never import ``clients``; ``simulations``
builds it (``clients.methods.fedgkt.GKTServer``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from .base import (
    FedleanStrategy,
    ParsedReply,
    ReplyError,
    check_reply_array,
    numpy_to_arrayrecord,
    scalar_metric,
)
from .codec import CodecError, claimed_shape, encode_arrays
from .flwr_compat import log
from .wire import ARRAYS_KEY, METRICS_KEY

# Arrays of a training reply (up) ...
FEATURES_KEY = "features"
LOGITS_KEY = "logits"
LABELS_KEY = "labels"
INDICES_KEY = "indices"
TEST_FEATURES_KEY = "test-features"
TEST_LABELS_KEY = "test-labels"
REPLY_KEYS = (FEATURES_KEY, LOGITS_KEY, LABELS_KEY, INDICES_KEY, TEST_FEATURES_KEY, TEST_LABELS_KEY)
# ... and of a training message (down): LOGITS_KEY and INDICES_KEY.
# Metrics of a training reply: the edge model on the local test split, KD on or off.
EDGE_ACCURACY_KEY = "edge-accuracy"
EDGE_LOSS_KEY = "edge-loss"
KD_ACTIVE_KEY = "kd-active"
# Edge FLOPs of the client's round: training, and eval-mode feature extraction over its
# train and test images (uploads need features of every image, each round).
EDGE_FLOPS_TRAIN_KEY = "edge-flops-train"
EDGE_FLOPS_EXTRACT_KEY = "edge-flops-extract"
EDGE_FLOPS_SAMPLE_KEY = "edge-flops-train-per-sample"


class DistillationServer(Protocol):
    """The server model of FedGKT with its optimizer and device (kept across rounds)."""

    def fit(
        self, features: np.ndarray, labels: np.ndarray, client_logits: np.ndarray, server_round: int
    ) -> Mapping[str, float]:
        """Train on the round's uploaded features; return training metrics."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Server logits for features, in order."""

    def state(self) -> dict[str, np.ndarray]:
        """The server model's weights (the run's final model)."""

    def describe(self) -> dict[str, Any]:
        """Facts for the summary (model name, parameters, FLOPs, device)."""

    def checkpoint_state(self) -> dict[str, Any]:
        """The model's and the optimizer's state, picklable (a checkpoint's part)."""

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned."""


def softmax_loss_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of logits against integer labels."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    return float(-log_probs[rows, labels].mean()), float((logits.argmax(1) == labels).mean())


def encoded_bytes(record: ArrayRecord, names: Iterable[str]) -> int:
    """Payload bytes of the named arrays of an encoded ArrayRecord (suffixes ignored)."""
    names = set(names)
    return sum(len(array.data) for key, array in record.items() if key.split("@")[0] in names)


class FedGKT(FedleanStrategy):
    """Group Knowledge Transfer (He et al., NeurIPS 2020), samples keyed per sample.

    Each round: every sampled client gets its own server logits (none in round 1),
    trains its edge model, and replies with per-sample features, logits, labels and
    indices of its training split plus features and labels of its test split. The
    server trains :attr:`server` on all replies' features, evaluates it on the test
    features (edge + server pipeline) and keeps, per node, the logits of that node's
    samples (with their indices) for the node's next round.

    The run's "global model" (``Result.arrays``, ``final_model.npz``) is the server
    model. There is no central evaluation (no single model maps images to classes);
    both accuracies come with each training round, so no evaluate round is sent:
    ``server_accuracy`` (server model on the clients' test features, the headline
    ``accuracy``) and ``edge_accuracy`` (each client's edge model on its test split,
    weighted by test examples).

    Parameters
    ----------
    server : DistillationServer
        The server model, its optimizer and device, with the training settings
        (epochs, temperature, alpha, KD on the server or not).
    num_classes : int
        Classes of the task (shape of the logits).
    feature_shape : Sequence[int]
        Shape of one sample's edge features, e.g. ``(16, 32, 32)``.
    float16 : bool (default: True)
        Server logits as float16 on the wire (clients choose their own upload precision).
    **kwargs
        Passed to :class:`fl_strategies.base.FedleanStrategy`.

    Notes
    -----
    Server logits are computed in eval mode after the round's server training
    (**our reading**; FedML keeps the train-mode outputs of the last server epoch).
    A node not sampled in a round keeps its last logits until it trains again.

    """

    method_name = "fedgkt"
    #: The server model is checkpointed through its own state (:meth:`checkpoint_state`).
    checkpoint_exclude = ("server",)

    def __init__(
        self,
        server: DistillationServer,
        num_classes: int,
        feature_shape: Sequence[int],
        float16: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.server = server
        self.num_classes = int(num_classes)
        self.feature_shape = tuple(int(d) for d in feature_shape)
        self.float16 = float16
        # node id -> (sample indices, server logits) for the node's next round.
        self.server_logits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.round_stats: dict[int, dict[str, float]] = {}
        self.server_seconds = 0.0
        self.edge_flops_per_sample = 0.0

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """The base's state plus the server model's weights and optimizer state."""
        return {**super().checkpoint_state(), "server_state": self.server.checkpoint_state()}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore the base's state and the server model with its optimizer."""
        state = dict(state)
        self.server.load_checkpoint_state(state.pop("server_state"))
        super().load_checkpoint_state(state)

    #: The KD targets computed for each node; a node that resyncs in full gets none until it
    #: uploads again.
    node_state_attributes = ("server_logits",)

    # ------------------------------------------------------------------ hooks
    def parse_train_reply(self, server_round: int, message: Message) -> ParsedReply:
        """Validate an upload: keys, shapes, dtypes, label range, unique indices, finite."""
        content = message.content
        num_examples = self._num_examples(content)
        arrays = self.decode_reply(
            server_round, content, ARRAYS_KEY, self.upload_shapes(content, num_examples)
        )
        num_test = len(arrays[TEST_LABELS_KEY])
        expected = {
            FEATURES_KEY: (num_examples, *self.feature_shape),
            LOGITS_KEY: (num_examples, self.num_classes),
            LABELS_KEY: (num_examples,),
            INDICES_KEY: (num_examples,),
            TEST_FEATURES_KEY: (num_test, *self.feature_shape),
            TEST_LABELS_KEY: (num_test,),
        }
        for name, shape in expected.items():
            floating = name in (FEATURES_KEY, LOGITS_KEY, TEST_FEATURES_KEY)
            check_reply_array(name, arrays[name], shape, "f" if floating else "iu")
        for name in (LABELS_KEY, TEST_LABELS_KEY):
            labels = arrays[name]
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ReplyError(f"array '{name}' has labels outside [0, {self.num_classes})")
        indices = arrays[INDICES_KEY]
        if indices.size and indices.min() < 0:
            raise ReplyError("negative sample indices")
        if len(np.unique(indices)) != len(indices):
            raise ReplyError("duplicate sample indices")
        return ParsedReply(
            node_id=message.metadata.src_node_id,
            num_examples=num_examples,
            arrays={
                k: v.astype(np.int64) if v.dtype.kind in "iu" else v.astype(np.float32)
                for k, v in arrays.items()
            },
            metrics=content.metric_records[METRICS_KEY],
            content=content,
        )

    def upload_shapes(self, content: RecordDict, num_examples: int) -> dict[str, tuple[int, ...]]:
        """Shapes every upload array must have, known before anything is decoded.

        The training arrays follow ``num-examples``; the test split's size is read from
        the test labels' header alone and bounded like ``num-examples``.
        """
        record = content.array_records.get(ARRAYS_KEY)
        if record is None:
            raise ReplyError(f"no ArrayRecord '{ARRAYS_KEY}'")
        entries = [k for k in record if k.split("@")[0] == TEST_LABELS_KEY]
        if not entries:
            raise ReplyError(f"array keys differ: missing ['{TEST_LABELS_KEY}']")
        if len(entries) > 1:
            raise ReplyError(f"array '{TEST_LABELS_KEY}' is sent {len(entries)} times")
        try:
            claimed = claimed_shape(record[entries[0]], entries[0])
        except CodecError as exc:
            raise ReplyError(f"undecodable payload: {exc}") from exc
        if len(claimed) != 1:
            raise ReplyError(f"array '{TEST_LABELS_KEY}' claims shape {claimed}, expected 1-D")
        num_test = claimed[0]
        if self.max_num_examples is not None and num_test > self.max_num_examples:
            raise ReplyError(f"'{TEST_LABELS_KEY}' claims {num_test} test examples (max_num_examples)")
        return {
            FEATURES_KEY: (num_examples, *self.feature_shape),
            LOGITS_KEY: (num_examples, self.num_classes),
            LABELS_KEY: (num_examples,),
            INDICES_KEY: (num_examples,),
            TEST_FEATURES_KEY: (num_test, *self.feature_shape),
            TEST_LABELS_KEY: (num_test,),
        }

    def update_reference(self, server_round: int, reply: ParsedReply) -> dict[str, np.ndarray]:
        """None: an upload holds features and logits, no model (``update_norm_bound`` n/a)."""
        return {}

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """Train the server model on all uploads; keep each node's logits; evaluate."""
        start = time.perf_counter()

        def joined(key: str) -> np.ndarray:
            return np.concatenate([r.arrays[key] for r in replies])

        stats: dict[str, float] = dict(
            self.server.fit(joined(FEATURES_KEY), joined(LABELS_KEY), joined(LOGITS_KEY), server_round)
        )
        for reply in replies:
            self.server_logits[reply.node_id] = (
                reply.arrays[INDICES_KEY],
                self.server.predict(reply.arrays[FEATURES_KEY]),
            )
        test_labels = joined(TEST_LABELS_KEY)
        if len(test_labels):
            loss, accuracy = softmax_loss_accuracy(
                self.server.predict(joined(TEST_FEATURES_KEY)), test_labels
            )
            stats.update(accuracy=accuracy, server_accuracy=accuracy, server_loss=loss)
        seconds = time.perf_counter() - start
        self.server_seconds += seconds
        stats["server_seconds"] = seconds
        stats.update(self._edge_stats(replies))
        for key in (EDGE_FLOPS_TRAIN_KEY, EDGE_FLOPS_EXTRACT_KEY):  # summed over the round's clients
            stats[key.replace("-", "_")] = float(sum(scalar_metric(r.metrics, key) for r in replies))
        self.edge_flops_per_sample = max(
            [scalar_metric(r.metrics, EDGE_FLOPS_SAMPLE_KEY) for r in replies] + [self.edge_flops_per_sample]
        )
        stats["upload_feature_bytes"] = sum(
            encoded_bytes(r.content.array_records[ARRAYS_KEY], (FEATURES_KEY, TEST_FEATURES_KEY))
            for r in replies
        )
        self.round_stats[server_round] = stats
        return self.server.state()

    def method_metrics(self, server_round: int) -> dict[str, float]:
        """Server and edge accuracy/loss, server training, feature bytes of the round."""
        return dict(self.round_stats.get(server_round, {}))

    def summary_fields(self) -> dict[str, Any]:
        """The server model's facts; ``final_model.npz`` holds the server model."""
        rounds = list(self.round_stats.values()) or [{}]
        edge = {
            f"{key}_per_round": sum(r.get(key, 0.0) for r in rounds) / len(rounds)
            for key in ("edge_flops_train", "edge_flops_extract")
        }
        edge["edge_flops_per_round"] = sum(edge.values())
        return {
            **self.server.describe(),
            "final_model_is": "server model",
            "server_seconds_total": round(self.server_seconds, 3),
            "feature_shape": list(self.feature_shape),
            "edge_flops_train_per_sample": self.edge_flops_per_sample,
            **edge,
        }

    def encode_global(self, server_round: int, arrays: dict[str, np.ndarray]) -> ArrayRecord:
        """Nothing shared: no model weights travel, each node gets its own logits."""
        return ArrayRecord()

    def node_payload(
        self,
        server_round: int,
        node_id: int,
        message_type: str,
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> RecordDict | None:
        """The node's own server logits (:meth:`logits_for`) and the round's config."""
        return RecordDict({self.arrayrecord_key: self.logits_for(node_id), self.configrecord_key: config})

    # ------------------------------------------------------- Flower's methods
    def logits_for(self, node_id: int) -> ArrayRecord:
        """The node's own server logits and sample indices (empty before its first upload)."""
        if node_id not in self.server_logits:
            return ArrayRecord()
        indices, logits = self.server_logits[node_id]
        return encode_arrays(
            {INDICES_KEY: indices, LOGITS_KEY: logits}, encoding=self.encoding, float16=self.float16
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No evaluate round: both accuracies come with the training replies."""
        return []

    def summary(self) -> None:
        """Log the server side of FedGKT."""
        log(INFO, "\t├──> FedGKT server: %s, logits float16: %s", self.server.describe(), self.float16)
        super().summary()

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
        on_round_end: Any = None,
        **loop: Any,
    ) -> Result:
        """As :meth:`FedleanStrategy.start`, from the server model, without central evaluation.

        ``initial_arrays`` is replaced by the server model's initial state (the edge
        models never leave the clients); ``evaluate_fn`` is ignored with a log line;
        ``loop`` (``start_round``, ``min_replies``, ...) is passed on.
        """
        if evaluate_fn is not None:
            log(
                WARNING,
                "FedGKT: no single global model to evaluate centrally; skipping "
                "central evaluation (server_accuracy and edge_accuracy come every round)",
            )
        return super().start(
            grid,
            numpy_to_arrayrecord(self.server.state()),
            num_rounds,
            timeout,
            train_config,
            evaluate_config,
            None,
            on_round_end,
            **loop,
        )

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _edge_stats(replies: list[ParsedReply]) -> dict[str, float]:
        """Edge-model test accuracy/loss, weighted by each client's test examples."""
        pairs = [
            (len(r.arrays[TEST_LABELS_KEY]), r.metrics)
            for r in replies
            if EDGE_ACCURACY_KEY in r.metrics and len(r.arrays[TEST_LABELS_KEY])
        ]
        total = sum(n for n, _ in pairs)
        if not total:
            return {}
        return {
            "edge_accuracy": sum(n * scalar_metric(m, EDGE_ACCURACY_KEY) for n, m in pairs) / total,
            "edge_loss": sum(n * scalar_metric(m, EDGE_LOSS_KEY) for n, m in pairs) / total,
        }
