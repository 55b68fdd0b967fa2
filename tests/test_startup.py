"""Start-up: the on-disk cache (FLOPs, dataset splits, partitions) gives what a fresh computation gives."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from clients import cache
from clients.data import federated, loaders
from clients.data.federated import clear_data_cache, load_partition, partition_train_sizes
from clients.data.partition import partition_indices
from clients.flops import cached_flops, count_flops
from clients.models import build_model
from simulations import CONF_DIR
from simulations.runtimes.simulation import run_from_config

DIGITS = {"name": "digits", "seed": 3}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty cache of this test's own; the in-process data caches dropped before and after."""
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(path))
    clear_data_cache()
    yield path
    clear_data_cache()


def entries(path, kind):
    return sorted((path / kind).glob("*.npz"))


def _refuse(*args, **kwargs):
    raise AssertionError("recomputed although the cache holds the entry")


def _models():
    mlp = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)
    )
    return [(mlp, torch.zeros(1, 1, 8, 8)), (cnn, torch.zeros(2, 1, 8, 8))]


@pytest.mark.parametrize("index", [0, 1])
def test_cached_flops_equal_the_direct_count_and_are_read_back(cache_dir, monkeypatch, index):
    model, sample = _models()[index]
    direct = (count_flops(model, sample, training=False), count_flops(model, sample, training=True))
    assert direct[0] > 0 and direct[1] > direct[0]
    assert cached_flops(model, sample) == direct  # a miss: counted and stored
    assert len(entries(cache_dir, "flops")) == 1
    monkeypatch.setattr("clients.flops.count_flops", _refuse)
    assert cached_flops(model, sample) == direct  # a hit: read back, not counted


def test_flops_cache_key_follows_the_model_and_the_sample(cache_dir):
    (mlp, sample), (cnn, cnn_sample) = _models()
    cached_flops(mlp, sample)
    cached_flops(mlp, torch.zeros(4, 1, 8, 8))  # another batch: other figures
    cached_flops(cnn, cnn_sample)
    assert len(entries(cache_dir, "flops")) == 3
    assert cached_flops(mlp, torch.zeros(4, 1, 8, 8))[0] == 4 * cached_flops(mlp, sample)[0]


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_corrupt_flops_entry_is_detected_and_recomputed_with_one_warning(cache_dir, caplog, damage):
    model, sample = _models()[0]
    direct = cached_flops(model, sample)
    (path,) = entries(cache_dir, "flops")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    else:  # other figures under the same name: the checksum no longer matches
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
        arrays["flops"] = arrays["flops"] + 1
        np.savez(path, **arrays)
    with caplog.at_level(logging.WARNING, logger="clients.cache"):
        assert cached_flops(model, sample) == direct
    warnings = [r for r in caplog.records if r.name == "clients.cache"]
    assert len(warnings) == 1 and "stale or corrupt" in warnings[0].getMessage()
    assert cached_flops(model, sample) == direct and len(entries(cache_dir, "flops")) == 1


def test_stale_entry_describing_other_inputs_is_recomputed(cache_dir, caplog):
    description = {"what": "a"}
    cache.store("x", description, {"v": np.arange(3)})
    (path,) = entries(cache_dir, "x")
    other = cache_dir / "x" / f"{cache.digest({'what': 'b'})}.npz"
    path.rename(other)  # an entry under the name of other inputs
    with caplog.at_level(logging.WARNING, logger="clients.cache"):
        assert cache.load("x", {"what": "b"}) is None
    assert "describes other inputs" in caplog.text and not other.exists()


def test_entry_keeps_the_strides_of_length_one_axes(cache_dir):
    """``x[:, None]`` then indexing gives a length-1 axis stride that ``np.load`` would not."""
    x = np.arange(5 * 8 * 8, dtype=np.float32).reshape(5, 8, 8)[:, None][np.array([4, 0, 2])]
    cache.store("x", {"a": 1}, {"x": x})
    (got,) = cache.load("x", {"a": 1}).values()
    assert np.array_equal(got, x) and got.strides == x.strides
    assert torch.from_numpy(got).stride() == torch.from_numpy(x).stride() == (64, 1, 8, 1)


def test_cache_off_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_DIR_ENV, "off")
    assert cache.cache_dir() is None
    cache.store("x", {"a": 1}, {"v": np.arange(3)})
    assert cache.load("x", {"a": 1}) is None


