"""OneShot pruning baseline (with or without federated fine-tuning).

The dense model is trained with FedAvg; after round ``num_rounds - ft_rounds`` the
server prunes the global model once, by global magnitude pruning, to ``s_f``; the
remaining ``ft_rounds`` rounds train with the mask enforced (OneShot w/ FineTuning;
the paper uses 10). ``ft_rounds = 0`` is plain OneShot: the final model is pruned
after the last round and never trained sparse.
"""

from __future__ import annotations

from typing import Any

from .fedsparsify import FedSparsifyGlobal


class OneShot(FedSparsifyGlobal):
    """Prune once to ``s_f`` after round ``num_rounds - ft_rounds``.

    Parameters
    ----------
    num_rounds : int
        Rounds of the run.
    ft_rounds : int (default: 10)
        Masked fine-tuning rounds after the pruning round (0 = no fine-tuning).
    **kwargs
        Passed to :class:`fl_strategies.fedsparsify.FedSparsifyGlobal` (``s_f``,
        ``prune_scope``, ...). The schedule is eq. 1 with ``t_0 = T`` = the
        pruning round, i.e. a step from ``s_0`` to ``s_f``.

    """

    method_name = "oneshot"

    def __init__(self, num_rounds: int, ft_rounds: int = 10, **kwargs: Any) -> None:
        if not 0 <= ft_rounds < num_rounds:
            raise ValueError(f"ft_rounds must be in [0, num_rounds), got {ft_rounds}")
        prune_round = num_rounds - ft_rounds
        super().__init__(num_rounds=num_rounds, t_0=prune_round, t_end=prune_round, frequency=1, **kwargs)
        self.ft_rounds = ft_rounds
