"""The one ClientApp of fedlean, for simulation and for real devices alike.

Everything a client needs to know arrives in the message: the run's client-side
settings travel as JSON in the ConfigRecord (no Hydra on devices). A client finds
its data through ``node_config``: ``partition-id``/``num-partitions`` (simulation,
demos) or ``data-path`` (a device's own ``.npz`` file).

Data and the model template are built once per process (cached), not once per
round: in Ray simulation an actor serves many rounds and virtual clients.
"""

from __future__ import annotations

import copy
import json
import sys
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from clients.data import load_local_data, load_partition
from clients.methods import ClientJob
from clients.models import build_model
from clients.train import pick_device, set_torch_threads
from fl_strategies.wire import CONFIG_KEY, RUN_CONFIG_KEY
from methods import get_method

PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
DATA_PATH_KEY = "data-path"
#: The setup query a simulation's ServerApp sends every node, and the record of its reply.
NODE_INFO_MESSAGE_TYPE = f"{MessageType.QUERY}.node_info"
NODE_INFO_KEY = "node-info"
#: Id of the Ray node that ran the reply (Ray simulation only).
RAY_NODE_KEY = "ray-node-id"

app = ClientApp()


@lru_cache(maxsize=4)
def _settings(run_json: str) -> dict[str, Any]:
    return json.loads(run_json)


@lru_cache(maxsize=4)
def _model_template(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return build_model(name, in_channels, num_classes, image_size)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, int | float | str | tuple)


def _fingerprint(model: nn.Module) -> tuple:
    """What a call could have changed in a model besides its tensors' values.

    The modules (identity, class, hook and child counts, plain attribute values but
    the train/eval flag, the identity of any other attribute), and each parameter's and buffer's
    identity, shape, dtype, device, ``requires_grad`` and tensor hooks. Equal
    fingerprints mean that loading the template's state makes the model equal to a
    fresh copy of the template.
    """
    modules = tuple(
        (
            name,
            id(module),
            type(module),
            tuple(
                (key, len(value) if isinstance(value, dict) else value)
                for key, value in vars(module).items()
                if key != "training" and (isinstance(value, dict) or _plain(value))
            ),
            tuple(
                (key, id(value))
                for key, value in vars(module).items()
                if not (isinstance(value, dict) or _plain(value))
            ),
        )
        for name, module in model.named_modules()
    )
    tensors = tuple(
        (
            name,
            id(tensor),
            tuple(tensor.shape),
            tensor.dtype,
            tensor.device,
            tensor.requires_grad,
            len(tensor._backward_hooks or {}),
            len(getattr(tensor, "_post_accumulate_grad_hooks", None) or {}),
            tuple(vars(tensor)),
        )
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
    )
    return modules, tensors


class _ModelCache:
    """One reusable copy of a template, for calls that leave its structure alone.

    ``copy.deepcopy`` of the template per call cost more than the rest of a small
    model's call setup. The copy is handed out again only when nothing else holds it
    (its reference count is back to the cache's own: no job, timed-out call in the
    background or method keeps it) and its :func:`_fingerprint` is unchanged (no
    layer swapped, hook or attribute added, tensor moved); it then gets the
    template's state, modes and empty gradients back. Otherwise a new deep copy
    replaces it.
    """

    def __init__(self, template: nn.Module) -> None:
        self.template = template
        self.state = {k: v.detach().clone() for k, v in template.state_dict().items()}
        self.modes = [module.training for module in template.modules()]
        self.lock = threading.Lock()
        self.model: nn.Module | None = None
        self.fingerprint: tuple = ()
        self.free_refs = 0

    def get(self) -> nn.Module:
        with self.lock:
            model = self.model
            if model is not None and sys.getrefcount(model) == self.free_refs + 1:
                if _fingerprint(model) == self.fingerprint:
                    self._reset(model)
                    return model
            model = copy.deepcopy(self.template)
            self.model, self.fingerprint = model, _fingerprint(model)
            # References to a free copy: this cache's and the local name (getrefcount's
            # own argument is the +1 above and here).
            self.free_refs = sys.getrefcount(model) - 1
            return model

    def _reset(self, model: nn.Module) -> None:
        with torch.no_grad():
            model.load_state_dict(self.state)
        for module, mode in zip(model.modules(), self.modes, strict=True):
            module.training = mode
        for param in model.parameters():
            param.grad = None


_model_caches: dict[tuple[str, int, int, int], _ModelCache] = {}


