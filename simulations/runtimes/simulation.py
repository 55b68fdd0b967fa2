"""Run a composed plan on one of the two simulation runtimes.

``inline``: :class:`simulations.runtimes.inline.InlineGrid`, in this process.
``ray``: Flower's Simulation Runtime with the Ray backend; each virtual client gets
``client_resources`` (``num_cpus``, fractional ``num_gpus`` to share a GPU).
Flower's ``run_simulation`` passes an empty run_config, so the plan reaches the
ServerApp by closure.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_strategies.flwr_compat import run_simulation, shorten_engine_polling
from simulations.app.compose import RunPlan, compose_run, execute_plan
from simulations.app.config import ConfigError
from simulations.runtimes.inline import InlineGrid

log = logging.getLogger(__name__)


class SimulationFailedError(RuntimeError):
    """The simulation ended without writing its results."""


def run_inline(plan: RunPlan, quiet: bool = False, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the plan with the in-process Grid (from a checkpoint: ``resume``)."""
    from simulations.app.client_app import app as client_app

    grid = InlineGrid(client_app, int(plan.cfg["num_clients"]))
    plan.strategy.node_partitions = {
        node: int(context.node_config["partition-id"]) for node, context in grid.contexts.items()
    }
    return execute_plan(plan, grid, quiet=quiet, resume=resume)


def ray_backend_config(backend: dict[str, Any]) -> dict[str, Any]:
    """Flower's backend_config from ``backend.*`` (client resources, Ray init)."""
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "num_cpus": int(backend.get("total_cpus") or os.cpu_count() or 1),
    }
    if backend.get("total_gpus") is not None:
        init_args["num_gpus"] = int(backend["total_gpus"])
    return {
        "client_resources": {"num_cpus": float(backend["num_cpus"]), "num_gpus": float(backend["num_gpus"])},
        "init_args": init_args,
    }


def run_ray(plan: RunPlan, quiet: bool = False, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the plan with Flower's Simulation Runtime on Ray (from a checkpoint: ``resume``)."""
    from simulations.app.client_app import app as client_app

    summaries: list[dict[str, Any]] = []
    errors: list[Exception] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # Flower's in-memory grid polls for replies every 0.1 s by default; a short
        # interval keeps that sleep from dominating rounds of small models.
        if hasattr(grid, "pull_interval"):
            grid.pull_interval = float(plan.cfg["backend"].get("pull_interval", 0.01))
        try:
            summaries.append(execute_plan(plan, grid, quiet=quiet, resume=resume))
        except Exception as exc:  # Flower only logs it: raised again below, after the simulation
            errors.append(exc)
            raise

    if not plan.cfg.get("verbose", False):
        for name in ("flwr", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    engine_poll = plan.cfg["backend"].get("engine_poll_interval")
    if engine_poll and not shorten_engine_polling(float(engine_poll)):
        log.warning("backend.engine_poll_interval ignored: Flower's engine changed")
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=int(plan.cfg["num_clients"]),
        backend_name="ray",
        backend_config=ray_backend_config(plan.cfg["backend"]),
        verbose_logging=bool(plan.cfg.get("verbose", False)),
    )
    if errors and not summaries:
        raise errors[0]
    if not summaries:
        raise SimulationFailedError(
            f"the Ray simulation ended without results in {plan.out_dir}; see the log above"
        )
    return summaries[0]


def run_from_config(
    cfg: Any, out_dir: str | Path, quiet: bool = False, resume: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Compose (validating first) and run; returns the run's summary.

    ``resume``: a checkpoint of the run in ``out_dir`` to continue from.
    """
    plan = compose_run(cfg, out_dir)
    if plan.cfg["backend"]["name"] == "deployment":
        raise ConfigError(
            "backend=deployment runs under `flwr run` on a SuperLink "
            "(see docs/deploy.md), not in `simulations.run`"
        )
    runner = {"inline": run_inline, "ray": run_ray}[plan.cfg["backend"]["name"]]
    return runner(plan, quiet=quiet, resume=resume)
