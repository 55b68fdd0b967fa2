"""Round records and their derived figures, shared by the results writer and the report.

A round record is one line of ``rounds.jsonl`` (round 0 is the initial model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MB = 1e6  # results use decimal megabytes (10^6 bytes)

__all__ = ["MB", "accuracy_of", "read_rounds", "total_bytes"]


def accuracy_of(record: Mapping[str, Any]) -> float | None:
    """The accuracy a record reports: centralized if there is one, else client-side.

    A method without one global model reports its own ``accuracy`` in the round record.
    """
    for key in ("central_accuracy", "client_accuracy", "accuracy"):
        if record.get(key) is not None:
            return float(record[key])
    return None


def total_bytes(record: Mapping[str, Any]) -> int:
    """Cumulative training bytes (up + down) up to a round record."""
    return int(record.get("cum_bytes_up", 0)) + int(record.get("cum_bytes_down", 0))


def read_rounds(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``rounds.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
