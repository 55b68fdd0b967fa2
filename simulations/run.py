"""Hydra entry point: ``python -m simulations.run [overrides]`` (``--multirun`` sweeps).

Groups: ``dataset/ model/ method/ partition/ backend/``; top-level keys in
``conf/config.yaml``. A bad override fails before any training with a message that
names the key. Results go to the Hydra output directory of each job.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from simulations.app.config import ConfigError
from simulations.runtimes.simulation import run_from_config


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Run one simulation; returns the final accuracy (for sweepers)."""
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = run_from_config(cfg, out_dir)
    except ConfigError as exc:
        print(f"fedlean: invalid config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"fedlean: results in {out_dir} (final accuracy {summary['final_accuracy']}, "
          f"{summary['total_mb']:.3f} MB up+down)")
    return summary["final_accuracy"]


if __name__ == "__main__":
    main()
