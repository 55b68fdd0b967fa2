"""Flower's private names behind ``fl_strategies.flwr_compat``: present and behaving.

Each test names the Flower symbol it relies on; a failure after a Flower upgrade says
which one changed and that the seam was tested with ``TESTED_FLWR`` only.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from fl_strategies import flwr_compat
from fl_strategies.flwr_compat import TESTED_FLWR


def flower_changed(symbol: str, what: str) -> str:
    return (
        f"Flower {flwr_compat.FLWR_VERSION}: {symbol} {what}. fl_strategies/flwr_compat.py "
        f"was tested with flwr{TESTED_FLWR} only; adapt it there (and widen the pin in "
        "pyproject.toml once tested)."
    )


def resolve(dotted: str):
    """Import the longest importable module prefix of ``dotted``, then walk attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError as exc:
            pytest.fail(flower_changed(dotted, f"is gone ({exc})"))
        return obj
    pytest.fail(flower_changed(dotted, "cannot be imported"))


def test_installed_flower_is_in_the_tested_range():
    assert Version(flwr_compat.FLWR_VERSION) in SpecifierSet(TESTED_FLWR), flower_changed(
        "flwr", "is outside the tested range"
    )


def test_pyproject_pins_the_tested_range():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = [d for d in project["project"]["dependencies"] if d.startswith("flwr[")]
    assert pins and SpecifierSet(pins[0].split("]", 1)[1]) == SpecifierSet(TESTED_FLWR), pins


@pytest.mark.parametrize(
    ("dotted", "parameters"),
    [
        ("flwr.supercore.inflatable.inflatable_object.get_all_nested_objects", ["obj"]),
        ("flwr.supercore.inflatable.inflatable_object.no_object_id_recompute", []),
        (
            "flwr.supercore.inflatable.inflatable_utils.inflate_object_from_contents",
            ["object_id", "object_contents"],
        ),
        ("flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue", flwr_compat.ENGINE_POLL_PARAMETERS),
        (
            "flwr.simulation.run_simulation",
            ["server_app", "client_app", "num_supernodes", "backend_name", "backend_config"],
        ),
        ("flwr.cli.utils.is_valid_name", ["name"]),
        ("flwr.supercore.run.Run.create_empty", ["run_id"]),
    ],
)
def test_private_functions_exist_with_the_expected_parameters(dotted, parameters):
    function = resolve(dotted)
    found = list(inspect.signature(function).parameters)
    assert found[: len(parameters)] == parameters, flower_changed(
        dotted, f"takes {found}, expected {parameters} first"
    )


@pytest.mark.parametrize(
    ("dotted", "attributes"),
    [
        ("flwr.supercore.task_identity.TaskIdentity", ["run_id", "node_id", "task_id"]),
        ("flwr.common.constant.ErrorCode", ["CLIENT_APP_RAISED_EXCEPTION", "NODE_UNAVAILABLE"]),
        ("flwr.proto.node_pb2.NodeInfo", ["node_id"]),
        ("flwr.supercore.version.package_version", []),
        ("flwr.supercore.log", []),
    ],
)
def test_private_names_exist_with_the_expected_attributes(dotted, attributes):
    obj = resolve(dotted)
    for attribute in attributes:
        has = (
            attribute in obj.DESCRIPTOR.fields_by_name
            if hasattr(obj, "DESCRIPTOR")
            else hasattr(obj, attribute)
        )
        assert has, flower_changed(dotted, f"has no '{attribute}'")


def test_constants_keep_their_values():
    from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

    assert SUPERLINK_NODE_ID == 1, flower_changed("SUPERLINK_NODE_ID", "changed")
    assert (ErrorCode.CLIENT_APP_RAISED_EXCEPTION, ErrorCode.NODE_UNAVAILABLE) == (2, 5), flower_changed(
        "ErrorCode", "renumbered"
    )


def _message(payload_bytes: int = 1000) -> Message:
    arrays = ArrayRecord({"w": Array(np.zeros(payload_bytes, np.uint8))})
    return Message(
        RecordDict({"arrays": arrays, "config": ConfigRecord({"k": 1})}),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )


