"""Hydra entry point: ``python -m simulations.run [overrides]`` (``--multirun`` sweeps).

Groups: ``dataset/ model/ method/ partition/ backend/`` under ``simulations/conf/``;
top-level keys and their defaults in :class:`simulations.app.config.RunConfig`. A bad
override fails before any training with one line that names the key (exit 2).
Results go to the Hydra output directory of each job.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from simulations import CONF_DIR
from simulations.app.config import ConfigError, validate_config
from simulations.runtimes.simulation import run_from_config


def precheck(argv: Sequence[str]) -> None:
    """Compose and validate plain overrides before Hydra does, to fail in one line.

    Hydra's own composition errors span several lines; sweeps (``--multirun``, ``a,b``)
    and ``hydra.*`` overrides are left to Hydra and checked per job.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    if any(arg.startswith("-") for arg in argv):
        return
    # hydra.searchpath decides which configs exist (a plug-in's yaml); other hydra.* keys do not matter here.
    overrides = [
        arg
        for arg in argv
        if arg.startswith("hydra.searchpath=") or not arg.startswith(("hydra.", "+hydra.", "++hydra."))
    ]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
    except HydraException as exc:
        raise ConfigError(_one_line(exc, overrides)) from None
    except ValueError as exc:  # a sweep list given without --multirun, and the like
        raise ConfigError(str(exc).splitlines()[0]) from None
    validate_config(cfg)


def _one_line(exc: Exception, overrides: Sequence[str]) -> str:
    """``<override>: <why>`` from a Hydra composition error."""
    import re

    text = str(exc)
    cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ and str(exc.__cause__) else ""
    missing = re.search(r"Could not find '(\w+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        return f"{group}={option}: no such option; available: {', '.join(known)}"
    key = re.search(r"(?:override|Could not override) '?([\w.+~]+)", text)
    if key:
        name = key.group(1).lstrip("+~")
        arg = next((o for o in overrides if o.lstrip("+~").split("=")[0] == name), name)
        return f"{arg}: {cause or text.splitlines()[0]}"
    return text.splitlines()[0]


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Run one simulation; returns the final accuracy (for sweepers)."""
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = run_from_config(cfg, out_dir)
    except ConfigError as exc:
        print(f"fedlean: invalid config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        f"fedlean: results in {out_dir} (final accuracy {summary['final_accuracy']}, "
        f"{summary['total_mb']:.3f} MB up+down)"
    )
    return summary["final_accuracy"]


if __name__ == "__main__":
    try:
        precheck(sys.argv[1:])
    except ConfigError as exc:
        print(f"fedlean: invalid config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    main()
