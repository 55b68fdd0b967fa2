"""FedSparsify (Global, Local) and the pruning baselines of its paper.

``fedsparsify_global``/``fedsparsify_local`` follow the schedule of eq. 1
(:func:`fl_strategies.pruning.sparsity_at`); ``oneshot`` prunes once and fine-tunes;
``random_prune`` prunes at random on the same schedule; ``snip``/``grasp`` prune at
initialisation from one client's scores; ``prunefl`` starts from one client's mask and
readjusts it from aggregated squared gradients. ``docs/fedsparsify.md`` and
``docs/prunefl.md`` explain each knob.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clients.methods.fedsparsify import FedSparsifyClient
from clients.methods.prunefl import PruneFLClient
from clients.sparse_inference import final_model_benchmark
from fl_strategies.fedsparsify import FedSparsifyGlobal
from fl_strategies.fedsparsify_local import FedSparsifyLocal
from fl_strategies.oneshot import OneShot
from fl_strategies.prune_at_init import Grasp, Snip
from fl_strategies.prunefl import PruneFL
from fl_strategies.random_prune import RandomPrune

from .registry import BuildContext, MethodConfig, MethodEntry, register, require


@dataclass
class PruningConfig(MethodConfig):
    """Knobs every pruning method has."""

    s_f: float = 0.9  # final sparsity over the prunable tensors
    prune_scope: str = "weights"  # weights (Conv/Linear weights) | all (every float parameter)
    benchmark_seconds: float = 1.0  # CPU inference throughput window per format at the end (0 = skip)

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        require(0.0 <= self.s_f < 1.0, "method.s_f", self.s_f, "must be in [0, 1)")
        require(
            self.prune_scope in ("weights", "all"),
            "method.prune_scope",
            self.prune_scope,
            "must be 'weights' or 'all'",
        )
        require(
            self.benchmark_seconds >= 0, "method.benchmark_seconds", self.benchmark_seconds, "must be >= 0"
        )

    def strategy_kwargs(self, ctx: BuildContext) -> dict[str, Any]:
        """Constructor arguments every pruning strategy takes."""
        return {
            "num_rounds": int(ctx.run["num_rounds"]),
            "s_f": self.s_f,
            "s_0": float(getattr(self, "s_0", 0.0)),
            "prune_scope": self.prune_scope,
            "seed": int(ctx.run["seed"]),
            "final_model_fn": final_model_benchmark(ctx.dims, self.benchmark_seconds),
            **ctx.common,
        }


@dataclass
class ScheduledPruningConfig(PruningConfig):
    """Progressive pruning on the schedule of eq. 1."""

    s_0: float = 0.0  # initial sparsity
    t_0: int = 1  # first pruning round
    t_end: int | None = None  # round where s_f is reached (T of eq. 1); None = num_rounds
    frequency: int = 1  # prune every f rounds
    exponent: Any = 3  # n of eq. 1 (int or float; Any keeps an int an int on the wire)

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        super().check(run)
        rounds = int(run["num_rounds"])
        require(0.0 <= self.s_0 <= self.s_f, "method.s_0", self.s_0, f"must be in [0, method.s_f={self.s_f}]")
        require(self.t_0 >= 0, "method.t_0", self.t_0, "must be an integer >= 0")
        if self.t_end is None:
            require(self.t_0 <= rounds, "method.t_0", self.t_0, f"must be <= num_rounds={rounds}")
        else:
            require(self.t_end >= self.t_0, "method.t_end", self.t_end, f"must be >= method.t_0={self.t_0}")
        require(self.frequency >= 1, "method.frequency", self.frequency, "must be an integer >= 1")
        require(
            isinstance(self.exponent, int | float)
            and not isinstance(self.exponent, bool)
            and self.exponent > 0,
            "method.exponent",
            self.exponent,
            "must be a number > 0",
        )

    def schedule_kwargs(self) -> dict[str, Any]:
        """The schedule's constructor arguments."""
        return {
            "t_0": self.t_0,
            "t_end": self.t_end,
            "frequency": self.frequency,
            "exponent": float(self.exponent),
        }


@dataclass
class FedSparsifyGlobalConfig(ScheduledPruningConfig):
    """FedSparsify-Global: the server prunes the aggregated model by magnitude."""

    name: str = "fedsparsify_global"


@dataclass
class FedSparsifyLocalConfig(ScheduledPruningConfig):
    """FedSparsify-Local: clients prune, the server merges masks by majority vote."""

    name: str = "fedsparsify_local"
    mv_average: str = "all"  # all (pruned count as 0, reference default) | nnz (only clients that kept it)

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        super().check(run)
        require(
            self.mv_average in ("all", "nnz"), "method.mv_average", self.mv_average, "must be 'all' or 'nnz'"
        )


