"""The run's typed config: Hydra structured-config schemas and their checks.

Every config group has a dataclass schema stored in Hydra's ConfigStore (top level
``run_schema``; ``dataset``/``model`` typed fields; ``partition/<name>_schema``,
``backend/<name>_schema`` and ``method/<name>_schema`` for the options of the groups
whose options differ in keys). The yaml files under ``simulations/conf/`` extend those
schemas, so Hydra rejects unknown keys and wrong types while composing, and
:func:`validate_config` re-checks any mapping (a Hydra config, or a plain dict built
by hand) against the same schemas before training: unknown keys (also those added
with ``+``), types, then each schema's ``check`` rules. Every error is one line that
names the key, e.g. ``method.sparsity=1.5: must be in [0, 1)``.

Method schemas live with their registry entries (:mod:`methods`); their defaults are
written only there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fl_strategies.base import ROBUST_AGGREGATIONS
from methods import ConfigError, MethodConfig, all_methods, require

__all__ = ["ConfigError", "RunConfig", "register_schemas", "validate_config"]


# ------------------------------------------------------------------ the groups
@dataclass
class DatasetConfig:
    """``dataset.*``: which data and where it lives (loaders: :mod:`clients.data`)."""

    name: str = MISSING
    root: str | None = None  # None = $FEDLEAN_DATA_ROOT or ~/.cache/fedlean/data
    download: bool = False  # fetch the data when absent (needs network)
    resize: int | None = None  # square side to resize images to (e.g. 32 for CNNs on digits)
    test_fraction: float = 0.2  # each client's local holdout for client-side evaluation

    def check(self, run: Mapping[str, Any]) -> None:
        """Known dataset, reachable data, sizes in range."""
        from clients.data import validate_data_source
        from clients.data.specs import get_spec  # light module: no dataset import

        try:
            get_spec(self.name)
        except (KeyError, ValueError) as exc:
            require(False, "dataset.name", self.name, str(exc))
        require(
            self.resize is None or self.resize >= 1,
            "dataset.resize",
            self.resize,
            "must be null or an integer >= 1",
        )
        require(
            0.0 <= self.test_fraction < 1.0, "dataset.test_fraction", self.test_fraction, "must be in [0, 1)"
        )
        try:
            validate_data_source(self.name, self.root, self.download)
        except FileNotFoundError as exc:
            require(False, "dataset.root", self.root, str(exc).splitlines()[0])


@dataclass
class ModelConfig:
    """``model.*``: the model zoo entry (:mod:`clients.models`)."""

    name: str = MISSING

    def check(self, run: Mapping[str, Any]) -> None:
        """A model the zoo knows."""
        from clients.models import MODEL_NAMES

        require(
            self.name in MODEL_NAMES, "model.name", self.name, f"unknown model; known: {sorted(MODEL_NAMES)}"
        )


@dataclass
class PartitionConfig:
    """``partition.*`` base: how the training split is divided among clients."""

    name: str = MISSING

    def check(self, run: Mapping[str, Any]) -> None:
        """Rules of the partition scheme."""


@dataclass
class IIDPartition(PartitionConfig):
    """Uniformly random, equal-sized partitions."""

    name: str = "iid"


@dataclass
class DirichletPartition(PartitionConfig):
    """Label proportions per client drawn from Dir(alpha): small alpha = more skew."""

    name: str = "dirichlet"
    alpha: float = 0.5

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        require(self.alpha > 0 and math.isfinite(self.alpha), "partition.alpha", self.alpha, "must be > 0")


@dataclass
class PathologicalPartition(PartitionConfig):
    """Each client holds ``classes_per_partition`` classes."""

    name: str = "pathological"
    classes_per_partition: int = 2

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        from clients.data.specs import get_spec

        num_classes = get_spec(run["dataset"]["name"]).num_classes
        k = self.classes_per_partition
        require(
            1 <= k <= num_classes,
            "partition.classes_per_partition",
            k,
            f"must be an integer in [1, {num_classes}] for {run['dataset']['name']}",
        )


@dataclass
class NaturalPartition(PartitionConfig):
    """By writer/speaker id (FEMNIST, Speech Commands): one id or a seeded group of ids per client."""

    name: str = "natural"

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        from clients.data.specs import NATURAL_ID_DATASETS

        require(
            run["dataset"]["name"] in NATURAL_ID_DATASETS,
            "partition.name",
            "natural",
            f"needs writer/speaker ids: only {sorted(NATURAL_ID_DATASETS)} have them",
        )


@dataclass
class SampledPartition(PartitionConfig):
    """Each client draws ``examples_per_partition`` examples with replacement (any population size)."""

    name: str = "sampled"
    examples_per_partition: int = 16

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        require(
            self.examples_per_partition >= 2,
            "partition.examples_per_partition",
            self.examples_per_partition,
            "must be >= 2 (one local test example, at least one to train on)",
        )


@dataclass
class ContiguousPartition(PartitionConfig):
    """Client i gets the i-th of ``num_clients`` contiguous shards, in order (WikiText-2: corpus pieces)."""

    name: str = "contiguous"


@dataclass
class BackendConfig:
    """``backend.*`` base: which runtime carries the messages."""

    name: str = MISSING

    def check(self, run: Mapping[str, Any]) -> None:
        """Rules of the runtime."""


@dataclass
class InlineBackend(BackendConfig):
    """Every client in this process, one after another (:mod:`simulations.runtimes.inline`)."""

    name: str = "inline"


@dataclass
class RayBackend(BackendConfig):
    """Flower's Simulation Runtime on Ray; resources are per virtual client.

    ``num_gpus: 0.25`` puts four clients on one GPU; ``total_cpus``/``total_gpus`` cap the
    private Ray instance. ``address`` (``auto``, ``host:port`` or ``ray://host:10001``) joins
    an existing Ray cluster instead, whose resources then count. ``actor_max_restarts``:
    how often Ray restarts a virtual-client actor whose process died (-1: always);
    ``actor_max_task_retries``: how often a call cut short by that death is run again.
    """

    name: str = "ray"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    total_cpus: float | None = None
    total_gpus: float | None = None
    pull_interval: float = 0.01  # s between the ServerApp's reply checks (Flower: 0.1)
    engine_poll_interval: float | None = 0.01  # s between the engine's message checks (None keeps Flower's)
    address: str | None = None  # an existing Ray cluster to join; None starts a private instance
    actor_max_restarts: int = -1
    actor_max_task_retries: int = 1

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        require(self.num_cpus > 0, "backend.num_cpus", self.num_cpus, "must be > 0")
        require(self.num_gpus >= 0, "backend.num_gpus", self.num_gpus, "must be >= 0")
        require(self.pull_interval > 0, "backend.pull_interval", self.pull_interval, "must be > 0")
        require(
            self.engine_poll_interval is None or self.engine_poll_interval > 0,
            "backend.engine_poll_interval",
            self.engine_poll_interval,
            "must be null or > 0",
        )
        require(
            self.actor_max_restarts >= -1,
            "backend.actor_max_restarts",
            self.actor_max_restarts,
            "must be >= -1",
        )
        require(
            self.address is None or (isinstance(self.address, str) and self.address.strip() != ""),
            "backend.address",
            self.address,
            "must be null, 'auto', 'host:port' or 'ray://host:port'",
        )
        for key in ("total_cpus", "total_gpus"):
            require(
                self.address is None or getattr(self, key) is None,
                f"backend.{key}",
                getattr(self, key),
                "caps a private Ray instance only; with backend.address the cluster's resources count",
            )
        if self.num_gpus > 0 and self.address is None:
            import torch

            require(
                torch.cuda.is_available(),
                "backend.num_gpus",
                self.num_gpus,
                "no CUDA GPU is visible here; Ray would wait forever for one (set backend.num_gpus=0)",
            )


@dataclass
class DeploymentBackend(BackendConfig):
    """Real SuperLink/SuperNodes (``flwr run . <connection>``); see ``docs/deploy.md``."""

    name: str = "deployment"
    poll_interval: float = 0.05  # s between the ServerApp's polls for replies (Flower's Grid: 3 s)

    def check(self, run: Mapping[str, Any]) -> None:  # noqa: D102
        require(self.poll_interval > 0, "backend.poll_interval", self.poll_interval, "must be > 0")


@dataclass
class OptimizerConfig:
    """``optimizer.*``: the clients' local optimizer."""

    name: str = "sgd"  # sgd | adam
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0

    def check(self, run: Mapping[str, Any]) -> None:
        """A known optimizer with usable hyper-parameters."""
        require(self.name in ("sgd", "adam"), "optimizer.name", self.name, "must be 'sgd' or 'adam'")
        require(self.lr > 0 and math.isfinite(self.lr), "optimizer.lr", self.lr, "must be > 0")
        require(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "must be in [0, 1)")
        require(
            self.weight_decay >= 0 and math.isfinite(self.weight_decay),
            "optimizer.weight_decay",
            self.weight_decay,
            "must be >= 0",
        )


@dataclass
class RunConfig:
    """The top level of a run (``simulations/conf/config.yaml`` composes the groups)."""

    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    method: Any = MISSING  # a MethodConfig subclass: methods/<family>.py
    partition: Any = MISSING  # a PartitionConfig subclass
    backend: Any = MISSING  # a BackendConfig subclass
    num_clients: int = 10
    num_rounds: int = 10
    fraction_train: float = 1.0  # fraction of clients sampled per training round
    fraction_evaluate: float = 1.0  # fraction sampled for client-side evaluation (0 = none)
    local_epochs: int = 2
    batch_size: int = 32
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = 0
    device: str = "auto"  # auto = CUDA when the process/actor has a GPU, else CPU
    torch_threads: int | None = 1  # CPU threads per process (1 is fastest for small models); None = torch's
    central_eval: bool = True  # evaluate the global model on the test split at the server
    save_model: bool = True  # final_model.npz in the output dir
    timeout: float = 3600.0  # seconds to wait for replies each round
    min_replies: float = 1  # usable training replies a round needs: an integer >= 1 or a fraction of sampled
    on_too_few_replies: str = "stop"  # below min_replies: stop (non-zero exit) | skip (keep the model)
    checkpoint_every: int = 1  # write checkpoint.pt every N rounds (0 = never); resume=<dir> continues
    # Simulation only: where each node's context.state lives between its calls. disk: in
    # <run dir>/client_state/<partition>/, loaded per call, so memory holds the nodes being
    # served only (simulations/app/state_store.py); memory: in the simulation process.
    client_state: str = "disk"
    verbose: bool = False  # Flower's INFO logs
    plugins: list[str] = field(default_factory=list)  # modules that register extra methods
    # Reply weights and robust aggregation (docs/reliability.md). In simulation a reply
    # may not claim more examples than its partition holds, whatever this bound says.
    max_num_examples: int = 100_000  # largest num-examples a reply may claim
    max_weight_share: float | None = None  # cap on one reply's share of a round's weight, in (0, 1]
    update_norm_bound: float | None = None  # clip a reply's update to this L2 norm (dense methods)
    aggregation: str = "mean"  # mean | median | trimmed_mean | krum (fedavg, fedprox only)
    trim_beta: float = 0.2  # fraction cut at each end by aggregation=trimmed_mean, in [0, 0.5)
    krum_num_malicious: int = 1  # faulty nodes aggregation=krum assumes

    def check(self, run: Mapping[str, Any]) -> None:
        """Rules of the top-level keys."""
        for key in ("num_clients", "num_rounds", "local_epochs", "batch_size"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be an integer >= 1")
        require(0 < self.fraction_train <= 1, "fraction_train", self.fraction_train, "must be in (0, 1]")
        require(
            0 <= self.fraction_evaluate <= 1, "fraction_evaluate", self.fraction_evaluate, "must be in [0, 1]"
        )
        require(
            self.fraction_train * self.num_clients >= 1,
            "fraction_train",
            self.fraction_train,
            f"samples no client of num_clients={self.num_clients}",
        )
        require(self.seed >= 0, "seed", self.seed, "must be an integer >= 0")
        require(self.timeout > 0 and math.isfinite(self.timeout), "timeout", self.timeout, "must be > 0")
        mr = self.min_replies
        require(
            (0 < mr < 1) or (mr >= 1 and mr == int(mr)),
            "min_replies",
            mr,
            "must be an integer >= 1 or a fraction in (0, 1) of the nodes sampled",
        )
        sampled = max(1, int(self.fraction_train * self.num_clients))
        require(
            mr < 1 or mr <= sampled,
            "min_replies",
            mr,
            f"can never be met: a round samples {sampled} nodes (fraction_train * num_clients)",
        )
        require(
            self.on_too_few_replies in ("stop", "skip"),
            "on_too_few_replies",
            self.on_too_few_replies,
            "must be 'stop' or 'skip'",
        )
        require(
            self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "must be an integer >= 0"
        )
        require(
            self.client_state in ("memory", "disk"),
            "client_state",
            self.client_state,
            "must be 'memory' or 'disk'",
        )
        require(
            self.torch_threads is None or self.torch_threads >= 1,
            "torch_threads",
            self.torch_threads,
            "must be an integer >= 1 or null",
        )
        self.check_weights(run)
        device = self.device
        require(
            device in ("auto", "cpu") or device == "cuda" or device.startswith("cuda:"),
            "device",
            device,
            "must be auto, cpu, cuda or cuda:N",
        )
        if device.startswith("cuda"):
            import torch

            require(
                torch.cuda.is_available(), "device", device, "no CUDA GPU is visible here (use device=auto)"
            )

    def check_weights(self, run: Mapping[str, Any]) -> None:
        """Rules of the reply-weight and robust-aggregation keys."""
        require(
            self.max_num_examples >= 1, "max_num_examples", self.max_num_examples, "must be an integer >= 1"
        )
        share = self.max_weight_share
        require(share is None or (0 < share <= 1), "max_weight_share", share, "must be null or in (0, 1]")
        bound = self.update_norm_bound
        require(
            bound is None or (bound > 0 and math.isfinite(bound)),
            "update_norm_bound",
            bound,
            "must be null or > 0",
        )
        require(
            self.aggregation in ROBUST_AGGREGATIONS,
            "aggregation",
            self.aggregation,
            f"must be one of {', '.join(ROBUST_AGGREGATIONS)}",
        )
        method = run["method"]["name"]
        require(
            self.aggregation == "mean" or method in ROBUST_METHODS,
            "aggregation",
            self.aggregation,
            f"is supported for {' and '.join(ROBUST_METHODS)} only, not method={method} (use mean)",
        )
        require(0 <= self.trim_beta < 0.5, "trim_beta", self.trim_beta, "must be in [0, 0.5)")
        require(self.krum_num_malicious >= 0, "krum_num_malicious", self.krum_num_malicious, "must be >= 0")


#: Methods whose strategy aggregates plain dense models (``aggregation`` other than mean).
ROBUST_METHODS = ("fedavg", "fedprox")

PARTITIONS: dict[str, type[PartitionConfig]] = {
    cls.name: cls
    for cls in (
        IIDPartition,
        DirichletPartition,
        PathologicalPartition,
        NaturalPartition,
        ContiguousPartition,
        SampledPartition,
    )
}
BACKENDS: dict[str, type[BackendConfig]] = {
    cls.name: cls for cls in (InlineBackend, RayBackend, DeploymentBackend)
}


def register_schemas(plugins: list[str] | tuple[str, ...] = ()) -> None:
    """Store every schema in Hydra's ConfigStore (idempotent; call before composing)."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for group, options in (("partition", PARTITIONS), ("backend", BACKENDS)):
        for name, cls in options.items():
            store.store(group=group, name=f"{name}_schema", node=cls)
    for name, entry in all_methods(plugins).items():
        store.store(group="method", name=f"{name}_schema", node=entry.config)


# ------------------------------------------------------------------ validation
@dataclass
class TypedRun:
    """A validated run: the plain resolved dict and the schema instances of its groups."""

    cfg: dict[str, Any]
    top: RunConfig
    method: MethodConfig


def _option(group: str, name: Any, options: Mapping[str, type]) -> type:
    require(name in options, f"{group}.name", name, f"must be one of {', '.join(options)}")
    return options[name]


def _merge_error(
    exc: OmegaConfBaseException, values: Mapping[str, Any], schema: type, prefix: str
) -> ConfigError:
    """One line naming the key, from an OmegaConf merge/validation error."""
    key = str(getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?")
    message = str(exc).splitlines()[0]
    if message.startswith("Key '") and "not in" in message:
        known = ", ".join(f.name for f in dataclasses.fields(schema))
        message = f"unknown key (known: {known})"
    return ConfigError(f"{prefix}{key}={_lookup(values, key)!r}: {message}")


def _typed(schema: type, values: Mapping[str, Any], prefix: str) -> Any:
    """``values`` merged onto ``schema``: unknown keys and bad types raise a one-line ConfigError."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as exc:
        raise _merge_error(exc, values, schema, prefix) from None


def validate_config(cfg: Mapping[str, Any] | DictConfig) -> TypedRun:
    """Check a composed run config against the schemas; raise :class:`ConfigError` on the first bad key.

    Parameters
    ----------
    cfg : Mapping[str, Any] or DictConfig
        A Hydra-composed config or a plain dict of the same shape.

    Returns
    -------
    TypedRun
        The resolved plain dict (what the rest of fedlean reads) and the typed schema
        instances (what strategy builders read).
    """
    if isinstance(cfg, DictConfig):
        plain = OmegaConf.to_container(cfg, resolve=True)
    else:
        plain = OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    for group in ("dataset", "model", "method", "partition", "backend"):
        require(
            isinstance(plain.get(group), Mapping) and "name" in plain[group],
            group,
            plain.get(group),
            "missing: choose one, e.g. " + f"{group}=<name>",
        )
    plugins = plain.get("plugins") or []
    require(
        isinstance(plugins, list) and all(isinstance(p, str) for p in plugins),
        "plugins",
        plugins,
        "must be a list of module names",
    )
    method_name = plain["method"]["name"]
    methods = all_methods(plugins)
    require(method_name in methods, "method.name", method_name, f"unknown method; known: {sorted(methods)}")
    groups = {
        "method": methods[method_name].config,
        "partition": _option("partition", plain["partition"]["name"], PARTITIONS),
        "backend": _option("backend", plain["backend"]["name"], BACKENDS),
    }
    top_values = {k: v for k, v in plain.items() if k not in groups}
    top = _typed_top(top_values)
    typed = {group: _typed(schema, plain[group], f"{group}.") for group, schema in groups.items()}
    # What the rest of fedlean reads: every key present, defaults filled from the schemas.
    resolved = OmegaConf.to_container(OmegaConf.structured(top), resolve=True)
    assert isinstance(resolved, dict)
    for group, value in typed.items():
        resolved[group] = OmegaConf.to_container(OmegaConf.structured(value), resolve=True)
    for section in (
        top,
        top.optimizer,
        top.dataset,
        top.model,
        typed["partition"],
        typed["backend"],
        typed["method"],
    ):
        section.check(resolved)
    return TypedRun(cfg=resolved, top=top, method=typed["method"])


def _typed_top(values: Mapping[str, Any]) -> RunConfig:
    schema = OmegaConf.structured(RunConfig)
    for group in ("method", "partition", "backend"):
        schema[group] = {}  # typed separately, by their own option's schema
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(schema, values))
    except OmegaConfBaseException as exc:
        raise _merge_error(exc, values, RunConfig, "") from None
    assert isinstance(obj, RunConfig)
    return obj


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