@pytest.mark.parametrize(
    ("scheme", "extra"),
    [("iid", {}), ("dirichlet", {"alpha": 0.3}), ("pathological", {"classes_per_partition": 2})],
)
def test_cached_partitions_equal_fresh_ones(cache_dir, monkeypatch, scheme, extra):
    cfg = {**DIGITS, "partition": scheme, **extra}
    num = 7
    sizes = partition_train_sizes(cfg, num)  # cold: computed and stored
    assert len(entries(cache_dir, "partitions")) == 1
    first = [load_partition(cfg, pid, num) for pid in range(num)]
    labels = loaders.load_dataset("digits").y_train.numpy()
    fresh = partition_indices(
        labels,
        scheme,
        num,
        seed=3,
        alpha=extra.get("alpha", 0.5),
        classes_per_partition=extra.get("classes_per_partition", 2),
    )
    clear_data_cache()
    monkeypatch.setattr(federated, "partition_indices", _refuse)
    cached = federated._partitions(federated._partition_key(cfg), num)  # warm: from disk
    assert len(cached) == num
    for a, b in zip(cached, fresh, strict=True):
        assert a.dtype == np.int64 and np.array_equal(a, b)
    assert partition_train_sizes(cfg, num) == sizes
    for pid in range(num):
        for got, want in zip(load_partition(cfg, pid, num), first[pid], strict=True):
            assert all(torch.equal(a, b) for a, b in zip(got.tensors, want.tensors, strict=True))


def test_partition_entry_is_per_seed_and_count(cache_dir):
    partition_train_sizes({**DIGITS, "partition": "iid"}, 5)
    partition_train_sizes({**DIGITS, "partition": "iid"}, 6)
    partition_train_sizes({**DIGITS, "partition": "iid", "seed": 4}, 5)
    assert len(entries(cache_dir, "partitions")) == 3


def test_corrupt_partition_entry_is_recomputed(cache_dir, caplog):
    cfg = {**DIGITS, "partition": "dirichlet"}
    sizes = partition_train_sizes(cfg, 5)
    (path,) = entries(cache_dir, "partitions")
    path.write_bytes(b"not a zip file")
    clear_data_cache()
    with caplog.at_level(logging.WARNING, logger="clients.cache"):
        assert partition_train_sizes(cfg, 5) == sizes
    assert sum(r.name == "clients.cache" for r in caplog.records) == 1
    assert len(entries(cache_dir, "partitions")) == 1  # stored again


def test_cached_digits_split_equals_the_sklearn_split(cache_dir, monkeypatch):
    first = loaders.load_dataset("digits")  # cold: scikit-learn, then stored
    assert len(entries(cache_dir, "splits")) == 1
    monkeypatch.setattr(loaders, "_load_digits", _refuse)
    warm = loaders.load_dataset("digits")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        got, want = getattr(warm, name), getattr(first, name)
        # The strides too: torch picks a kernel (and its rounding) by them.
        assert torch.equal(got, want) and got.stride() == want.stride(), name
    monkeypatch.undo()
    monkeypatch.setenv(cache.CACHE_DIR_ENV, "off")
    fresh = loaders.load_dataset("digits")
    assert torch.equal(fresh.x_train, warm.x_train) and torch.equal(fresh.y_test, warm.y_test)


def run_config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=["num_clients=3", "num_rounds=1", *overrides])


def test_warm_run_imports_neither_sklearn_nor_flwr_datasets_and_gives_the_same_results(tmp_path, cache_dir):
    """A second run in a fresh process reads the split and partitions from the cache."""
    import subprocess

    from tests.test_run import REPO

    code = (
        "import json, sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from simulations import CONF_DIR\n"
        "from simulations.runtimes.simulation import run_from_config\n"
        "with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):\n"
        "    cfg = compose(config_name='config', overrides=['num_clients=3', 'num_rounds=1'])\n"
        "run_from_config(cfg, sys.argv[1], quiet=True)\n"
        "print(json.dumps([m in sys.modules for m in ('sklearn', 'flwr_datasets', 'datasets')]))\n"
    )
    runs = []
    for name in ("cold", "warm"):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / name)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs[0] == [True, True, True] and runs[1] == [False, False, False]

    def results(name):
        rounds = [json.loads(x) for x in (tmp_path / name / "rounds.jsonl").read_text().splitlines()]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        return [(r["central_accuracy"], r.get("train_loss")) for r in rounds], summary

    (cold_rounds, cold), (warm_rounds, warm) = results("cold"), results("warm")
    assert cold_rounds == warm_rounds
    for key in ("model_params", "model_flops_forward", "model_flops_train", "final_accuracy", "total_bytes"):
        assert cold[key] == warm[key], key
    assert set(warm["startup_seconds"]) == {"from_process_start", "from_imports"}
    assert 0 < warm["startup_seconds"]["from_imports"] < warm["startup_seconds"]["from_process_start"]


def test_summary_flops_equal_the_direct_count(tmp_path, cache_dir):
    summary = run_from_config(run_config(), tmp_path, quiet=True)
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    sample = torch.zeros(1, 1, 8, 8)
    assert summary["model_flops_forward"] == count_flops(model, sample) == 168_960
    assert summary["model_flops_train"] == count_flops(model, sample, training=True) == 474_112
