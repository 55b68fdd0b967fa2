"""Pruning at initialisation in federated form: SNIP and GraSP baselines.

As in the paper (following PruneFL and FedDST), one randomly picked client
scores the initial model on its own data, and the resulting mask is enforced,
unchanged, for the whole training.

**Round 0.** Before round 1 the server sends the initial model to one client with
``prune-score`` set (``snip`` or ``grasp``). That client does not train: it returns
the importance of every prunable weight (``scores`` ArrayRecord, float32 through
the codec). The server pools the scores of all prunable tensors, prunes the
least important weights to ``s_f`` (:func:`fl_strategies.pruning.prune_by_score`)
and starts round 1 from the masked model. The scoring exchange is counted as
round 0's bytes, so the totals include it. Importance is ``|g * w|`` for SNIP and
``w * Hg`` for GraSP (GraSP removes the weights with the largest ``-w * Hg``, i.e.
the smallest importance).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from .base import ReplyError, check_reply_array, first_line
from .codec import encode_arrays
from .fedsparsify import (
    GRASP_TEMPERATURE_KEY,
    PRUNE_SCOPE_KEY,
    SCORE_BATCHES_KEY,
    SCORE_KEY,
    SCORES_KEY,
    FedSparsifyGlobal,
)
from .flwr_compat import log
from .pruning import Mask, apply_mask, prune_by_score
from .wire import ARRAYS_KEY, CONFIG_KEY, RUN_CONFIG_KEY


class PruneAtInit(FedSparsifyGlobal):
    """A fixed mask at ``s_f`` from one client's scores of the initial model.

    Parameters
    ----------
    score_batches : int (default: 0)
        Mini-batches the client scores on; 0 = its whole local training set.
    grasp_temperature : float (default: 200.0)
        Softmax temperature of GraSP's loss (GraSP's code uses 200).
    **kwargs
        Passed to :class:`fl_strategies.fedsparsify.FedSparsifyGlobal` (``s_f``,
        ``prune_scope``, ``seed`` picks the scoring client).

    """

    method_name = "prune_at_init"
    score_name = ""

    def __init__(self, score_batches: int = 0, grasp_temperature: float = 200.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if score_batches < 0:
            raise ValueError(f"score_batches must be >= 0, got {score_batches}")
        self.score_batches = int(score_batches)
        self.grasp_temperature = float(grasp_temperature)
        self.scoring_node: int | None = None

    def target_sparsity(self, server_round: int) -> float:
        """``s_f`` from the start: the mask is fixed."""
        return self.s_f

    def select_keep(self, server_round: int, arrays: Mapping[str, np.ndarray], sparsity: float) -> Mask:
        """The round-0 mask, unchanged."""
        return self.keep

    def initial_mask(
        self, grid: Grid, arrays: dict[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]:
        """Round 0: one client scores the initial model; prune it to ``s_f``."""
        nodes = self.order_nodes(grid.get_node_ids())  # by partition: the same client on every backend
        random.Random(self.seed).shuffle(nodes)
        for node in nodes:
            try:
                scores = self._request_scores(grid, node, arrays, timeout)
            except Exception as exc:  # noqa: BLE001 - no reply may end the run
                reason = (
                    first_line(exc)
                    if isinstance(exc, ReplyError)
                    else f"{type(exc).__name__}: {first_line(exc)}"
                )
                self.dropped[0].append(f"{node}: {reason}")
                log(WARNING, "round 0: no %s scores from node %s: %s", self.score_name, node, reason)
                continue
            self.scoring_node = node
            self.keep = prune_by_score(scores, self.keep, self.s_f)
            log(INFO, "round 0: %s mask from node %s", self.score_name, node)
            return apply_mask(arrays, self.keep)
        raise RuntimeError(f"no node returned {self.score_name} scores")

    def _request_scores(
        self, grid: Grid, node: int, arrays: dict[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]:
        config = ConfigRecord(
            {
                RUN_CONFIG_KEY: json.dumps(self.client_config, sort_keys=True),
                "server-round": 0,
                SCORE_KEY: self.score_name,
                PRUNE_SCOPE_KEY: self.prune_scope,
                SCORE_BATCHES_KEY: self.score_batches,
                GRASP_TEMPERATURE_KEY: self.grasp_temperature,
            }
        )
        content = RecordDict({ARRAYS_KEY: encode_arrays(arrays, encoding=self.encoding), CONFIG_KEY: config})
        messages = [Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)]
        self._count(0, "bytes_down", messages)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        self._count(0, "bytes_up", replies)
        if len(replies) != 1:
            raise ReplyError("no reply")
        reply = replies[0]
        if reply.has_error():
            raise ReplyError(f"error reply: {first_line(reply.error.reason)}")
        shapes = {name: keep.shape for name, keep in self.keep.items()}
        scores = self.decode_reply(0, reply.content, SCORES_KEY, shapes)
        for name, value in scores.items():
            check_reply_array(name, value, self.keep[name].shape)
        return scores


class Snip(PruneAtInit):
    """SNIP (Lee et al., 2019): importance ``|g * w|`` on one client's data."""

    method_name = "snip"
    score_name = "snip"


class Grasp(PruneAtInit):
    """GraSP (Wang et al., 2020): keep the weights with the largest ``w * Hg``."""

    method_name = "grasp"
    score_name = "grasp"
