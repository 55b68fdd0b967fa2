"""``gwpf`` and ``apf``: server-side parameter freezing from aggregated-update stability.

The freezable tensors are the model's trainable parameters: the builder derives their
names from the run's model, the rule clients apply to their own copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clients.methods.apf import APFClient
from clients.methods.gwpf import GWPFClient
from fl_strategies.apf import APF
from fl_strategies.gwpf import GWPF, parse_quorum

from .registry import BuildContext, MethodConfig, MethodEntry, register, require


@dataclass
class StabilityFreezingConfig(MethodConfig):
    """Knobs GWPF and APF share (an EMA of aggregated updates decides what freezes)."""

    alpha: float = 0.99  # EMA decay of the aggregated update (new_global - old_global)
    threshold: float = 0.5  # freeze when |ema| / (abs_ema + eps) < threshold
    tighten_at: float = 0.8  # halve the threshold every round while the frozen fraction exceeds this
    eps: float = 1e-12

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        require(0.0 <= self.alpha < 1.0, "method.alpha", self.alpha, "must be in [0, 1)")
        require(self.threshold > 0, "method.threshold", self.threshold, "must be > 0")
        require(0.0 <= self.tighten_at <= 1.0, "method.tighten_at", self.tighten_at, "must be in [0, 1]")
        require(self.eps > 0, "method.eps", self.eps, "must be > 0")

    def strategy_kwargs(self, ctx: BuildContext) -> dict[str, Any]:
        """Constructor arguments shared by :class:`GWPF` and :class:`APF`."""
        keys = [name for name, p in ctx.model().named_parameters() if p.requires_grad]
        return {
            "alpha": self.alpha,
            "threshold": self.threshold,
            "tighten_at": self.tighten_at,
            "eps": self.eps,
            "freezable_keys": keys,
            **ctx.common,
        }


@dataclass
class GWPFConfig(StabilityFreezingConfig):
    """GWPF (gradient-wise parameter freezing with thawing).

    Reference defaults from Dora233/GWPF ``sync_manager.py``; ``docs/gwpf.md`` explains each knob.
    """

    name: str = "gwpf"
    thaw_quorum: Any = "any"  # any | majority | a fraction in (0, 1] of the replying clients
    vote_alpha: float | None = None  # client EMA decay of frozen scalars' local drift (None = alpha)
    vote_min_rounds: int = 2  # a scalar votes once its drift EMAs hold this many rounds (our reading)

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        super().check(run)
        try:
            parse_quorum(self.thaw_quorum)
        except ValueError as exc:
            require(False, "method.thaw_quorum", self.thaw_quorum, str(exc))
        require(
            self.vote_alpha is None or 0.0 <= self.vote_alpha < 1.0,
            "method.vote_alpha",
            self.vote_alpha,
            "must be null or in [0, 1)",
        )
        require(
            self.vote_min_rounds >= 1,
            "method.vote_min_rounds",
            self.vote_min_rounds,
            "must be an integer >= 1",
        )


@dataclass
class APFConfig(StabilityFreezingConfig):
    """APF (adaptive parameter freezing), the comparator GWPF is judged against."""

    name: str = "apf"
    threshold: float = 0.05  # stable when |ema| / (abs_ema + eps) < threshold (our reading of APF)


register(
    MethodEntry(
        name="gwpf",
        config=GWPFConfig,
        client=GWPFClient,
        summary="freeze/thaw from aggregated gradients",
        build=lambda cfg, ctx: GWPF(thaw_quorum=parse_quorum(cfg.thaw_quorum), **cfg.strategy_kwargs(ctx)),
    )
)
register(
    MethodEntry(
        name="apf",
        config=APFConfig,
        client=APFClient,
        summary="adaptive parameter freezing",
        build=lambda cfg, ctx: APF(**cfg.strategy_kwargs(ctx)),
    )
)
