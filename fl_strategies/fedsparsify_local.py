"""FedSparsify-Local: clients prune, the server merges by majority voting.

Each round the server sends the (masked) global model and the round's target
sparsity ``s_t`` (``local-sparsity``). A client trains with the global mask
enforced, prunes its own model to ``s_t`` by global magnitude pruning, and sends
one mask, its keep mask as a position set within the global mask's kept positions
(``local-mask@positions``; at most one bit per kept position, less where the position
encoder's zlib forms win), then its values at those positions only (``known-values``).
The paper's accounting counts one bit per parameter for that mask. The server keeps a
position iff at least half of the replies keep it (``2 * votes >= N``) and
averages the kept positions (``mv_average``: ``all`` or ``nnz``, see
:func:`fl_strategies.pruning.majority_vote`).

Unlike the released reference code, local pruning is on, and the vote threshold
``2 * votes >= N`` is right for odd ``N`` (the reference's ``votes >= N // 2``
keeps a position that one client of three keeps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message

from .base import ParsedReply, ReplyError
from .codec import CodecError, decode_positions
from .fedsparsify import (
    LOCAL_MASK_KEY,
    LOCAL_SPARSITY_KEY,
    FedSparsifyGlobal,
    record_bytes,
)
from .pruning import MV_AVERAGES, Mask, apply_mask, flat_mask, majority_vote, unflat_mask
from .wire import ARRAYS_KEY, METRICS_KEY


@dataclass
class MaskedReply(ParsedReply):
    """A training reply with the client's keep mask."""

    mask: Mask = field(default_factory=dict)


class FedSparsifyLocal(FedSparsifyGlobal):
    """FedSparsify-Local: local magnitude pruning, majority-vote merge.

    Parameters
    ----------
    mv_average : str (default: "all")
        How kept positions are averaged: ``all`` clients (a client that pruned the
        position counts as zero; the reference's default) or only those that kept
        it (``nnz``).
    **kwargs
        Passed to :class:`fl_strategies.fedsparsify.FedSparsifyGlobal` (schedule,
        scope, ...).

    """

    method_name = "fedsparsify_local"

    def __init__(self, mv_average: str = "all", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mv_average not in MV_AVERAGES:
            raise ValueError(f"mv_average must be one of {MV_AVERAGES}, got {mv_average!r}")
        self.mv_average = mv_average

    def add_train_config(self, server_round: int, config: ConfigRecord) -> None:
        """Also send this round's local target sparsity."""
        super().add_train_config(server_round, config)
        config[LOCAL_SPARSITY_KEY] = self.target_sparsity(server_round)

    def parse_train_reply(self, server_round: int, message: Message) -> MaskedReply:
        """Validate the local mask (within the global one), then the values at its positions."""
        num_examples = self._num_examples(message.content)
        mask_id, keep = self.reply_mask(server_round, message)
        record = message.content.array_records.get(ARRAYS_KEY)
        if record is None or LOCAL_MASK_KEY not in record:
            raise ReplyError(f"array '{LOCAL_MASK_KEY}' missing")
        alive = np.flatnonzero(flat_mask(keep))
        try:
            # Positions within the kept ones: a client cannot revive what the server pruned.
            within = decode_positions(record[LOCAL_MASK_KEY].numpy(), alive.size)
        except CodecError as exc:
            raise ReplyError(f"'{LOCAL_MASK_KEY}': {exc}") from exc
        local_flat = np.zeros(flat_mask(keep).size, dtype=bool)
        local_flat[alive[within]] = True
        mask = unflat_mask(local_flat, keep)
        self.mask_bytes[server_round] += record_bytes(ArrayRecord({LOCAL_MASK_KEY: record[LOCAL_MASK_KEY]}))
        arrays = self.decode_known_reply(message, mask, extra_keys=(LOCAL_MASK_KEY,))
        self.node_mask_ids[message.metadata.src_node_id] = mask_id
        self.paper_bytes[server_round] += self._paper_message_bytes(arrays, True)
        return MaskedReply(
            message.metadata.src_node_id,
            num_examples,
            arrays,  # zero off the local mask already: scattered at its positions
            message.content.metric_records[METRICS_KEY],
            message.content,
            mask=mask,
        )

    def aggregate_replies(self, server_round: int, replies: list[ParsedReply]) -> dict[str, np.ndarray]:
        """Majority vote over the clients' masks; average the kept positions."""
        self.targets[server_round] = self.target_sparsity(server_round)
        merged, keep = majority_vote(
            [r.arrays for r in replies],
            [r.mask for r in replies],  # type: ignore[attr-defined]
            [r.weight for r in replies],
            self.mv_average,
        )
        self.keep = {name: keep[name] & self.keep[name] for name in self.keep}
        return apply_mask({**self.global_arrays, **merged}, self.keep)
