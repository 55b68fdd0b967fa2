"""The ``flwr`` CLI's own files and argument formats: connections, node and run config."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class DeploymentError(RuntimeError):
    """A SuperLink, SuperNode or run did not do what was expected; the message says what."""


def write_connection(
    flwr_home: str | Path,
    name: str,
    address: str,
    root_certificates: str | Path | None = None,
    default: bool = True,
) -> Path:
    """Add (or replace) a SuperLink connection in ``<flwr_home>/config.toml``.

    Without ``root_certificates`` the connection is ``insecure`` (plain HTTP).
    """
    import tomli_w

    path = Path(flwr_home) / "config.toml"
    config: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    links = config.setdefault("superlink", {})
    entry: dict[str, Any] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(root_certificates).resolve())
    links[name] = entry
    if default:
        links["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


def _executable(name: str) -> str:
    """A Flower command next to this interpreter (an unactivated venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"`{name}` not found: install flwr (pip install -e .)")
    return found


def format_node_config(node_config: Mapping[str, Any] | str) -> str:
    """``--node-config`` text: space-separated ``key=value``, strings quoted (TOML values)."""
    if isinstance(node_config, str):
        return node_config
    return " ".join(f"{k}={_toml_value(v)}" for k, v in node_config.items())


def format_run_config(run_config: Mapping[str, Any]) -> str:
    """``--run-config`` text from a dict (values as TOML)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))
