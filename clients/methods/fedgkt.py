"""FedGKT (He et al., NeurIPS 2020): both halves of group knowledge transfer.

The client half (:class:`FedGKTClient`) trains a small edge model with
``CE + alpha * KD`` against the server's logits for its own samples, then uploads,
per training sample, the edge model's feature map, its logits, the label and a
sample index; and features + labels of its local test split.

The server half (:class:`GKTServer`) lives here too, although it runs at the server:
it trains the large server model on the uploaded features through the same training
loop (:func:`clients.train.train_loop`) with the same KD loss. ``simulations`` builds
it and injects it into :class:`fl_strategies.fedgkt.FedGKT`, which never imports
``clients``.

**Edge initialisation.** FedML's ``main_fedgkt.py`` copies the stem of a ResNet-56
pretrained on the same dataset (``conv1``, ``bn1``, ``layer1`` parameters, from
``fedml_api/model/cv/pretrained/<DATASET>/resnet56/best.pth``) into every client's
``resnet8_56`` (and freezes it unless ``whether_training_on_client``). fedlean starts
the edge model from random initialisation; ``method.edge_stem_checkpoint`` (a
state-dict file) loads the matching stem parameters the same way (:func:`load_stem`),
without freezing them.

**Edge FLOPs.** Besides training, each round the client runs the edge model in eval
mode over all its train and test images to upload their features; both are reported
(``edge-flops-train``, ``edge-flops-extract``, from the per-sample FLOPs of
:func:`clients.flops.count_flops`).

Unlike the reference (FedML), KD targets are keyed **per sample**: a sample's index
is its position in the client's training split, stable across rounds (partitions are
seeded), and the loader yields ``(x, y, index)`` so the KD term looks its targets up
by index however the batches are shuffled.
"""

from __future__ import annotations

import copy
import json
import time
from collections import defaultdict
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from fl_strategies.codec import decode_arrays, encode_arrays
from fl_strategies.fedgkt import (
    EDGE_ACCURACY_KEY,
    EDGE_FLOPS_EXTRACT_KEY,
    EDGE_FLOPS_SAMPLE_KEY,
    EDGE_FLOPS_TRAIN_KEY,
    EDGE_LOSS_KEY,
    FEATURES_KEY,
    INDICES_KEY,
    KD_ACTIVE_KEY,
    LABELS_KEY,
    LOGITS_KEY,
    TEST_FEATURES_KEY,
    TEST_LABELS_KEY,
)
from fl_strategies.wire import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY

from ..data.batches import batch_loader
from ..flops import count_flops
from ..models import build_from_dims, count_params
from ..train import LossTerm, TrainHooks, train_loop
from .base import ClientJob, ClientMethod, load_arrays, model_arrays

# Keys of this node's persistent state (``context.state``).
EDGE_STATE_KEY = "fedgkt-edge"
OPTIMIZER_STATE_KEY = "fedgkt-optimizer"
# Batch size of feature extraction and server-side prediction (no gradients).
INFERENCE_BATCH = 256
# Edge parameters FedML copies from a pretrained ResNet-56 (its ``create_client_model``).
STEM_PREFIXES = ("conv1.", "bn1.", "layer1.")


