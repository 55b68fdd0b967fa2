"""Checks of a composed config, run before any training starts.

Every error names the offending key and says what is allowed, e.g.
``method.sparsity=1.5: must be in [0, 1)``. Methods register their own key checks
in :data:`METHOD_KEY_CHECKS` next to their strategy builder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

# (predicate, description) for method keys, wherever they appear in ``method.*``.
KeyCheck = tuple[Callable[[Any], bool], str]


def _in_unit_interval_open_right(v: Any) -> bool:
    return isinstance(v, int | float) and 0.0 <= float(v) < 1.0


def _in_unit_interval(v: Any) -> bool:
    return isinstance(v, int | float) and 0.0 <= float(v) <= 1.0


def _non_negative(v: Any) -> bool:
    return isinstance(v, int | float) and float(v) >= 0.0 and math.isfinite(float(v))


def _positive(v: Any) -> bool:
    return isinstance(v, int | float) and float(v) > 0.0 and math.isfinite(float(v))


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


METHOD_KEY_CHECKS: dict[str, KeyCheck] = {
    "sparsity": (_in_unit_interval_open_right, "must be in [0, 1)"),
    "s_0": (_in_unit_interval_open_right, "must be in [0, 1)"),
    "s_f": (_in_unit_interval_open_right, "must be in [0, 1)"),
    "proximal_mu": (_non_negative, "must be >= 0"),
    "mask_ratio": (_in_unit_interval, "must be in [0, 1]"),
    "alpha": (_non_negative, "must be >= 0"),
    "temperature": (_positive, "must be > 0"),
    "epochs_client": (_positive_int, "must be an integer >= 1"),
    "epochs_server": (_positive_int, "must be an integer >= 1"),
    "server_lr": (_positive, "must be > 0"),
    "topk_period": (_positive_int, "must be an integer >= 1"),
    "topk_warmup": (lambda v: _positive_int(v) or v == 0, "must be an integer >= 0"),
    "uplink": (lambda v: v in ("topk_weights", "diff_topk_weights", "topk_diff"),
               "must be one of topk_weights, diff_topk_weights, topk_diff"),
    "aggregation": (lambda v: v in ("sender_mean", "zero_fill"), "must be sender_mean or zero_fill"),
    "threshold": (_positive, "must be > 0"),
    "tighten_at": (_in_unit_interval, "must be in [0, 1]"),
    "vote_min_rounds": (_positive_int, "must be an integer >= 1"),
}


class ConfigError(ValueError):
    """A config value that cannot work; raised before any training starts."""


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"{key}={value!r}: {why}")


def validate_config(cfg: Mapping[str, Any], known_methods: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first bad key of a composed run config.

    Parameters
    ----------
    cfg : Mapping[str, Any]
        The resolved config (a plain dict or a DictConfig).
    known_methods : Mapping[str, Any]
        Method names available to the server.
    """
    from clients.data.specs import NATURAL_ID_DATASETS, get_spec  # light module: no torch import

    method = cfg["method"]
    if method["name"] not in known_methods:
        _fail("method.name", method["name"], f"unknown method; known: {sorted(known_methods)}")
    for key, value in method.items():
        if key in METHOD_KEY_CHECKS:
            check, why = METHOD_KEY_CHECKS[key]
            if not check(value):
                _fail(f"method.{key}", value, why)

    for key in ("num_clients", "num_rounds", "local_epochs", "batch_size"):
        if not _positive_int(cfg[key]):
            _fail(key, cfg[key], "must be an integer >= 1")
    for key in ("fraction_train", "fraction_evaluate"):
        value = cfg[key]
        if not _in_unit_interval(value) or (key == "fraction_train" and value == 0):
            _fail(key, value, "must be in (0, 1]" if key == "fraction_train" else "must be in [0, 1]")
    if cfg["fraction_train"] * cfg["num_clients"] < 1:
        _fail("fraction_train", cfg["fraction_train"],
              f"samples no client of num_clients={cfg['num_clients']}")
    threads = cfg.get("torch_threads")
    if threads is not None and not _positive_int(threads):
        _fail("torch_threads", threads, "must be an integer >= 1 or null")
    opt = cfg["optimizer"]
    if opt["name"] not in ("sgd", "adam"):
        _fail("optimizer.name", opt["name"], "must be 'sgd' or 'adam'")
    if not _positive(opt["lr"]):
        _fail("optimizer.lr", opt["lr"], "must be > 0")

    dataset = cfg["dataset"]
    try:
        get_spec(dataset["name"])
    except (KeyError, ValueError) as exc:
        _fail("dataset.name", dataset["name"], str(exc))
    _validate_data_source(dataset)

    partition = cfg["partition"]
    if partition["name"] not in ("iid", "dirichlet", "pathological", "natural", "contiguous"):
        _fail("partition.name", partition["name"],
              "must be one of iid, dirichlet, pathological, natural, contiguous")
    if partition["name"] == "dirichlet" and not _positive(partition.get("alpha")):
        _fail("partition.alpha", partition.get("alpha"), "must be > 0")
    if partition["name"] == "pathological":
        k = partition.get("classes_per_partition")
        num_classes = get_spec(dataset["name"]).num_classes
        if not _positive_int(k) or k > num_classes:
            _fail("partition.classes_per_partition", k,
                  f"must be an integer in [1, {num_classes}] for {dataset['name']}")
    if partition["name"] == "natural" and dataset["name"] not in NATURAL_ID_DATASETS:
        _fail("partition.name", "natural", f"needs writer ids: only {sorted(NATURAL_ID_DATASETS)} have them")

    backend = cfg["backend"]
    if backend["name"] not in ("inline", "ray", "deployment"):
        _fail("backend.name", backend["name"], "must be 'inline', 'ray' or 'deployment'")
    if backend["name"] == "ray":
        if not _positive(backend["num_cpus"]):
            _fail("backend.num_cpus", backend["num_cpus"], "must be > 0")
        if not _non_negative(backend["num_gpus"]):
            _fail("backend.num_gpus", backend["num_gpus"], "must be >= 0")
    if float(backend.get("num_gpus", 0) or 0) > 0:
        import torch

        if not torch.cuda.is_available():
            _fail("backend.num_gpus", backend["num_gpus"],
                  "no CUDA GPU is visible here; Ray would wait forever for one "
                  "(set backend.num_gpus=0)")


def _validate_data_source(dataset: Mapping[str, Any]) -> None:
    from clients.data import validate_data_source

    try:
        validate_data_source(dataset["name"], dataset.get("root"), bool(dataset.get("download")))
    except FileNotFoundError as exc:
        _fail("dataset.root", dataset.get("root"), str(exc))