def test_message_id_override_round_trips_through_serialization():
    from fl_strategies.wire import wire_copy

    message = _message()
    flwr_compat.set_message_id(message, "abc123")
    assert message.metadata.message_id == "abc123", flower_changed(
        "Metadata.__dict__['_message_id']", "no longer backs Metadata.message_id"
    )
    copy, size = wire_copy(message)
    assert copy.metadata.message_id == "abc123"
    assert copy.metadata.dst_node_id == 7
    np.testing.assert_array_equal(copy.content.array_records["arrays"]["w"].numpy(), np.zeros(1000, np.uint8))
    assert size > 1000


def test_serialized_size_grows_by_exactly_the_added_payload():
    from fl_strategies.wire import message_bytes

    small, large = message_bytes(_message(1000)), message_bytes(_message(11_000))
    # Flower stores an array's npy bytes as they are: 10,000 more bytes of payload cost
    # 10,000 more bytes on the wire, plus at most a few bytes of varint lengths.
    assert 10_000 <= large - small <= 10_016, flower_changed(
        "inflatable deflate()", f"serializes 10,000 payload bytes as {large - small}"
    )
    with flwr_compat.no_object_id_recompute():
        objects = flwr_compat.nested_objects(_message())
    assert len(objects) >= 3, flower_changed("get_all_nested_objects", "finds too few objects")


def test_task_identity_is_what_new_messages_carry():
    flwr_compat.set_task_identity(run_id=42, node_id=1, task_id=3)
    message = _message()
    assert message.metadata.run_id == 42, flower_changed(
        "TaskIdentity", "no longer sets the run id of new messages"
    )
    reply = Message(Error(flwr_compat.CLIENT_APP_ERROR_CODE, "boom"), reply_to=message)
    assert reply.error.code == 2


def test_engine_polling_replacement_installs_and_restores(monkeypatch):
    vce_api = importlib.import_module("flwr.server.superlink.fleet.vce.vce_api")
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    original = vce_api.add_messages_to_queue
    assert flwr_compat.shorten_engine_polling(0.01)
    assert vce_api.add_messages_to_queue is not original
    # A function with another signature is left alone.
    monkeypatch.setattr(vce_api, "add_messages_to_queue", lambda state, queue: None)
    assert not flwr_compat.shorten_engine_polling(0.01)


def test_run_simulation_is_reached_through_the_seam(monkeypatch):
    simulation = importlib.import_module("flwr.simulation")
    calls = []
    monkeypatch.setattr(simulation, "run_simulation", lambda **kwargs: calls.append(kwargs))
    flwr_compat.run_simulation(num_supernodes=2)
    assert calls == [{"num_supernodes": 2}]


def test_no_module_outside_the_seam_imports_flower_internals():
    from pathlib import Path

    root = Path(__file__).parents[1]
    internal = (
        "flwr.supercore",
        "flwr.common",
        "flwr.proto",
        "flwr.server.",
        "flwr.simulation",
        "flwr.cli.",
        '__dict__["_message_id"]',
        "_construct_messages",
    )
    offenders = []
    for package in ("fl_strategies", "clients", "simulations"):
        for path in (root / package).rglob("*.py"):
            if path.name == "flwr_compat.py":
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(root)}: {name}" for name in internal if name in text]
    assert not offenders, offenders


def test_ray_client_resources_reach_the_actor_options(monkeypatch):
    """``backend.actor_max_restarts`` relies on Flower passing client_resources to ``.options()``."""
    import types

    ray_actor = importlib.import_module("flwr.simulation.ray_transport.ray_actor")
    backend_cls = resolve("flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend")
    resources = {"num_cpus": 1.0, "num_gpus": 0.0, "max_restarts": -1}
    # Flower's validation keeps every int/float entry.
    holder = types.SimpleNamespace(client_resources_key="client_resources")
    assert backend_cls._validate_client_resources(holder, {"client_resources": resources}) == resources, (
        flower_changed("RayBackend._validate_client_resources", "drops or rejects actor options")
    )
    seen: dict = {}

    class StubActor:
        @staticmethod
        def options(**kwargs):
            seen.update(kwargs)
            return types.SimpleNamespace(remote=lambda **_: "actor")

    monkeypatch.setattr(ray_actor, "pool_size_from_resources", lambda _: 1)
    pool = ray_actor.BasicActorPool(actor_type=StubActor, client_resources=resources, actor_kwargs={})
    pool.add_actors_to_pool(1)
    assert seen == resources and pool.pool == ["actor"], flower_changed(
        "BasicActorPool", "no longer creates actors with actor_type.options(**client_resources)"
    )
