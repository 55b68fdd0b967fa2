"""Compare runs: ``python -m simulations.tools.report <run-or-multirun-dir> [...]``.

Finds every ``summary.json`` below the given directories and prints a markdown
table (accuracy, Params, FLOPs, measured MB up/down/total, ratio to the FedAvg run
if there is one), then writes ``report.md`` and ``accuracy_vs_mb.png`` (accuracy
against cumulative measured MB, one curve per run) into the first directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from simulations.app.results import MB, plot_runs, read_rounds


def find_runs(roots: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(run dir, summary) for every run below the roots, in path order."""
    runs = []
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"no such directory: {root}")
        for path in sorted(root.rglob("summary.json")):
            runs.append((path.parent, json.loads(path.read_text())))
    return runs


def _label(run_dir: Path, summary: dict[str, Any], labels: dict[str, int]) -> str:
    label = summary.get("label") or summary.get("method", run_dir.name)
    labels[label] = labels.get(label, 0) + 1
    return label if labels[label] == 1 else f"{label} ({run_dir.name})"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(runs: list[tuple[Path, dict[str, Any]]]) -> str:
    """The comparison table, one row per run."""
    baseline = next((s for _, s in runs if s.get("method") == "fedavg"), None)
    header = ("| run | dataset | model | Params | FLOPs/sample (fwd) | rounds | accuracy "
              "| MB up | MB down | MB total | × FedAvg bytes |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    labels: dict[str, int] = {}
    for run_dir, s in runs:
        ratio = (s["total_bytes"] / baseline["total_bytes"]
                 if baseline and baseline.get("total_bytes") else None)
        lines.append(
            f"| {_label(run_dir, s, labels)} | {s.get('dataset', '-')} | {s.get('model', '-')} "
            f"| {_fmt(s.get('model_params'), ',')} | {_fmt(s.get('model_flops_forward'), ',')} "
            f"| {s.get('rounds', '-')} | {_fmt(s.get('final_accuracy'), '.4f')} "
            f"| {s.get('total_bytes_up', 0) / MB:.2f} | {s.get('total_bytes_down', 0) / MB:.2f} "
            f"| {s.get('total_bytes', 0) / MB:.2f} | {_fmt(ratio, '.3f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Print the table; write report.md and the plot into the first directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: first dir)")
    args = parser.parse_args(argv)
    runs = find_runs(args.dirs)
    if not runs:
        raise SystemExit(f"no summary.json found below {', '.join(map(str, args.dirs))}")
    table = markdown_table(runs)
    out = args.out or args.dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(table + "\n")
    labels: dict[str, int] = {}
    curves = {_label(d, s, labels): read_rounds(d / "rounds.jsonl") for d, s in runs
              if (d / "rounds.jsonl").exists()}
    plot_runs(curves, out / "accuracy_vs_mb.png")
    print(table)
    print(f"\nwrote {out / 'report.md'} and {out / 'accuracy_vs_mb.png'}")
    return table


if __name__ == "__main__":
    main()
