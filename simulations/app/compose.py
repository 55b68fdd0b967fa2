"""From a resolved config to a runnable plan, and the plan's execution on any Grid.

The same :func:`compose_run` / :func:`execute_plan` pair serves the in-process
runtime, Flower's Ray simulation and the deployment ServerApp, so a run behaves
the same whichever runtime carries its messages.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from clients.data import DataDownloadError
from clients.data.specs import get_spec
from clients.flops import cached_flops
from clients.methods import load_arrays, model_arrays
from clients.models import build_from_dims, count_params, model_dims
from clients.train import set_torch_threads
from fl_strategies.base import FedleanStrategy, arrayrecord_to_numpy, numpy_to_arrayrecord
from methods import BuildContext, ConfigError, get_method
from simulations.app.checkpoint import rng_state
from simulations.app.config import validate_config
from simulations.app.results import ResultsWriter, write_atomic
from simulations.app.state_store import NodeStateStore

log = logging.getLogger(__name__)


def to_dict(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A resolved plain-dict copy of a config."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def client_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What clients must know, sent as JSON in every message (clients have no Hydra)."""
    dataset, partition, opt = cfg["dataset"], cfg["partition"], cfg["optimizer"]
    root = dataset.get("root")
    # Ray actors need not share the driver's working directory: pin relative roots.
    root = os.path.abspath(root) if root else None
    settings: dict[str, Any] = {
        "method": dict(cfg["method"]),
        "data": {
            "name": dataset["name"],
            "root": root,
            "download": bool(dataset.get("download", False)),
            "resize": dataset.get("resize"),
            "test_fraction": float(dataset.get("test_fraction", 0.2)),
            "partition": partition["name"],
            "alpha": float(partition.get("alpha", 0.5)),
            "classes_per_partition": int(partition.get("classes_per_partition", 2)),
            "examples_per_partition": int(partition.get("examples_per_partition", 16)),
            "seed": int(cfg["seed"]),
        },
        "model": model_dims(cfg),
        "train": {
            "epochs": int(cfg["local_epochs"]),
            "batch_size": int(cfg["batch_size"]),
            "optimizer": opt["name"],
            "lr": float(opt["lr"]),
            "momentum": float(opt.get("momentum", 0.0)),
            "weight_decay": float(opt.get("weight_decay", 0.0)),
        },
        "seed": int(cfg["seed"]),
        "device": cfg.get("device", "auto"),
        "torch_threads": cfg.get("torch_threads"),
    }
    if cfg.get("plugins"):  # only then: every message carries these settings
        settings["plugins"] = list(cfg["plugins"])
    return settings


@dataclass
class RunPlan:
    """A composed run: strategy, initial model, central evaluation, output place."""

    cfg: dict[str, Any]
    strategy: FedleanStrategy
    initial_arrays: ArrayRecord
    out_dir: Path
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None
    model_info: dict[str, Any] = field(default_factory=dict)
    #: Figures for the summary that the run does not need before its end (FLOPs).
    late_info: Callable[[], dict[str, Any]] | None = None


#: When the entry point's imports were done (:func:`mark_imported`); the start of
#: :func:`compose_run` where no entry point marked it.
_imported_at: float | None = None


def mark_imported() -> None:
    """Note that the entry point's imports are done: ``startup_seconds`` counts from here."""
    global _imported_at
    _imported_at = time.time()


def _seconds_since_process_start() -> float | None:
    """Seconds since this process started (Linux ``/proc``, 10 ms steps), else None."""
    try:
        with open("/proc/self/stat") as fh:
            # Field 22 (start time in clock ticks after boot); the name in field 2 may hold spaces.
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def startup_seconds() -> dict[str, float | None]:
    """Seconds from the process's start and from :func:`mark_imported` until now."""
    since_start = _seconds_since_process_start()
    return {
        "from_process_start": None if since_start is None else round(since_start, 3),
        "from_imports": None if _imported_at is None else round(time.time() - _imported_at, 3),
    }


def _flop_figures(model: torch.nn.Module, sample: torch.Tensor) -> dict[str, int]:
    forward, train = cached_flops(model, sample)
    return {"model_flops_forward": forward, "model_flops_train": train}


def seed_everything(seed: int) -> None:
    """Seed Python (Flower's node sampling), numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def central_evaluator(cfg: Mapping[str, Any]) -> Callable[[int, ArrayRecord], MetricRecord]:
    """Server-side evaluation of the global model on the dataset's test split."""
    from clients.data import load_central_testset
    from clients.data.batches import batch_loader
    from clients.train import evaluate_model, pick_device

    settings = client_settings(cfg)
    model = build_from_dims(settings["model"])
    testset = load_central_testset(settings["data"])
    device = pick_device(settings["device"])

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_arrays(model, arrayrecord_to_numpy(arrays))
        stats = evaluate_model(model, batch_loader(testset, batch_size=512), device)
        return MetricRecord({"loss": stats.loss, "accuracy": stats.accuracy})

    return evaluate


