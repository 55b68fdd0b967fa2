"""Diagnostic: log every traffic record of a ``flower-superlink`` (docs/deploy.md).

Put this directory on ``PYTHONPATH`` and set ``TRAFFIC_LOG=/path/traffic.jsonl`` for
the SuperLink process only; each call of the link state's ``store_traffic`` then
appends ``{"fn": <Fleet handler>, "sent": ..., "recv": ...}``. ``pull_object`` /
``push_object`` records are the objects' bytes (what fedlean counts);
``pull_messages`` / ``push_messages`` records are the protobuf envelope.
Not used by fedlean itself.
"""

import importlib
import json
import os
import sys

_LOG = os.environ.get("TRAFFIC_LOG")


def _patch(module_name: str, class_name: str) -> None:
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return
    original = cls.store_traffic

    def store_traffic(self, run_id, *, bytes_sent, bytes_recv):  # noqa: ANN001, ANN202
        caller = sys._getframe(1).f_code.co_name
        record = {"fn": caller, "sent": bytes_sent, "recv": bytes_recv}
        with open(_LOG, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        return original(self, run_id, bytes_sent=bytes_sent, bytes_recv=bytes_recv)

    cls.store_traffic = store_traffic


if _LOG and "flower-superlink" in " ".join(sys.argv):
    _patch("flwr.server.superlink.linkstate.sql_linkstate", "SqlLinkState")
    _patch("flwr.server.superlink.linkstate.in_memory_linkstate", "InMemoryLinkState")
