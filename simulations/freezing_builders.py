"""Strategy builders of the parameter-freezing methods (``gwpf``, ``apf``).

``method.*`` keys (``conf/method/gwpf.yaml``, ``conf/method/apf.yaml``): ``alpha``
(EMA decay of the aggregated updates, in [0, 1)), ``threshold`` (initial stability
threshold), ``tighten_at`` (frozen fraction above which the threshold halves),
``eps``; GWPF also ``thaw_quorum`` (``any`` | ``majority`` | a fraction in (0, 1]) and,
client side, ``vote_alpha`` (null = ``alpha``) and ``vote_min_rounds``.

The freezable tensors are the model's trainable parameters: the builder derives
their names from the run's model, the rule clients apply to their own copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clients.models import build_model
from fl_strategies.apf import APF
from fl_strategies.gwpf import GWPF, parse_quorum
from simulations.app.config import ConfigError


def trainable_keys(cfg: Mapping[str, Any]) -> list[str]:
    """Names of the trainable parameters of this run's model."""
    from simulations.app.compose import model_dims  # compose imports the registry that imports us

    dims = model_dims(cfg)
    model = build_model(dims["name"], dims["in_channels"], dims["num_classes"],
                        dims["image_size"])
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _common(cfg: Mapping[str, Any], default_threshold: float) -> dict[str, Any]:
    method = cfg["method"]
    alpha = method.get("alpha", 0.99)
    if not isinstance(alpha, int | float) or not 0.0 <= float(alpha) < 1.0:
        raise ConfigError(f"method.alpha={alpha!r}: must be in [0, 1)")
    vote_alpha = method.get("vote_alpha")
    if vote_alpha is not None and (not isinstance(vote_alpha, int | float)
                                   or not 0.0 <= float(vote_alpha) < 1.0):
        raise ConfigError(f"method.vote_alpha={vote_alpha!r}: must be null or in [0, 1)")
    threshold = method.get("threshold", default_threshold)
    if not isinstance(threshold, int | float) or float(threshold) <= 0:
        raise ConfigError(f"method.threshold={threshold!r}: must be > 0")
    return {"alpha": float(alpha), "threshold": float(threshold),
            "tighten_at": float(method.get("tighten_at", 0.8)),
            "eps": float(method.get("eps", 1e-12)),
            "freezable_keys": trainable_keys(cfg)}


def build_gwpf(cfg: Mapping[str, Any], common: dict[str, Any]) -> GWPF:
    """``method=gwpf``."""
    quorum = cfg["method"].get("thaw_quorum", "any")
    try:
        quorum = parse_quorum(quorum)
    except ValueError as exc:
        raise ConfigError(f"method.thaw_quorum={quorum!r}: {exc}") from None
    return GWPF(thaw_quorum=quorum, **_common(cfg, 0.5), **common)


def build_apf(cfg: Mapping[str, Any], common: dict[str, Any]) -> APF:
    """``method=apf``."""
    return APF(**_common(cfg, 0.05), **common)