def simulated_partition_sizes(cfg: Mapping[str, Any]) -> list[int] | None:
    """Each simulated client's training examples (None in deployment: the server cannot know).

    Raises :class:`ConfigError` (one line) where ``num_clients`` exceeds the training
    examples, a partition is larger than ``max_num_examples``, or the data cannot be
    fetched.
    """
    if cfg["backend"]["name"] == "deployment":
        return None
    from clients.data import partition_train_sizes, train_set_size

    data = client_settings(cfg)["data"]
    num_clients = int(cfg["num_clients"])
    total = train_set_size(data)
    if num_clients > total:
        raise ConfigError(
            f"num_clients={num_clients}: more than the {total} training examples of {data['name']}"
        )
    sizes = partition_train_sizes(data, num_clients)
    bound = int(cfg["max_num_examples"])
    if max(sizes) > bound:
        raise ConfigError(
            f"max_num_examples={bound}: below the largest partition "
            f"({max(sizes)} training examples); raise it"
        )
    return sizes


def compose_run(cfg: Mapping[str, Any] | DictConfig, out_dir: str | Path) -> RunPlan:
    """Validate the config and build everything the server side of a run needs.

    The method's registry entry (:mod:`methods`) builds its strategy from the typed
    method config and a :class:`~methods.BuildContext` that holds the run's model,
    built once here.
    """
    if _imported_at is None:
        mark_imported()
    typed = validate_config(cfg)
    cfg = typed.cfg
    try:
        partition_sizes = simulated_partition_sizes(cfg)
        evaluate_fn = central_evaluator(cfg) if cfg.get("central_eval", True) else None
    except DataDownloadError as exc:
        raise ConfigError(f"dataset.download=true: {exc}") from None
    seed_everything(int(cfg["seed"]))
    # The initial weights come first from the seeded generator, as in every earlier release.
    ctx = BuildContext(run=cfg, common={}, dims=model_dims(cfg))
    model = ctx.model()
    initial_arrays = numpy_to_arrayrecord(model_arrays(model))
    sample = get_spec(cfg["dataset"]["name"]).sample_input(cfg["dataset"].get("resize"))
    model_info = {"model_params": count_params(model)}
    # Counted (or read from clients.cache) for the summary at the end, on a copy of
    # the initial model: the first count imports torch's dispatch machinery (seconds
    # for large models), which no round needs.
    late_info = functools.cache(functools.partial(_flop_figures, copy.deepcopy(model), sample))
    num_clients = int(cfg["num_clients"])
    ctx.common = {
        "fraction_train": float(cfg["fraction_train"]),
        "fraction_evaluate": float(cfg["fraction_evaluate"]),
        "min_train_nodes": max(1, int(cfg["fraction_train"] * num_clients)),
        "min_evaluate_nodes": (
            max(1, int(cfg["fraction_evaluate"] * num_clients)) if cfg["fraction_evaluate"] > 0 else 0
        ),
        "min_available_nodes": num_clients,
        "client_config": client_settings(cfg),
        "max_num_examples": int(cfg["max_num_examples"]),
        "max_weight_share": cfg["max_weight_share"],
        "update_norm_bound": cfg["update_norm_bound"],
        "robust_aggregation": cfg["aggregation"],
        "trim_beta": float(cfg["trim_beta"]),
        "krum_num_malicious": int(cfg["krum_num_malicious"]),
    }
    entry = get_method(cfg["method"]["name"], cfg["plugins"])
    strategy = entry.build(typed.method, ctx)
    strategy.partition_sizes = partition_sizes
    return RunPlan(
        cfg=cfg,
        strategy=strategy,
        initial_arrays=initial_arrays,
        out_dir=Path(out_dir),
        evaluate_fn=evaluate_fn,
        model_info=model_info,
        late_info=late_info,
    )


#: The run's resolved config, written next to its results (``resume=<dir>`` reads it).
CONFIG_FILE = "config.json"