# ----------------------------------------------------------------- pure helpers
def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Knowledge-distillation loss of FedGKT, batch-mean.

    ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, i.e. torch's
    ``kl_div(log_softmax(student/T), softmax(teacher/T), reduction="batchmean")``
    scaled by ``T^2`` (FedML's ``KL_Loss``, without its ``1e-7`` smoothing).

    Parameters
    ----------
    student : Tensor
        Logits being trained, ``(B, C)``.
    teacher : Tensor
        Target logits, ``(B, C)``; no gradient flows into them.
    temperature : float
        Softening temperature ``T > 0``.

    """
    t = float(temperature)
    return (
        t
        * t
        * F.kl_div(
            F.log_softmax(student / t, dim=1), F.softmax(teacher.detach() / t, dim=1), reduction="batchmean"
        )
    )


def with_indices(dataset: TensorDataset) -> TensorDataset:
    """The dataset yielding ``(x, y, index)``, index = position in the dataset."""
    x, y = dataset.tensors[:2]
    return TensorDataset(x, y, torch.arange(len(y), dtype=torch.int64))


def teacher_table(indices: np.ndarray, logits: np.ndarray, num_samples: int) -> Tensor:
    """Server logits as a ``(num_samples, C)`` table whose row ``i`` belongs to sample ``i``.

    Raises
    ------
    ValueError
        Unless ``indices`` are exactly the sample indices ``0..num_samples-1`` (in any
        order), one per row of ``logits``, and the logits are finite.

    """
    indices = np.asarray(indices)
    logits = np.asarray(logits, dtype=np.float32)
    if indices.ndim != 1 or logits.ndim != 2 or len(indices) != len(logits):
        raise ValueError(f"server logits {logits.shape} do not match indices {indices.shape}")
    if indices.dtype.kind not in "iu":
        raise ValueError(f"sample indices must be integers, got {indices.dtype}")
    if len(indices) != num_samples or not np.array_equal(np.sort(indices), np.arange(num_samples)):
        raise ValueError(
            f"server logits cover {len(np.unique(indices))} distinct indices, "
            f"expected each of 0..{num_samples - 1} once"
        )
    if not np.all(np.isfinite(logits)):
        raise ValueError("server logits are not finite")
    table = np.empty_like(logits)
    table[indices] = logits
    return torch.from_numpy(table)


def client_kd_term(teacher: Tensor, temperature: float, alpha: float) -> LossTerm:
    """``alpha * KD(student, teacher[index])``; the index is the batch's third tensor."""

    def term(model: nn.Module, logits: Tensor, batch: list[Tensor]) -> Tensor:
        return alpha * kd_loss(logits, teacher[batch[2]], temperature)

    return term


def server_kd_term(temperature: float, alpha: float) -> LossTerm:
    """Server loss ``KD(z_s, z_c) + alpha * CE``: the loop's CE plus this term.

    The client logits are the batch's third tensor. The reference weights CE, not KD,
    by ``alpha`` on the server; the loop already adds ``1 * CE``, hence ``alpha - 1``.
    """

    def term(model: nn.Module, logits: Tensor, batch: list[Tensor]) -> Tensor:
        loss = kd_loss(logits, batch[2], temperature)
        if alpha != 1.0:
            loss = loss + (alpha - 1.0) * F.cross_entropy(logits, batch[1])
        return loss

    return term


@torch.no_grad()
def batched_outputs(
    model: nn.Module, inputs: Tensor, device: torch.device, batch_size: int = INFERENCE_BATCH
) -> tuple[Tensor, ...]:
    """All outputs of ``model`` (eval mode) over ``inputs`` in order, on the CPU.

    Models returning a tuple (the edge model's ``(logits, features)``) give a tuple of
    concatenated outputs; others a 1-tuple.
    """
    model.to(device).eval()
    parts: list[tuple[Tensor, ...]] = []
    # range(max(n, 1)) runs one empty batch for an empty input, so shapes stay known.
    for start in range(0, max(len(inputs), 1), batch_size):
        out = model(inputs[start : start + batch_size].to(device))
        out = out if isinstance(out, tuple) else (out,)
        parts.append(tuple(t.detach().float().cpu() for t in out))
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def load_stem(model: nn.Module, path: str) -> list[str]:
    """Copy the stem parameters (``conv1``, ``bn1``, ``layer1``) of a checkpoint into ``model``.

    As FedML does from a pretrained ResNet-56: only parameters (not BatchNorm running
    statistics) whose name and shape match the edge model's are copied.

    Parameters
    ----------
    model : nn.Module
        The edge model, changed in place.
    path : str
        A ``torch.save`` file holding a state dict, or a dict with a ``state_dict``
        entry (FedML's checkpoints); a DataParallel ``module.`` prefix is dropped.

    Returns
    -------
    list[str]
        The names of the parameters loaded.

    Raises
    ------
    ValueError
        If the file holds no state dict or no tensor of it matches the stem.

    """
    loaded_obj = torch.load(path, map_location="cpu", weights_only=True)
    state = loaded_obj.get("state_dict", loaded_obj) if isinstance(loaded_obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"method.edge_stem_checkpoint={path!r}: not a state dict")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    loaded = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            value = state.get(name)
            if name.startswith(STEM_PREFIXES) and torch.is_tensor(value) and value.shape == param.shape:
                param.copy_(value)
                loaded.append(name)
    if not loaded:
        raise ValueError(
            f"method.edge_stem_checkpoint={path!r}: no tensor matches the edge "
            f"model's stem ({', '.join(p.rstrip('.') for p in STEM_PREFIXES)})"
        )
    return loaded


@lru_cache(maxsize=8)
def edge_flops_per_sample(model_json: str) -> tuple[int, int]:
    """Forward and forward+backward FLOPs of one sample of the edge model ``dims``."""
    dims = json.loads(model_json)
    sample = torch.zeros(1, int(dims["in_channels"]), int(dims["image_size"]), int(dims["image_size"]))
    model = build_from_dims(dims)
    return count_flops(model, sample, training=False), count_flops(model, sample, training=True)


def optimizer_arrays(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """The optimizer's per-parameter state (momentum, Adam moments, step) as arrays."""
    out = {}
    for param_id, slots in optimizer.state_dict()["state"].items():
        for slot, value in slots.items():
            if torch.is_tensor(value):
                out[f"{param_id}.{slot}"] = value.detach().cpu().numpy().copy()
    return out


def load_optimizer_arrays(optimizer: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray]) -> None:
    """Inverse of :func:`optimizer_arrays` (hyperparameters come from ``optimizer``)."""
    state: dict[int, dict[str, Tensor]] = defaultdict(dict)
    for key, value in arrays.items():
        param_id, slot = key.split(".", 1)
        state[int(param_id)][slot] = torch.from_numpy(np.array(value))
    full = optimizer.state_dict()
    full["state"] = dict(state)
    optimizer.load_state_dict(full)


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Arrays as they are (0-d included) for ``context.state``; nothing here goes on the wire."""
    return ArrayRecord({key: Array(np.asarray(value)) for key, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`to_record`."""
    return {key: array.numpy() for key, array in record.items()}


# ------------------------------------------------------------------ the client
class FedGKTClient(ClientMethod):
    """FedGKT's client: edge training with KD, then upload of features and logits.

    The edge model (the run's ``model``, e.g. ``resnet8_56``, whose forward returns
    ``(logits, features)``) and its optimizer state persist in ``context.state``:
    FedGKT never averages edge models. All clients start from the same edge model
    (built with the run's seed). Settings (``method.*``): ``temperature``, ``alpha``,
    ``epochs_client``, ``float16`` (features and logits as float16 on the wire).
    """

    name = "fedgkt"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.temperature = float(self.method["temperature"])
        self.alpha = float(self.method["alpha"])
        self.epochs = int(self.method["epochs_client"])
        self.float16 = bool(self.method["float16"])
        self.teacher: Tensor | None = None

    # ------------------------------------------------------------------ hooks
    def receive(self, job: ClientJob) -> None:
        """Restore this node's edge model and read the server's logits (if any)."""
        self.restore_edge(job)
        self.teacher = None
        if ARRAYS_KEY in job.content.array_records:
            arrays = decode_arrays(job.content.array_records[ARRAYS_KEY])
            if arrays:
                self.teacher = teacher_table(arrays[INDICES_KEY], arrays[LOGITS_KEY], len(job.train_set))

    def restore_edge(self, job: ClientJob) -> None:
        """Load the edge model this node trained last time, or the common initial one."""
        state = job.context.state.array_records
        if EDGE_STATE_KEY in state:
            load_arrays(job.model, from_record(state[EDGE_STATE_KEY]))
            return
        dims = self.settings["model"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.settings["seed"]))
            job.model = build_from_dims(dims)
        checkpoint = self.method.get("edge_stem_checkpoint")
        if checkpoint:
            load_stem(job.model, str(checkpoint))

    def train_hooks(self, job: ClientJob) -> TrainHooks:
        """KD toward the server's logits, looked up by sample index (once they exist)."""
        hooks = TrainHooks()
        if self.teacher is not None and self.alpha > 0:
            hooks.loss_terms.append(client_kd_term(self.teacher.to(job.device), self.temperature, self.alpha))
        return hooks

    def make_optimizer(self, job: ClientJob) -> torch.optim.Optimizer:
        """The run's optimizer, continuing from this node's previous round."""
        optimizer = super().make_optimizer(job)
        state = job.context.state.array_records
        if OPTIMIZER_STATE_KEY in state:
            load_optimizer_arrays(optimizer, from_record(state[OPTIMIZER_STATE_KEY]))
        return optimizer

    # ------------------------------------------------------------- the calls
    def train(self, job: ClientJob) -> RecordDict:
        """Train the edge model, keep it, upload features/logits/labels/indices."""
        self.receive(job)
        job.train_set = with_indices(job.train_set)
        job.model.to(job.device)
        optimizer = self.make_optimizer(job)
        hooks = self.train_hooks(job)
        stats = train_loop(job.model, job.loader(train=True), optimizer, self.epochs, job.device, hooks)
        state = job.context.state
        state[EDGE_STATE_KEY] = to_record(model_arrays(job.model))
        state[OPTIMIZER_STATE_KEY] = to_record(optimizer_arrays(optimizer))

        start = time.perf_counter()
        x, y, index = job.train_set.tensors
        logits, features = batched_outputs(job.model, x, job.device)
        test_x, test_y = job.test_set.tensors[:2]
        test_logits, test_features = batched_outputs(job.model, test_x, job.device)
        upload = {
            FEATURES_KEY: features.numpy(),
            LOGITS_KEY: logits.numpy(),
            LABELS_KEY: y.numpy(),
            INDICES_KEY: index.numpy(),
            TEST_FEATURES_KEY: test_features.numpy(),
            TEST_LABELS_KEY: test_y.numpy(),
        }
        metrics: dict[str, float | int] = {
            NUM_EXAMPLES_KEY: len(y),
            "loss": stats.loss,
            "accuracy": stats.accuracy,
            "seconds": stats.seconds,
            "extract-seconds": time.perf_counter() - start,
            KD_ACTIVE_KEY: int(bool(hooks.loss_terms)),
        }
        forward, train = edge_flops_per_sample(json.dumps(self.settings["model"], sort_keys=True))
        metrics[EDGE_FLOPS_SAMPLE_KEY] = train
        metrics[EDGE_FLOPS_TRAIN_KEY] = train * len(y) * self.epochs
        metrics[EDGE_FLOPS_EXTRACT_KEY] = forward * (len(y) + len(test_y))
        if len(test_y):
            metrics[EDGE_LOSS_KEY] = float(F.cross_entropy(test_logits, test_y))
            metrics[EDGE_ACCURACY_KEY] = float((test_logits.argmax(1) == test_y).float().mean())
        job.model.cpu()
        record = encode_arrays(upload, encoding=self.settings.get("encoding", "auto"), float16=self.float16)
        return RecordDict({ARRAYS_KEY: record, METRICS_KEY: MetricRecord(metrics)})

    def load_for_evaluation(self, job: ClientJob) -> None:
        """Evaluate this node's own edge model (nothing global to receive)."""
        self.restore_edge(job)


