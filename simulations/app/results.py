"""The one results writer: ``rounds.jsonl``, ``summary.json``, the final model, a plot.

Every method's run goes through :class:`ResultsWriter`: one JSON line per round
(round 0 is the initial model), a summary at the end, and a plot of accuracy
against cumulative measured megabytes. It also prints one progress line per round.
Every file is replaced atomically; ``status.json`` says whether the run is running,
was interrupted or finished, and a directory holding a finished run is never
written into again.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simulations.app.records import MB, accuracy_of, total_bytes

SUMMARY_FILE = "summary.json"
#: Written by :mod:`simulations.app.checkpoint` (named here: the writer reports it).
CHECKPOINT_FILE = "checkpoint.pt"
#: ``running`` | ``interrupted`` | ``finished``, with the rounds completed so far.
STATUS_FILE = "status.json"


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
    resume : Mapping[str, Any] | None (default: None)
        What :meth:`checkpoint_state` returned when the run's last checkpoint was
        written: the writer continues with those rounds (``rounds.jsonl`` is rewritten
        from them) and that wall time. None: a new run, ``rounds.jsonl`` starts empty
        and an old checkpoint in the directory is removed.
    """

    def __init__(
        self,
        out_dir: str | Path,
        num_rounds: int,
        quiet: bool = False,
        resume: Mapping[str, Any] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        if (self.out_dir / SUMMARY_FILE).exists():
            from simulations.app.config import ConfigError

            raise ConfigError(
                f"output dir {str(self.out_dir)!r}: holds a finished run ({SUMMARY_FILE}); "
                "choose another (hydra.run.dir=...) or move it away"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rounds_path = self.out_dir / "rounds.jsonl"
        self.num_rounds = num_rounds
        self.quiet = quiet
        self.records: list[dict[str, Any]] = [dict(r) for r in (resume or {}).get("records", [])]
        self.start = time.perf_counter() - float((resume or {}).get("elapsed", 0.0))
        if resume is None:
            (self.out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        write_atomic(self.rounds_path, self._rounds_bytes())
        self._status("running")

    def checkpoint_state(self) -> dict[str, Any]:
        """The rounds written so far and the wall time, for a checkpoint (see ``resume``)."""
        return {"records": [dict(r) for r in self.records], "elapsed": time.perf_counter() - self.start}

    def resume_command(self) -> str | None:
        """The command that continues this run, if a checkpoint exists."""
        if not (self.out_dir / CHECKPOINT_FILE).is_file():
            return None
        return f"python -m simulations.run resume={self.out_dir}"

    def _rounds_bytes(self) -> bytes:
        return "".join(json.dumps(r) + "\n" for r in self.records).encode()

    def _status(self, status: str, **fields: Any) -> None:
        rounds = max(len(self.records) - 1, 0)
        if status == "running":
            fields["pid"] = os.getpid()
        if status != "finished" and self.resume_command():
            fields["resume"] = self.resume_command()
        write_atomic(
            self.out_dir / STATUS_FILE,
            json.dumps(
                {"status": status, "rounds_completed": rounds, "num_rounds": self.num_rounds, **fields},
                indent=2,
            ).encode(),
            # The per-round "running" refreshes (two a round) are not synced to disk: each
            # is replaced within a round, and rounds.jsonl and the checkpoint, which are
            # synced, hold the progress. A final status is.
            durable=status != "running",
        )

    def interrupted(self, reason: str) -> None:
        """Mark the directory as holding an interrupted run (the rounds so far stay readable).

        ``status.json`` gets the reason and, when a checkpoint exists, the resume command.
        """
        self._status("interrupted", reason=reason)

    def checkpointed(self) -> None:
        """Refresh ``status.json`` once a checkpoint is written (it names the resume command)."""
        self._status("running")

    def on_round(self, record: Mapping[str, Any]) -> None:
        """Append one round's record (adds wall and process CPU seconds since the start).

        The file is replaced atomically, so a killed run leaves whole records only;
        non-finite numbers are written as ``null`` (JSON has no NaN).
        """
        record = finite_or_none(
            {
                **record,
                "wall_seconds": round(time.perf_counter() - self.start, 4),
                # This process only (server, and the clients of backend=inline), since it started.
                "cpu_seconds": round(time.process_time(), 4),
            }
        )
        self.records.append(record)
        write_atomic(self.rounds_path, self._rounds_bytes())
        self._status("running")
        if not self.quiet:
            self._print_progress(record)

    def _print_progress(self, record: Mapping[str, Any]) -> None:
        from rich.console import Console

        acc = accuracy_of(record)
        acc_text = f"acc {acc:.4f}" if acc is not None else "acc -"
        extras = "".join(
            f" | {k} {record[k]:.3g}"
            for k in ("density", "sparsity", "frozen_fraction")
            if isinstance(record.get(k), int | float)
        )
        dropped = f" | [yellow]dropped {record['dropped']}[/]" if record.get("dropped") else ""
        if record.get("missing"):
            dropped += f" | [yellow]missing {record['missing']}[/]"
        if record.get("skipped"):
            dropped += " | [yellow]skipped[/]"
        Console(highlight=False).print(
            f"[bold]round {record['round']:>3}/{self.num_rounds}[/] | {acc_text} | "
            f"up {record['cum_bytes_up'] / MB:8.3f} MB | down {record['cum_bytes_down'] / MB:8.3f} MB"
            f"{extras}{dropped} | {record['wall_seconds']:.1f} s"
        )

    def finish(
        self, summary: Mapping[str, Any], final_arrays: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        """Write ``summary.json`` (adds totals from the rounds), the model and the plot.

        ``trained_rounds`` counts the rounds that aggregated replies (not skipped); with
        none, the final model is the initial one and the summary's ``warning`` says so.
        """
        last = self.records[-1] if self.records else {}
        trained = sum(1 for r in self.records if r.get("round", 0) > 0 and not r.get("skipped"))
        full = {
            **summary,
            "rounds": len(self.records) - 1,
            "trained_rounds": trained,
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
        if trained == 0:
            full["warning"] = "no round aggregated any reply: the final model is the initial model"
            if not self.quiet:
                from rich.console import Console

                Console(highlight=False, stderr=True).print(
                    f"[bold yellow]fedlean: warning: {full['warning']}[/]"
                )
        full = finite_or_none(full)
        if final_arrays is not None:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **final_arrays)
            write_atomic(self.out_dir / "final_model.npz", buffer.getvalue())
        write_atomic(self.out_dir / SUMMARY_FILE, json.dumps(full, indent=2, default=_jsonable).encode())
        self._status("finished")
        if len(self.records) > 1:
            plot_runs({full.get("method", "run"): self.records}, self.out_dir / "accuracy_vs_mb.png")
        return full


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    ``durable``: sync the data to disk before the rename (so that a power loss, not
    only a killed process, leaves the old file or the new one).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def plot_runs(runs: Mapping[str, list[Mapping[str, Any]]], path: str | Path) -> None:
    """Plot accuracy vs cumulative training MB (up + down), one curve per run.

    The plotting lives in :func:`simulations.tools.report.plot_accuracy`; this keeps the
    one-run plot that :class:`ResultsWriter` writes.
    """
    from simulations.tools.report import plot_accuracy

    plot_accuracy({label: [records] for label, records in runs.items()}, path, x="mb")
