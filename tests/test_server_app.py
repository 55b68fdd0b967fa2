"""The deployment ServerApp and helpers, in process (fast; real processes: test_deployment)."""

from __future__ import annotations

import json
import tomllib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict

from simulations import CONF_DIR
from simulations.app.config import ConfigError
from simulations.app.server_app import (
    DEPLOYMENT_INFO_FILE,
    PollingGrid,
    app,
    compose_config,
    find_conf_dir,
    output_dir,
    override_value,
    parse_overrides,
    wait_for_nodes,
)
from simulations.deploy import (
    export_partition,
    format_node_config,
    format_run_config,
    generate_supernode_keys,
    generate_tls_certs,
    write_connection,
)
from simulations.runtimes.inline import InlineGrid

REPO = Path(__file__).resolve().parents[1]


def test_parse_overrides_quotes_and_fixed_backend():
    assert parse_overrides("method=fedavg 'dataset.root=/my data' num_rounds=3") == [
        "method=fedavg",
        "dataset.root=/my data",
        "num_rounds=3",
        "backend=deployment",
    ]
    assert parse_overrides("") == ["backend=deployment"]
    assert parse_overrides("backend.poll_interval=1.0")[0] == "backend.poll_interval=1.0"
    with pytest.raises(ConfigError, match="backend=deployment"):
        parse_overrides("backend=ray")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides("num_rounds")


def test_conf_dir_found_next_to_the_app_or_explicit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: must still find the app's conf/
    assert find_conf_dir() == CONF_DIR
    assert find_conf_dir(str(CONF_DIR)) == CONF_DIR
    with pytest.raises(ConfigError, match="config.yaml"):
        find_conf_dir(tmp_path)


def test_compose_config_applies_overrides_and_names_bad_ones():
    cfg = compose_config(parse_overrides("method=fedprox num_clients=3 optimizer.lr=0.1"))
    assert cfg.method.name == "fedprox" and cfg.num_clients == 3 and cfg.optimizer.lr == 0.1
    assert cfg.backend.name == "deployment" and cfg.backend.poll_interval > 0
    assert "hydra" not in cfg
    with pytest.raises(ConfigError, match="no_such_method"):
        compose_config(parse_overrides("method=no_such_method"))


def test_output_dir_default_and_explicit(tmp_path):
    cfg = {"method": {"name": "fedavg"}, "dataset": {"name": "digits"}}
    default = output_dir({"output-dir": ""}, cfg, 42, now=datetime(2026, 1, 2, 3, 4, 5))
    assert default.is_absolute()
    assert default.parts[-3:] == ("outputs", "deploy", "2026-01-02_03-04-05_fedavg_digits_run42")
    assert output_dir({"output-dir": str(tmp_path / "x")}, cfg, 1) == tmp_path / "x"