# ------------------------------------------------------------------ the server
class GKTServer:
    """The server half of FedGKT: the large model and its optimizer.

    Held by :class:`fl_strategies.fedgkt.FedGKT` for the whole run, so the server
    model's weights and optimizer state persist across rounds.

    Parameters
    ----------
    model : nn.Module
        The server model (e.g. ``resnet56_server``), taking edge features.
    optimizer : torch.optim.Optimizer
        Its optimizer.
    device : torch.device
        Where the server model trains (CUDA when available, see ``method.server_device``).
    temperature, alpha : float
        KD temperature; CE weight of the server loss ``KD + alpha * CE``.
    epochs : int
        Passes over all uploaded features per round.
    batch_size : int
        Server batch size.
    distill : bool (default: True)
        Add the KD term toward the client logits (the reference's
        ``whether_distill_on_the_server``); plain CE otherwise.
    seed : int (default: 0)
        Seeds the shuffling of the server's batches (with the round).
    feature_shape : tuple[int, ...] (default: (16, 32, 32))
        Shape of one sample's features (for the FLOPs in :meth:`describe`).
    name : str (default: "")
        The model's registry name, for the summary.

    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        *,
        temperature: float,
        alpha: float,
        epochs: int,
        batch_size: int,
        distill: bool = True,
        seed: int = 0,
        feature_shape: tuple[int, ...] = (16, 32, 32),
        name: str = "",
    ) -> None:
        self.model = model.to(device)
        self.optimizer = optimizer
        self.device = device
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.distill = bool(distill)
        self.seed = int(seed)
        self.feature_shape = tuple(int(d) for d in feature_shape)
        self.name = name

    def fit(
        self, features: np.ndarray, labels: np.ndarray, client_logits: np.ndarray, server_round: int
    ) -> dict[str, float]:
        """Train on all uploaded features (shuffled across clients) for ``epochs``."""
        dataset = TensorDataset(
            torch.from_numpy(np.asarray(features, np.float32)),
            torch.from_numpy(np.asarray(labels, np.int64)),
            torch.from_numpy(np.asarray(client_logits, np.float32)),
        )
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + server_round)
        loader = batch_loader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        hooks = TrainHooks()
        if self.distill:
            hooks.loss_terms.append(server_kd_term(self.temperature, self.alpha))
        stats = train_loop(self.model, loader, self.optimizer, self.epochs, self.device, hooks)
        return {
            "server_train_loss": stats.loss,
            "server_train_accuracy": stats.accuracy,
            "server_train_seconds": stats.seconds,
        }

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Server logits (eval mode) for features, in order."""
        (logits,) = batched_outputs(
            self.model, torch.from_numpy(np.asarray(features, np.float32)), self.device
        )
        return logits.numpy()

    def state(self) -> dict[str, np.ndarray]:
        """The server model's state dict as numpy arrays."""
        return model_arrays(self.model)

    def checkpoint_state(self) -> dict[str, Any]:
        """Copies of the model's and the optimizer's state dicts (torch tensors, picklable)."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore the model's and the optimizer's state (tensors move to :attr:`device`)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def describe(self) -> dict[str, Any]:
        """Name, parameters, training FLOPs per sample and device of the server model."""
        sample = torch.zeros(1, *self.feature_shape, device=self.device)
        return {
            "server_model": self.name,
            "server_params": count_params(self.model),
            "server_flops_train": count_flops(self.model, sample, training=True),
            "server_device": str(self.device),
        }
