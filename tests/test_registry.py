"""The method registry: one entry per method, yaml <-> entry agreement, plug-in methods."""

from __future__ import annotations

import dataclasses
import textwrap

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from methods import all_methods, get_method
from methods.registry import ConfigError, MethodConfig
from simulations import CONF_DIR
from simulations.app.compose import compose_run
from simulations.app.config import validate_config
from simulations.runtimes.simulation import run_from_config

METHOD_YAMLS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def test_every_method_yaml_has_an_entry_and_every_entry_a_yaml():
    # Plug-in methods other tests load (tests.fault_plugin, ...) register too: only the
    # package's own entries must match the yamls.
    own = [name for name, entry in all_methods().items() if entry.build.__module__.startswith("methods.")]
    assert METHOD_YAMLS == sorted(own)


@pytest.mark.parametrize("name", METHOD_YAMLS)
def test_method_yaml_holds_no_values_and_composes_to_the_dataclass_defaults(name):
    raw = yaml.safe_load((CONF_DIR / "method" / f"{name}.yaml").read_text())
    assert set(raw) == {"defaults"}, f"{name}.yaml must hold no values: the dataclass has them"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        composed = OmegaConf.to_container(compose("config", overrides=[f"method={name}"])["method"])
    entry = get_method(name)
    assert composed == dataclasses.asdict(entry.config())
    assert issubclass(entry.config, MethodConfig) and entry.config().name == name


def test_entry_client_classes_are_client_methods():
    from clients.methods.base import ClientMethod

    for entry in all_methods().values():
        assert issubclass(entry.client_class(), ClientMethod), entry.name


def test_unknown_method_key_is_rejected_naming_it():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=["method=gwpf"]))
    cfg["method"]["tresholds"] = 0.5
    with pytest.raises(ConfigError, match=r"^method.tresholds=0.5: unknown key"):
        validate_config(cfg)
    cfg["method"].pop("tresholds")
    cfg["num_round"] = 1
    with pytest.raises(ConfigError, match=r"^num_round=1: unknown key"):
        validate_config(cfg)


# --------------------------------------------------------- a plug-in method
TOY_STRATEGY = '''
"""A FedAvg variant: the server moves only ``server_step`` of the way to the average."""
from fl_strategies.base import FedleanStrategy


class ServerStepAvg(FedleanStrategy):
    method_name = "toy_step"

    def __init__(self, server_step: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.server_step = server_step

    def aggregate_replies(self, server_round, replies):
        merged = super().aggregate_replies(server_round, replies)
        old = self.global_arrays
        return {k: old[k] + self.server_step * (merged[k] - old[k]) for k in merged}
'''
TOY_CLIENT = """
from clients.methods.base import ClientMethod


class ToyClient(ClientMethod):
    name = "toy_step"
"""
TOY_ENTRY = """
from dataclasses import dataclass

from methods import MethodConfig, MethodEntry, register, require
from toy_step_client import ToyClient
from toy_step_strategy import ServerStepAvg


@dataclass
class ToyConfig(MethodConfig):
    name: str = "toy_step"
    server_step: float = 1.0

    def check(self, run):
        require(0 <= self.server_step <= 1, "method.server_step", self.server_step, "must be in [0, 1]")


register(MethodEntry(name="toy_step", config=ToyConfig, client=ToyClient,
                     build=lambda cfg, ctx: ServerStepAvg(server_step=cfg.server_step, **ctx.common)))
"""


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """A method living wholly outside the repository: two modules, an entry and a yaml."""
    for name, text in (
        ("toy_step_strategy", TOY_STRATEGY),
        ("toy_step_client", TOY_CLIENT),
        ("toy_step_entry", TOY_ENTRY),
    ):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    conf = tmp_path / "conf" / "method"
    conf.mkdir(parents=True)
    (conf / "toy_step.yaml").write_text("name: toy_step\nserver_step: 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _compose(toy_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(
            "config",
            overrides=[
                f"hydra.searchpath=[file://{toy_dir / 'conf'}]",
                "num_rounds=2",
                "num_clients=3",
                "local_epochs=1",
                "save_model=true",
                *overrides,
            ],
        )


def test_a_plugin_method_runs_with_no_edit_outside_its_own_files(toy_method, tmp_path):
    toy = ["method=toy_step", "plugins=[toy_step_entry]"]
    frozen = run_from_config(
        _compose(toy_method, *toy, "method.server_step=0.0"), tmp_path / "s0", quiet=True
    )
    full = run_from_config(_compose(toy_method, *toy), tmp_path / "s1", quiet=True)
    run_from_config(_compose(toy_method, "method=fedavg"), tmp_path / "avg", quiet=True)
    assert frozen["method"] == full["method"] == "toy_step"
    initial = compose_run(_compose(toy_method, *toy), tmp_path / "init").initial_arrays
    s0, s1, avg = (np.load(tmp_path / run / "final_model.npz") for run in ("s0", "s1", "avg"))
    with s0, s1, avg:
        for key in avg.files:
            np.testing.assert_array_equal(s0[key], initial[key].numpy())  # step 0: the model never moves
            np.testing.assert_allclose(s1[key], avg[key], rtol=1e-6, atol=1e-7)  # step 1: FedAvg
    # The yaml equals the entry's defaults, the rule the repository's own methods follow.
    assert yaml.safe_load((toy_method / "conf/method/toy_step.yaml").read_text()) == {
        "name": "toy_step",
        "server_step": get_method("toy_step").config().server_step,
    }


def test_a_plugin_methods_own_check_runs_before_training(toy_method, tmp_path):
    cfg = _compose(toy_method, "method=toy_step", "plugins=[toy_step_entry]", "method.server_step=2")
    with pytest.raises(ConfigError, match=r"method.server_step=2.0: must be in \[0, 1\]"):
        run_from_config(cfg, tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad" / "rounds.jsonl").exists()


def test_an_unimportable_plugin_is_a_one_line_config_error(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=["plugins=[no_such_plugin_module]"])
    with pytest.raises(ConfigError, match=r"^plugins='no_such_plugin_module': cannot import it"):
        validate_config(cfg)
