"""Strategy builders of the pruning methods (FedSparsify and the paper's baselines).

``method.*`` keys (``conf/method/<name>.yaml``):

``s_f``, ``s_0``, ``t_0``, ``t_end`` (``T`` of eq. 1, null = ``num_rounds``),
``frequency``, ``exponent``: the schedule (:func:`fl_strategies.pruning.sparsity_at`);
``prune_scope``: ``weights`` (Conv/Linear weights) or ``all``;
``mv_average``: ``all`` or ``nnz`` (``fedsparsify_local``);
``ft_rounds``: masked fine-tuning rounds after the one pruning step (``oneshot``);
``score_batches``, ``grasp_temperature``: round-0 scoring (``snip``, ``grasp``);
``benchmark_seconds``: CPU inference measuring window per setting (0 = skip).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fl_strategies.fedsparsify import FedSparsifyGlobal
from fl_strategies.fedsparsify_local import FedSparsifyLocal
from fl_strategies.oneshot import OneShot
from fl_strategies.prune_at_init import Grasp, Snip
from fl_strategies.random_prune import RandomPrune
from simulations.app.config import ConfigError
from simulations.tools.sparse_inference import final_model_benchmark


def _int(method: Mapping[str, Any], key: str, default: int, low: int) -> int:
    value = method.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"method.{key}={value!r}: must be an integer >= {low}")
    return value


def _common_pruning(cfg: Mapping[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    from simulations.app.compose import model_dims  # compose imports the registry that imports us

    method = cfg["method"]
    s_0, s_f = float(method.get("s_0", 0.0)), float(method.get("s_f", 0.9))
    if s_0 > s_f:
        raise ConfigError(f"method.s_0={s_0!r}: must be <= method.s_f={s_f}")
    scope = method.get("prune_scope", "weights")
    if scope not in ("weights", "all"):
        raise ConfigError(f"method.prune_scope={scope!r}: must be 'weights' or 'all'")
    seconds = method.get("benchmark_seconds", 1.0)
    if not isinstance(seconds, int | float) or seconds < 0:
        raise ConfigError(f"method.benchmark_seconds={seconds!r}: must be >= 0")
    return {
        "num_rounds": int(cfg["num_rounds"]),
        "s_0": s_0,
        "s_f": s_f,
        "prune_scope": scope,
        "seed": int(cfg["seed"]),
        "final_model_fn": final_model_benchmark(model_dims(cfg), float(seconds)),
        **common,
    }


def _schedule(cfg: Mapping[str, Any]) -> dict[str, Any]:
    method, rounds = cfg["method"], int(cfg["num_rounds"])
    t_0 = _int(method, "t_0", 1, 0)
    t_end = method.get("t_end")
    if t_end is not None:
        t_end = _int(method, "t_end", rounds, t_0)
    elif rounds < t_0:
        raise ConfigError(f"method.t_0={t_0}: must be <= num_rounds={rounds}")
    exponent = method.get("exponent", 3)
    if not isinstance(exponent, int | float) or isinstance(exponent, bool) or exponent <= 0:
        raise ConfigError(f"method.exponent={exponent!r}: must be > 0")
    return {"t_0": t_0, "t_end": t_end, "frequency": _int(method, "frequency", 1, 1),
            "exponent": float(exponent)}


def _local(cfg: Mapping[str, Any], common: dict[str, Any]) -> FedSparsifyLocal:
    average = cfg["method"].get("mv_average", "all")
    if average not in ("all", "nnz"):
        raise ConfigError(f"method.mv_average={average!r}: must be 'all' or 'nnz'")
    return FedSparsifyLocal(mv_average=average, **_schedule(cfg), **_common_pruning(cfg, common))


def _oneshot(cfg: Mapping[str, Any], common: dict[str, Any]) -> OneShot:
    ft_rounds = _int(cfg["method"], "ft_rounds", 10, 0)
    if ft_rounds >= int(cfg["num_rounds"]):
        raise ConfigError(f"method.ft_rounds={ft_rounds}: must be < num_rounds={cfg['num_rounds']}")
    return OneShot(ft_rounds=ft_rounds, **_common_pruning(cfg, common))


def _at_init(cls: type[Snip] | type[Grasp]):  # noqa: ANN202
    def build(cfg: Mapping[str, Any], common: dict[str, Any]) -> Snip | Grasp:
        method = cfg["method"]
        temperature = method.get("grasp_temperature", 200.0)
        if not isinstance(temperature, int | float) or temperature <= 0:
            raise ConfigError(f"method.grasp_temperature={temperature!r}: must be > 0")
        return cls(score_batches=_int(method, "score_batches", 0, 0),
                   grasp_temperature=float(temperature), **_common_pruning(cfg, common))

    return build


PRUNING_BUILDERS = {
    "fedsparsify_global": lambda cfg, common: FedSparsifyGlobal(
        **_schedule(cfg), **_common_pruning(cfg, common)),
    "fedsparsify_local": _local,
    "oneshot": _oneshot,
    "random_prune": lambda cfg, common: RandomPrune(
        **_schedule(cfg), **_common_pruning(cfg, common)),
    "snip": _at_init(Snip),
    "grasp": _at_init(Grasp),
}