def execute_plan(
    plan: RunPlan,
    grid: Grid,
    quiet: bool = False,
    resume: Mapping[str, Any] | None = None,
    state_store: NodeStateStore | None = None,
) -> dict[str, Any]:
    """Run the strategy over ``grid`` and write the results; returns the summary.

    Parameters
    ----------
    plan : RunPlan
        What :func:`compose_run` built.
    grid : Grid
        The runtime's Grid.
    quiet : bool (default: False)
        No progress lines.
    resume : Mapping[str, Any] | None (default: None)
        A checkpoint (:func:`simulations.app.checkpoint.load_checkpoint`) of this run:
        the strategy, the results so far, the random generators and, where the grid
        can take them back (inline), the nodes' states are restored and the rounds go
        on from the checkpoint's round. With ``state_store`` the nodes' states are on
        disk by partition, and the strategy's per-node records follow the partitions
        to this run's node ids (:meth:`rekey_nodes`; Ray names its nodes anew). Where
        the nodes' states cannot be restored, the strategy forgets what the nodes held
        (:meth:`reset_node_state`): every node gets a full resync.
    state_store : NodeStateStore | None (default: None)
        The nodes' state store the grid's ClientApp uses (``client_state=disk``): a
        new run empties it, a resumed one rolls it back to the checkpoint's round,
        each checkpoint lets it drop older versions, a finished run deletes it.

    Raises
    ------
    TooFewRepliesError
        A round got fewer usable replies than ``min_replies`` and ``on_too_few_replies``
        is ``stop``; the directory is marked interrupted with the reason.

    """
    from simulations.app.checkpoint import KILL_AFTER_ROUND_ENV, save_checkpoint, set_rng_state

    cfg = plan.cfg
    if not cfg.get("verbose", False):
        logging.getLogger("flwr").setLevel(logging.WARNING)
    seed_everything(int(cfg["seed"]))
    set_torch_threads(cfg.get("torch_threads"))
    num_rounds = int(cfg["num_rounds"])
    writer = ResultsWriter(plan.out_dir, num_rounds, quiet=quiet, resume=resume["writer"] if resume else None)
    write_atomic(plan.out_dir / CONFIG_FILE, json.dumps(cfg, indent=2, sort_keys=True).encode())
    start_round = 0  # a new run: round 0 is the initial model
    if resume is not None:
        # The runtime has just mapped this run's nodes to partitions; on Ray the node
        # ids are new, so the checkpoint's mapping must not replace it.
        node_partitions = dict(plan.strategy.node_partitions)
        plan.strategy.load_checkpoint_state(resume["strategy"])
        if node_partitions:
            plan.strategy.node_partitions = node_partitions
        restorable = hasattr(grid, "load_checkpoint_state") and resume.get("nodes") is not None
        if restorable:
            grid.load_checkpoint_state(resume["nodes"])
        elif state_store is not None:
            # The nodes' own state is on disk by partition id, so it survives new node
            # ids (Ray): what the strategy knows of each node follows its partition.
            now = {partition: node for node, partition in plan.strategy.node_partitions.items()}
            before = resume["strategy"].get("node_partitions") or {}
            plan.strategy.rekey_nodes({node: now[p] for node, p in before.items() if p in now})
            log.info(
                "resume: node states from %s, matched to this run's nodes by partition", state_store.root
            )
        else:
            log.warning("resume: the nodes' own state is not restored here; every node resyncs in full")
            plan.strategy.reset_node_state()
        set_rng_state(resume["rng"])
        start_round = int(resume["round"]) + 1
        log.info("resume: %s continues after round %d of %d", plan.out_dir, start_round - 1, num_rounds)
    every = int(cfg.get("checkpoint_every", 1))
    if state_store is not None:
        state_store.start(int(resume["round"]) if resume is not None else None, checkpoints=every > 0)
    kill_after = os.environ.get(KILL_AFTER_ROUND_ENV)

    startup: dict[str, float | None] = {}

    def on_round_end(record: dict[str, Any]) -> None:
        server_round = int(record["round"])
        if server_round == 0:  # the initial model's evaluation: the run is started
            startup.update(startup_seconds())
        writer.on_round(record)
        if every and server_round % every == 0:
            save_checkpoint(
                plan.out_dir,
                {
                    "round": server_round,
                    "strategy": plan.strategy.checkpoint_state(),
                    "writer": writer.checkpoint_state(),
                    "rng": rng_state(),
                    "nodes": grid.checkpoint_state() if hasattr(grid, "checkpoint_state") else None,
                },
            )
            writer.checkpointed()
            if state_store is not None:
                state_store.checkpointed(server_round)
        if kill_after is not None and server_round == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)  # test-only (KILL_AFTER_ROUND_ENV)

    try:
        plan.strategy.start(
            grid,
            plan.initial_arrays,
            num_rounds=num_rounds,
            timeout=float(cfg.get("timeout", 3600)),
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
            evaluate_fn=plan.evaluate_fn,
            on_round_end=on_round_end,
            start_round=start_round,
            min_replies=float(cfg.get("min_replies", 1)),
            on_too_few_replies=str(cfg.get("on_too_few_replies", "stop")),
        )
    except BaseException as exc:  # Ctrl-C included: the directory must say the run did not finish
        writer.interrupted(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip())
        raise
    summary = {
        "method": cfg["method"]["name"],
        "dataset": cfg["dataset"]["name"],
        "model": cfg["model"]["name"],
        "partition": cfg["partition"]["name"],
        "backend": cfg["backend"]["name"],
        "seed": int(cfg["seed"]),
        "num_clients": int(cfg["num_clients"]),
        **plan.model_info,
        **(plan.late_info() if plan.late_info is not None else {}),
        **plan.strategy.summary_fields(),
    }
    if startup:  # a new run (a resumed one has no round 0)
        summary["startup_seconds"] = startup
    final = plan.strategy.global_arrays
    result = writer.finish(summary, final if cfg.get("save_model", True) else None)
    if state_store is not None:
        state_store.remove()
    return result