class _SlowGrid(InlineGrid):
    """Replies become visible only on the third pull."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pulls = 0

    def pull_messages(self, message_ids):
        self.pulls += 1
        return super().pull_messages(message_ids) if self.pulls >= 3 else []


def _echo(message, context):
    return Message(RecordDict(), reply_to=message)


def test_polling_grid_polls_until_all_replies():
    inner = _SlowGrid(_echo, 2)
    grid = PollingGrid(inner, interval=0.01)
    messages = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in grid.get_node_ids()]
    replies = list(grid.send_and_receive(messages, timeout=5))
    assert len(replies) == 2 and inner.pulls == 3
    # A timeout ends the wait with what has arrived.
    inner = _SlowGrid(_echo, 1)
    grid = PollingGrid(inner, interval=0.05)
    messages = [Message(RecordDict(), dst_node_id=grid.get_node_ids()[0], message_type="train")]
    assert list(grid.send_and_receive(messages, timeout=0.01)) == []


class _ArrivingNodes:
    """A Grid whose nodes connect over (fake) time: ``schedule`` maps time -> count."""

    def __init__(self, schedule: dict[float, int]):
        self.schedule = sorted(schedule.items())
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def get_node_ids(self):
        count = max((n for t, n in self.schedule if t <= self.now), default=0)
        return list(range(count))


def test_wait_for_nodes_takes_the_federation_size_once_it_holds_still():
    grid = _ArrivingNodes({0.0: 0, 1.0: 1, 2.0: 3})
    n = wait_for_nodes(grid, None, timeout=60, settle=3.0, poll=0.5, clock=grid.clock, sleep=grid.sleep)
    assert n == 3 and grid.now == pytest.approx(5.0)  # 3 nodes since t=2, held still for 3 s


def test_wait_for_nodes_with_num_clients_waits_for_them_or_names_the_setting():
    grid = _ArrivingNodes({0.0: 1, 4.0: 2})
    assert wait_for_nodes(grid, 2, timeout=60, poll=0.5, clock=grid.clock, sleep=grid.sleep) == 2
    assert grid.now == pytest.approx(4.0)
    grid = _ArrivingNodes({0.0: 2})
    with pytest.raises(ConfigError, match=r"num_clients=10: only 2 SuperNode\(s\) connected after 30 s"):
        wait_for_nodes(grid, 10, timeout=30, poll=1.0, clock=grid.clock, sleep=grid.sleep)
    with pytest.raises(ConfigError, match="node-wait: no SuperNode connected within 5 s"):
        empty = _ArrivingNodes({})
        wait_for_nodes(empty, None, timeout=5, clock=empty.clock, sleep=empty.sleep)


def test_override_value_last_one_wins():
    assert override_value(["num_clients=3", "seed=1", "+num_clients=5"], "num_clients") == "5"
    assert override_value(["seed=1"], "num_clients") is None


def test_server_app_without_num_clients_uses_the_connected_nodes(tmp_path):
    from simulations.app.client_app import app as client_app

    out = tmp_path / "results"
    context = Context(
        run_id=8,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"overrides": "num_rounds=1 local_epochs=1", "output-dir": str(out), "node-wait": 10},
    )
    app(InlineGrid(client_app, 3), context)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_clients"] == 3 and summary["rounds"] == 1


def test_server_app_runs_a_composed_config_on_any_grid(tmp_path):
    """The ServerApp itself, with the in-process grid standing in for SuperNodes."""
    from simulations.app.client_app import app as client_app

    out = tmp_path / "results"
    context = Context(
        run_id=7,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={
            "overrides": "method=fedavg dataset=digits num_clients=2 num_rounds=1 local_epochs=1",
            "output-dir": str(out),
            "conf-dir": "",
        },
    )
    app(InlineGrid(client_app, 2), context)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "deployment" and summary["rounds"] == 1
    assert summary["total_bytes"] > 0 and summary["eval_bytes"] > 0
    info = json.loads((out / DEPLOYMENT_INFO_FILE).read_text())
    assert info["run_id"] == 7 and info["overrides"][-1] == "backend=deployment"
    assert len(info["node_ids"]) == 2


def test_tls_certs_chain_to_the_ca(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    files = generate_tls_certs(tmp_path, hosts=["superlink.lan", "192.168.1.10"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca.public_key().verify(
        server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm)
    )
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"superlink.lan", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"192.168.1.10", "127.0.0.1"}
    assert files.server_key.stat().st_mode & 0o077 == 0


def test_supernode_keys_are_what_flower_loads(tmp_path):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    keys = generate_supernode_keys(tmp_path, "pi-1")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    assert try_load_public_key(keys.public_key) == public_key_to_bytes(private.public_key())


def test_exported_partition_is_what_the_device_trains_on(tmp_path):
    from clients.data import load_partition
    from simulations.app.client_app import client_data
    from simulations.app.compose import client_settings, to_dict

    path = export_partition(tmp_path / "dev.npz", 1, 3, ["dataset=digits"])
    with np.load(path) as npz:
        assert npz["x"].dtype == np.float32 and npz["x"].min() >= 0 and npz["x"].max() <= 1
        n = len(npz["y"])
    settings = client_settings(to_dict(compose_config(parse_overrides("dataset=digits"))))
    train, test = client_data(settings, {"data-path": str(path)})
    ref_train, ref_test = load_partition(settings["data"], 1, 3)
    assert len(train) + len(test) == n == len(ref_train) + len(ref_test)
    # Same normalization as the partition a simulated client would get.
    device_x = torch.cat([train.tensors[0], test.tensors[0]])
    ref_x = torch.cat([ref_train.tensors[0], ref_test.tensors[0]])
    assert torch.allclose(device_x.mean(), ref_x.mean(), atol=1e-4)
    assert torch.allclose(device_x.std(), ref_x.std(), atol=1e-4)


def test_missing_device_data_is_a_clear_error(tmp_path):
    from simulations.app.client_app import client_data

    settings = {"data": {"name": "digits", "test_fraction": 0.2}, "seed": 0}
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        client_data(settings, {"data-path": str(tmp_path / "missing.npz")})


def test_cli_config_text(tmp_path):
    assert format_node_config({"partition-id": 0, "data-path": "/d/x.npz"}) == (
        'partition-id=0 data-path="/d/x.npz"'
    )
    assert format_run_config({"overrides": "a=1 b='x y'", "flag": True}) == (
        "overrides=\"a=1 b='x y'\" flag=true"
    )
    write_connection(tmp_path, "lab", "10.0.0.2:8000", root_certificates=tmp_path / "ca.crt")
    write_connection(tmp_path, "local", "127.0.0.1:8000", default=False)
    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["superlink"]["default"] == "lab"
    assert config["superlink"]["lab"]["root-certificates"] == str(tmp_path / "ca.crt")
    assert config["superlink"]["local"] == {"address": "127.0.0.1:8000", "insecure": True}