def fresh_model(model_cfg: dict[str, Any]) -> nn.Module:
    """A private copy of the run's model in its initial state (methods may swap its layers).

    Equal to a deep copy of the template; see :class:`_ModelCache` for when one copy
    is reused.
    """
    key = (
        model_cfg["name"],
        int(model_cfg["in_channels"]),
        int(model_cfg["num_classes"]),
        int(model_cfg["image_size"]),
    )
    template = _model_template(*key)
    cache = _model_caches.get(key)
    if cache is None or cache.template is not template:  # a template built again after eviction
        cache = _model_caches[key] = _ModelCache(template)
    return cache.get()


def client_data(settings: dict[str, Any], node_config: dict[str, Any]):
    """This node's (train, test) datasets from its node_config."""
    data_cfg = settings["data"]
    if DATA_PATH_KEY in node_config:
        # Normalized (and resized) like the run's dataset, so that a device's own
        # data meets the model as the server's test set and the other clients do.
        return load_local_data(
            str(node_config[DATA_PATH_KEY]),
            test_fraction=float(data_cfg.get("test_fraction", 0.2)),
            seed=int(settings["seed"]),
            normalize_as=data_cfg["name"],
            resize=data_cfg.get("resize"),
        )
    if PARTITION_ID_KEY not in node_config:
        raise ValueError(
            f"node_config needs '{PARTITION_ID_KEY}' and '{NUM_PARTITIONS_KEY}' "
            f"(simulation/demo) or '{DATA_PATH_KEY}' (a device's own data); got "
            f"{sorted(node_config)}"
        )
    return load_partition(data_cfg, int(node_config[PARTITION_ID_KEY]), int(node_config[NUM_PARTITIONS_KEY]))


def make_job(message: Message, context: Context) -> tuple[ClientJob, Any]:
    """Parse a message into a :class:`ClientJob` and the method's client side."""
    config = message.content.config_records[CONFIG_KEY]
    settings = _settings(str(config[RUN_CONFIG_KEY]))
    set_torch_threads(settings.get("torch_threads"))
    method = get_method(settings["method"]["name"], settings.get("plugins", ())).client_class()(settings)
    train_set, test_set = client_data(settings, context.node_config)
    server_round = int(config.get("server-round", 0))
    partition_id = int(context.node_config.get(PARTITION_ID_KEY, context.node_id % 100_003))
    job = ClientJob(
        settings=settings,
        model=fresh_model(settings["model"]),
        train_set=train_set,
        test_set=test_set,
        device=pick_device(settings.get("device", "auto")),
        content=message.content,
        context=context,
        server_round=server_round,
        partition_id=partition_id,
    )
    # Seed only the generators this job uses: torch.manual_seed also re-seeds every
    # CUDA device, which costs about 1 ms per call even on a machine without one.
    torch.default_generator.manual_seed(job.batch_seed())
    if job.device.type == "cuda":
        torch.cuda.manual_seed(job.batch_seed())
    return job, method


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received model locally and reply with the method's payload."""
    job, method = make_job(message, context)
    return Message(method.train(job), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received model on the node's local test split."""
    job, method = make_job(message, context)
    return Message(method.evaluate(job), reply_to=message)


@app.query("node_info")
def node_info(message: Message, context: Context) -> Message:
    """This node's partition (simulation) and, under Ray, the Ray node it runs on.

    The server samples clients by partition id, which every runtime assigns the same
    way, instead of by node id, which Flower's simulation draws at random.
    """
    info: dict[str, int | str] = {
        key: int(context.node_config[key])
        for key in (PARTITION_ID_KEY, NUM_PARTITIONS_KEY)
        if key in context.node_config
    }
    ray = sys.modules.get("ray")  # imported only where a Ray actor runs this
    if ray is not None and ray.is_initialized():
        info[RAY_NODE_KEY] = ray.get_runtime_context().get_node_id()
    return Message(RecordDict({NODE_INFO_KEY: ConfigRecord(info)}), reply_to=message)


def build_client_app(state_dir: str | Path | None = None) -> ClientApp:
    """This module's ClientApp; with ``state_dir``, node state lives on disk there.

    ``state_dir`` (simulation, ``client_state=disk``): train and evaluate calls go
    through :class:`~simulations.app.state_store.StateStoreMod`, which loads each
    node's ``context.state`` from the store and empties it after the call, so the
    simulation process holds the state of the nodes being served only.
    """
    if state_dir is None:
        return app
    from simulations.app.state_store import StateStoreMod

    stored = ClientApp()
    mods: list[Callable[[Message, Context, Callable[[Message, Context], Message]], Message]]
    mods = [StateStoreMod(state_dir)]
    stored.train(mods=mods)(train)
    stored.evaluate(mods=mods)(evaluate)
    stored.query("node_info")(node_info)
    return stored
