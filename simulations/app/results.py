"""The one results writer: ``rounds.jsonl``, ``summary.json``, the final model, a plot.

Every method's run goes through :class:`ResultsWriter`: one JSON line per round
(round 0 is the initial model), a summary at the end, and a plot of accuracy
against cumulative measured megabytes. It also prints one progress line per round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MB = 1e6  # results use decimal megabytes (10^6 bytes)


def accuracy_of(record: Mapping[str, Any]) -> float | None:
    """The accuracy a record reports: centralized if there is one, else client-side.

    Methods without a single global model (FedGKT) report their own ``accuracy``.
    """
    for key in ("central_accuracy", "client_accuracy", "accuracy"):
        if record.get(key) is not None:
            return float(record[key])
    return None


def total_bytes(record: Mapping[str, Any]) -> int:
    """Cumulative training bytes (up + down) up to a round record."""
    return int(record.get("cum_bytes_up", 0)) + int(record.get("cum_bytes_down", 0))


class ResultsWriter:
    """Writes one run's results into ``out_dir`` and prints progress.

    Parameters
    ----------
    out_dir : str | Path
        The run's directory (Hydra's output dir in simulation).
    num_rounds : int
        For the progress display.
    quiet : bool (default: False)
        No progress lines.
    """

    def __init__(self, out_dir: str | Path, num_rounds: int, quiet: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rounds_path = self.out_dir / "rounds.jsonl"
        self.rounds_path.write_text("")
        self.num_rounds = num_rounds
        self.quiet = quiet
        self.records: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def on_round(self, record: Mapping[str, Any]) -> None:
        """Append one round's record (adds wall seconds since the start)."""
        record = {**record, "wall_seconds": round(time.perf_counter() - self.start, 4)}
        self.records.append(record)
        with self.rounds_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if not self.quiet:
            self._print_progress(record)

    def _print_progress(self, record: Mapping[str, Any]) -> None:
        from rich.console import Console

        acc = accuracy_of(record)
        acc_text = f"acc {acc:.4f}" if acc is not None else "acc -"
        extras = "".join(
            f" | {k} {record[k]:.3g}" for k in ("density", "sparsity", "frozen_fraction")
            if isinstance(record.get(k), int | float)
        )
        dropped = f" | [yellow]dropped {record['dropped']}[/]" if record.get("dropped") else ""
        Console(highlight=False).print(
            f"[bold]round {record['round']:>3}/{self.num_rounds}[/] | {acc_text} | "
            f"up {record['cum_bytes_up'] / MB:8.3f} MB | down {record['cum_bytes_down'] / MB:8.3f} MB"
            f"{extras}{dropped} | {record['wall_seconds']:.1f} s"
        )

    def finish(
        self, summary: Mapping[str, Any], final_arrays: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        """Write ``summary.json`` (adds totals from the rounds), the model and the plot."""
        last = self.records[-1] if self.records else {}
        full = {
            **summary,
            "rounds": len(self.records) - 1,
            "final_accuracy": accuracy_of(last),
            "final_central_accuracy": last.get("central_accuracy"),
            "final_client_accuracy": last.get("client_accuracy"),
            "total_bytes_up": last.get("cum_bytes_up", 0),
            "total_bytes_down": last.get("cum_bytes_down", 0),
            "total_bytes": total_bytes(last),
            "total_mb": total_bytes(last) / MB,
            "eval_bytes": int(last.get("cum_eval_bytes_up", 0)) + int(last.get("cum_eval_bytes_down", 0)),
            "wall_seconds": round(time.perf_counter() - self.start, 3),
        }
        (self.out_dir / "summary.json").write_text(json.dumps(full, indent=2, default=_jsonable))
        if final_arrays is not None:
            np.savez_compressed(self.out_dir / "final_model.npz", **final_arrays)
        if len(self.records) > 1:
            plot_runs({full.get("method", "run"): self.records}, self.out_dir / "accuracy_vs_mb.png")
        return full


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_rounds(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``rounds.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_runs(runs: Mapping[str, list[Mapping[str, Any]]], path: str | Path) -> None:
    """Plot accuracy vs cumulative training MB (up + down), one curve per run.

    The plotting lives in :func:`simulations.tools.report.plot_accuracy`; this keeps the
    one-run plot that :class:`ResultsWriter` writes.
    """
    from simulations.tools.report import plot_accuracy

    plot_accuracy({label: [records] for label, records in runs.items()}, path, x="mb")