@dataclass
class RandomPruneConfig(ScheduledPruningConfig):
    """Random pruning on FedSparsify's schedule (the paper's sanity baseline)."""

    name: str = "random_prune"


@dataclass
class OneShotConfig(PruningConfig):
    """One pruning step ``ft_rounds`` before the end, then masked fine-tuning (0 = OneShot)."""

    name: str = "oneshot"
    ft_rounds: int = 10

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        super().check(run)
        rounds = int(run["num_rounds"])
        require(
            0 <= self.ft_rounds < rounds,
            "method.ft_rounds",
            self.ft_rounds,
            f"must be in [0, num_rounds={rounds})",
        )


@dataclass
class SnipConfig(PruningConfig):
    """SNIP: prune at initialisation from one client's connection sensitivities."""

    name: str = "snip"
    score_batches: int = 0  # mini-batches scored; 0 = the client's whole training split

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        super().check(run)
        require(
            self.score_batches >= 0, "method.score_batches", self.score_batches, "must be an integer >= 0"
        )


@dataclass
class GraspConfig(SnipConfig):
    """GraSP: prune at initialisation preserving gradient flow."""

    name: str = "grasp"
    grasp_temperature: float = 200.0  # softmax temperature, as in GraSP's code

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        super().check(run)
        require(self.grasp_temperature > 0, "method.grasp_temperature", self.grasp_temperature, "must be > 0")


@dataclass
class PruneFLConfig(SnipConfig):
    """PruneFL: one client's initial mask, readjusted from aggregated squared gradients.

    ``s_f`` is the sparsity kept throughout (FedSparsify reports PruneFL at 0.3, its
    recommended value); ``score_batches`` are the initial client's batches.
    """

    name: str = "prunefl"
    s_f: float = 0.3
    readjust_every: int = 50  # rounds between mask readjustments (FedSparsify's setting)

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        super().check(run)
        require(
            self.readjust_every >= 1, "method.readjust_every", self.readjust_every, "must be an integer >= 1"
        )


def _at_init(cls: type[Snip] | type[Grasp]) -> Any:
    def build(cfg: SnipConfig, ctx: BuildContext) -> Snip | Grasp:
        return cls(
            score_batches=cfg.score_batches,
            grasp_temperature=float(getattr(cfg, "grasp_temperature", 200.0)),
            **cfg.strategy_kwargs(ctx),
        )

    return build


#: ``(name, config, client, summary, build)`` of every pruning method, registered below.
_METHODS: tuple[tuple[str, type[PruningConfig], type[FedSparsifyClient], str, Any], ...] = (
    (
        "fedsparsify_global",
        FedSparsifyGlobalConfig,
        FedSparsifyClient,
        "progressive magnitude pruning of the global model",
        lambda cfg, ctx: FedSparsifyGlobal(**cfg.schedule_kwargs(), **cfg.strategy_kwargs(ctx)),
    ),
    (
        "fedsparsify_local",
        FedSparsifyLocalConfig,
        FedSparsifyClient,
        "client-side pruning, majority-vote masks",
        lambda cfg, ctx: FedSparsifyLocal(
            mv_average=cfg.mv_average, **cfg.schedule_kwargs(), **cfg.strategy_kwargs(ctx)
        ),
    ),
    (
        "random_prune",
        RandomPruneConfig,
        FedSparsifyClient,
        "random pruning on FedSparsify's schedule",
        lambda cfg, ctx: RandomPrune(**cfg.schedule_kwargs(), **cfg.strategy_kwargs(ctx)),
    ),
    (
        "oneshot",
        OneShotConfig,
        FedSparsifyClient,
        "one-shot magnitude pruning (+ fine-tuning)",
        lambda cfg, ctx: OneShot(ft_rounds=cfg.ft_rounds, **cfg.strategy_kwargs(ctx)),
    ),
    ("snip", SnipConfig, FedSparsifyClient, "SNIP pruning at initialisation", _at_init(Snip)),
    ("grasp", GraspConfig, FedSparsifyClient, "GraSP pruning at initialisation", _at_init(Grasp)),
    (
        "prunefl",
        PruneFLConfig,
        PruneFLClient,
        "one client's initial mask, readjusted from aggregated squared gradients",
        lambda cfg, ctx: PruneFL(
            readjust_every=cfg.readjust_every, score_batches=cfg.score_batches, **cfg.strategy_kwargs(ctx)
        ),
    ),
)

for _name, _config, _client, _summary, _build in _METHODS:
    register(MethodEntry(name=_name, config=_config, client=_client, summary=_summary, build=_build))
