"""Run a composed plan on one of the two simulation runtimes.

``inline``: :class:`simulations.runtimes.inline.InlineGrid`, in this process.
``ray``: Flower's Simulation Runtime with the Ray backend; each virtual client gets
``client_resources`` (``num_cpus``, fractional ``num_gpus`` to share a GPU). With
``backend.address`` the run joins an existing Ray cluster instead of starting a private
instance (see ``docs/ray.md``). Flower's ``run_simulation`` passes an empty run_config,
so the plan reaches the ServerApp by closure.

Three things make a Ray run behave like an inline one:

* **partition ids, not node ids.** Flower's simulation gives nodes random ids; before
  round 1 the ServerApp asks every node for its ``partition-id`` (one ``query.node_info``
  message each, :func:`query_node_partitions`) and the strategy samples by partition
  (:meth:`fl_strategies.base.FedleanStrategy.sample_nodes`), so a seed picks the same
  clients on every backend.
* **one Ctrl-C stops the run**: the first SIGINT makes the ServerApp stop at its next
  poll for replies; the results directory is marked interrupted, Flower's engine winds
  down and the run raises :class:`KeyboardInterrupt`. A second SIGINT is Python's default.
* **dead actors are replaced**: virtual-client actors are Ray actors with
  ``max_restarts`` (``backend.actor_max_restarts``), so a killed actor process comes back
  and the pool keeps its size; the message it was running comes back as an error reply,
  which the strategy drops with one log line naming the node.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fl_strategies.flwr_compat import run_simulation, shorten_engine_polling
from fl_strategies.wire import messages_bytes
from simulations.app.client_app import (
    NODE_INFO_KEY,
    NODE_INFO_MESSAGE_TYPE,
    PARTITION_ID_KEY,
    RAY_NODE_KEY,
    build_client_app,
)
from simulations.app.compose import RunPlan, compose_run, execute_plan
from simulations.app.config import ConfigError
from simulations.app.server_app import PollingGrid
from simulations.app.state_store import state_store_for
from simulations.runtimes.inline import InlineGrid

log = logging.getLogger(__name__)


class SimulationFailedError(RuntimeError):
    """The simulation ended without writing its results."""


class RunInterruptedError(Exception):
    """The run was stopped by a signal (an ``Exception``, so Flower's ServerApp thread hands it on)."""


def run_inline(plan: RunPlan, quiet: bool = False, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the plan with the in-process Grid (from a checkpoint: ``resume``)."""
    store = state_store_for(plan.cfg, plan.out_dir)
    grid = InlineGrid(build_client_app(store.root if store else None), int(plan.cfg["num_clients"]))
    plan.strategy.node_partitions.update(
        {node: int(context.node_config[PARTITION_ID_KEY]) for node, context in grid.contexts.items()}
    )
    return execute_plan(plan, grid, quiet=quiet, resume=resume, state_store=store)


def ray_backend_config(backend: dict[str, Any]) -> dict[str, Any]:
    """Flower's backend_config from ``backend.*`` (client resources, Ray init).

    Flower passes ``client_resources`` on to Ray's ``actor.options()``, which is where
    the actors' ``max_restarts`` goes. With ``address`` Ray joins that cluster and its
    resources are the cluster's (``total_cpus``/``total_gpus`` do not apply).
    """
    init_args: dict[str, Any] = {"include_dashboard": False}
    if backend.get("address"):
        init_args["address"] = str(backend["address"])
    else:
        init_args["num_cpus"] = int(backend.get("total_cpus") or os.cpu_count() or 1)
        if backend.get("total_gpus") is not None:
            init_args["num_gpus"] = int(backend["total_gpus"])
    return {
        "client_resources": {
            "num_cpus": float(backend["num_cpus"]),
            "num_gpus": float(backend["num_gpus"]),
            "max_restarts": int(backend.get("actor_max_restarts", -1)),
            "max_task_retries": int(backend.get("actor_max_task_retries", 1)),
        },
        "init_args": init_args,
    }


def query_node_partitions(
    grid: Grid, num_nodes: int, timeout: float
) -> tuple[dict[int, int], dict[int, str], int]:
    """Ask every node for its partition id: (node -> partition, node -> Ray node, bytes).

    Waits (up to ``timeout``) until ``num_nodes`` nodes are registered: Flower's engine
    registers them while the ServerApp thread already runs. Then one
    ``query.node_info`` message per node, before round 1. Its bytes (both ways,
    Flower's serialization) are returned, not added to any round's counters: they are
    setup traffic of the simulation, not of the method.

    Raises
    ------
    SimulationFailedError
        If a node does not answer or answers without a partition id.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < num_nodes:
        if time.monotonic() >= deadline:
            raise SimulationFailedError(
                f"{len(nodes)} of {num_nodes} nodes registered within timeout={timeout:g} s"
            )
        time.sleep(0.05)
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=NODE_INFO_MESSAGE_TYPE) for node in nodes
    ]
    sent = messages_bytes(messages)
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    partitions: dict[int, int] = {}
    ray_nodes: dict[int, str] = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            reason = str(reply.error.reason).splitlines()[0] if reply.error.reason else ""
            raise SimulationFailedError(f"node {node} did not answer the setup query: {reason}")
        info = reply.content.config_records.get(NODE_INFO_KEY, ConfigRecord())
        if PARTITION_ID_KEY not in info:
            raise SimulationFailedError(f"node {node} has no '{PARTITION_ID_KEY}' in its node_config")
        partitions[node] = int(info[PARTITION_ID_KEY])  # type: ignore[arg-type]
        if RAY_NODE_KEY in info:
            ray_nodes[node] = str(info[RAY_NODE_KEY])
    if len(partitions) < len(nodes):
        raise SimulationFailedError(
            f"{len(nodes) - len(partitions)} of {len(nodes)} nodes did not answer the setup query "
            f"within timeout={timeout:g} s"
        )
    if len(set(partitions.values())) != len(partitions):
        raise SimulationFailedError("two nodes report the same partition id")
    return partitions, ray_nodes, sent + messages_bytes(replies)


class StoppableGrid(PollingGrid):
    """A Grid that raises :class:`RunInterruptedError` at its next poll once ``stop`` is set."""

    def __init__(self, grid: Grid, interval: float, stop: threading.Event) -> None:
        super().__init__(grid, interval)
        self.stop = stop

    def _check(self) -> None:
        if self.stop.is_set():
            raise RunInterruptedError("interrupted by SIGINT")

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push through the wrapped Grid, unless the run was interrupted."""
        self._check()
        return super().push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull through the wrapped Grid, unless the run was interrupted."""
        self._check()
        return super().pull_messages(message_ids)


@contextmanager
def first_sigint_sets(stop: threading.Event) -> Iterator[None]:
    """While inside, the first SIGINT sets ``stop`` (and logs it); a second one raises.

    Outside the main thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        log.warning("SIGINT: stopping the run at the next poll for replies (again to force)")
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_ray(plan: RunPlan, quiet: bool = False, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the plan with Flower's Simulation Runtime on Ray (from a checkpoint: ``resume``)."""
    store = state_store_for(plan.cfg, plan.out_dir)
    # The actors get the store's absolute path with the ClientApp (its mod).
    client_app = build_client_app(store.root if store else None)
    summaries: list[dict[str, Any]] = []
    errors: list[Exception] = []
    server_app = ServerApp()
    backend = plan.cfg["backend"]
    stop = threading.Event()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # Flower's in-memory grid polls for replies every 0.1 s; a short interval keeps
        # that sleep from dominating rounds of small models.
        grid = StoppableGrid(grid, float(backend.get("pull_interval", 0.01)), stop)
        partitions, ray_nodes, setup_bytes = query_node_partitions(
            grid, int(plan.cfg["num_clients"]), float(plan.cfg.get("timeout", 3600))
        )
        plan.strategy.node_partitions.update(partitions)
        log.info(
            "setup query: %d nodes mapped to partitions (%d bytes, not counted in rounds); "
            "ClientApp actors on %d Ray node(s)",
            len(partitions),
            setup_bytes,
            len(set(ray_nodes.values())),
        )
        try:
            summaries.append(execute_plan(plan, grid, quiet=quiet, resume=resume, state_store=store))
        except Exception as exc:  # Flower only logs it: raised again below, after the simulation
            errors.append(exc)
            raise

    if not plan.cfg.get("verbose", False):
        for name in ("flwr", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    engine_poll = backend.get("engine_poll_interval")
    if engine_poll and not shorten_engine_polling(float(engine_poll)):
        log.warning("backend.engine_poll_interval ignored: Flower's engine changed")
    try:
        with first_sigint_sets(stop):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=int(plan.cfg["num_clients"]),
                backend_name="ray",
                backend_config=ray_backend_config(backend),
                verbose_logging=bool(plan.cfg.get("verbose", False)),
            )
    except RunInterruptedError:
        raise KeyboardInterrupt(f"run interrupted; rounds so far in {plan.out_dir}") from None
    if stop.is_set() and not summaries:
        raise KeyboardInterrupt(f"run interrupted; rounds so far in {plan.out_dir}")
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
