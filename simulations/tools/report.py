"""Compare runs: ``python -m simulations.tools.report <suite, multirun or run dirs> [--readme FILE]``.

Finds every ``summary.json`` below the given directories and writes one markdown table
per suite (a directory with ``suite.json``, see :mod:`simulations.tools.suite`; runs
outside any suite form one table called ``runs``). A row is one method setting (and
swept value) aggregated over its seeds:

- final and best accuracy, MB up / down / total: mean ± sample standard deviation
  (``ddof=1``) over the seeds, the mean alone with one seed;
- ``× FedAvg MB``: the row's mean total MB over that of the FedAvg row of the same
  table, swept value, dataset, model, rounds, backend, partition and number of
  clients (a suite may list fields it allows to differ in ``comparable_across``; the
  FedAvg row of an unswept FedAvg serves every swept value); ``n/a`` when there is
  no such FedAvg row;
- ``paper-formula MB`` and ``× paper``, in tables with a method that reports it
  (``paper_formula_bytes``, the pruning methods): the bytes its paper's own accounting
  gives the same run (nonzeros x 32 bits + 1 bit per parameter per mask sent), and
  the measured total over it;
- ``Δ acc vs FedAvg``: the difference of mean final accuracies in points, marked
  *within noise* when ``|Δ| <= max(std_row, std_fedavg)`` (needs two seeds on both);
- Params, nonzero params (pruning methods report them), training FLOPs per sample,
  the method's density or frozen fraction (last round), rounds, backend, seeds.

Under a table, warning lines say when its runs differ in anything but the method,
the seed and the swept knob, which jobs failed (with their one-line error) and which
methods the suite leaves out and why. Beside ``report.md`` the tables go into
``report.csv`` and the plots (accuracy against cumulative measured MB and against the
round, mean with a ± std band over the seeds) into ``accuracy_vs_mb.png`` and
``accuracy_vs_round.png`` (``<table>_accuracy_vs_*.png`` when there are several
tables), all in the first directory or ``--out``. ``--readme FILE`` puts the table
and the plot link between ``<!-- headline:start -->`` and ``<!-- headline:end -->``
in FILE, the plot going to ``docs/img/<table>.png`` beside FILE.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulations.app.records import MB, accuracy_of, read_rounds, total_bytes

#: Fields that must agree for two runs' bytes or accuracies to be compared.
COMPARABLE = ("dataset", "model", "rounds", "backend", "partition", "num_clients")
START, END = "<!-- headline:start -->", "<!-- headline:end -->"
MARKERS = "osD^vPX*hp<>d8H"


class ReportError(ValueError):
    """A reason the report cannot be made (printed as one line)."""


@dataclass
class Run:
    """One finished run: its directory, ``summary.json``, rounds and suite job."""

    dir: Path
    summary: dict[str, Any]
    rounds: list[dict[str, Any]]
    job: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """The row name: the suite's label, else the summary's label or method."""
        if self.job and self.job.get("label"):
            return str(self.job["label"])
        return str(self.summary.get("label") or self.summary.get("method") or self.dir.name)

    @property
    def sweep(self) -> tuple[str | None, Any]:
        """(swept key, value) of a suite job; (None, None) otherwise."""
        if not self.job:
            return None, None
        return self.job.get("sweep_key"), self.job.get("sweep_value")

    def setup(self, fields: Sequence[str] = COMPARABLE) -> tuple[Any, ...]:
        """The values of ``fields`` in the summary."""
        return tuple(self.summary.get(k) for k in fields)


@dataclass
class Table:
    """The runs of one suite (or of the loose runs) and the suite's settings."""

    name: str
    root: Path
    runs: list[Run] = field(default_factory=list)
    suite: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ loading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: unreadable ({exc})") from None


def load_tables(roots: Sequence[Path]) -> list[Table]:
    """Group every run below ``roots`` by the suite it belongs to.

    Parameters
    ----------
    roots : Sequence[Path]
        Suite, multirun or run directories.
    """
    suites: dict[Path, Table] = {}
    loose = Table("runs", roots[0] if roots else Path("."))
    seen: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"{root}: no such directory")
        suite_dirs = sorted(
            {p.parent.resolve() for p in root.rglob("suite.json")}
            | ({root.resolve()} if (root / "suite.json").exists() else set())
        )
        for d in suite_dirs:
            if d not in suites:
                spec = _read_json(d / "suite.json")
                status = _read_json(d / "status.json") if (d / "status.json").exists() else {}
                suites[d] = Table(str(spec.get("name", d.name)), d, suite=spec, status=status)
        summaries = sorted(root.rglob("summary.json"))
        if not summaries and not suite_dirs:
            raise ReportError(f"{root}: no summary.json below it")
        for path in summaries:
            run_dir = path.parent.resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            rounds_path = path.parent / "rounds.jsonl"
            rounds = read_rounds(rounds_path) if rounds_path.exists() else []
            job = _read_json(path.parent / "job.json") if (path.parent / "job.json").exists() else None
            run = Run(path.parent, _read_json(path), rounds, job)
            owner = max((d for d in suites if d in run_dir.parents), key=lambda d: len(d.parts), default=None)
            (suites[owner] if owner is not None else loose).runs.append(run)
    tables = [t for t in suites.values() if t.runs or t.status]
    if loose.runs:
        tables.append(loose)
    if not tables:
        raise ReportError(f"{', '.join(map(str, roots))}: no summary.json below it")
    return tables


# ------------------------------------------------------------------ statistics
def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``ddof=1``); std is None for one value."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def best_accuracy(run: Run) -> float | None:
    """The highest accuracy over rounds >= 1 (the final one without rounds)."""
    accs = [accuracy_of(r) for r in run.rounds if r.get("round", 1) >= 1]
    accs = [a for a in accs if a is not None]
    return max(accs) if accs else run.summary.get("final_accuracy")


def density_of(run: Run) -> tuple[str, float] | None:
    """The method's own compactness number: frozen fraction, model or SWAT density."""
    last = run.rounds[-1] if run.rounds else {}
    s = run.summary
    if isinstance(last.get("frozen_fraction"), int | float):
        return "frozen", float(last["frozen_fraction"])
    if isinstance(s.get("final_sparsity"), int | float):
        return "density", 1.0 - float(s["final_sparsity"])
    if isinstance(s.get("uplink_density_target"), int | float):
        return "uplink density", float(s["uplink_density_target"])
    if isinstance(s.get("sparsity"), int | float):
        return "SWAT density", 1.0 - float(s["sparsity"])
    return None


@dataclass
class Row:
    """One table row: a label and swept value over its seeds."""

    label: str
    sweep_key: str | None
    sweep_value: Any
    runs: list[Run]

    def stat(self, key: str) -> tuple[float | None, float | None]:
        """Mean and std over the seeds of a summary field (``best_accuracy``: computed)."""
        if key == "best_accuracy":
            return mean_std([best_accuracy(r) for r in self.runs])
        return mean_std([r.summary.get(key) for r in self.runs])

    def mb(self, key: str) -> tuple[float | None, float | None]:
        """Mean and std of a byte total in MB."""
        return mean_std([r.summary[key] / MB if r.summary.get(key) is not None else None for r in self.runs])

    @property
    def method(self) -> str | None:
        """The method of the row's runs."""
        return self.runs[0].summary.get("method")

    def first(self, key: str) -> Any:
        """The summary value of the row's first run."""
        return self.runs[0].summary.get(key)

    def density(self) -> tuple[str, float] | None:
        """The mean density or frozen fraction and its kind."""
        found = [density_of(r) for r in self.runs]
        if not found or any(f is None for f in found):
            return None
        return found[0][0], float(np.mean([f[1] for f in found]))


def make_rows(runs: Sequence[Run]) -> list[Row]:
    """Rows of runs that differ only in the seed; a repeated seed splits a row by directory."""
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        key, value = run.sweep
        groups.setdefault((run.label, key, json.dumps(value), run.setup()), []).append(run)
    rows = []
    for (label, key, _, _), members in groups.items():
        seeds = [r.summary.get("seed") for r in members]
        if len(set(seeds)) == len(seeds):
            members.sort(key=lambda r: (r.summary.get("seed") is None, r.summary.get("seed") or 0))
            rows.append(Row(label, key, members[0].sweep[1], members))
        else:  # not seed repeats: one row per run
            rows.extend(Row(f"{label} ({r.dir.name})", key, r.sweep[1], [r]) for r in members)
    return rows


@dataclass
class Comparison:
    """A row against its FedAvg row."""

    ratio: float | None
    delta: float | None
    within_noise: bool | None


def compare(row: Row, rows: Sequence[Row], across: Sequence[str] = ()) -> Comparison:
    """The row's total-MB ratio and accuracy difference to its comparable FedAvg row.

    Parameters
    ----------
    row : Row
        The row.
    rows : Sequence[Row]
        The rows of the same table.
    across : Sequence[str]
        Fields of :data:`COMPARABLE` the table allows to differ.
    """
    fields = [f for f in COMPARABLE if f not in across]
    setup = row.runs[0].setup(fields)
    candidates = [
        r
        for r in rows
        if r.method == "fedavg"
        and r.runs[0].setup(fields) == setup
        and len(r.runs)
        and r.label.split(" (")[0] == r.label
    ]
    same_value = [r for r in candidates if (r.sweep_key, r.sweep_value) == (row.sweep_key, row.sweep_value)]
    base = same_value[0] if same_value else None
    if base is None:
        base = next((r for r in candidates if r.sweep_key is None), None)
    if base is None:
        return Comparison(None, None, None)
    mine, theirs = row.mb("total_bytes")[0], base.mb("total_bytes")[0]
    ratio = mine / theirs if mine is not None and theirs else None
    (a, sa), (b, sb) = row.stat("final_accuracy"), base.stat("final_accuracy")
    if a is None or b is None:
        return Comparison(ratio, None, None)
    noise = None if sa is None or sb is None else abs(a - b) <= max(sa, sb)
    return Comparison(ratio, a - b, noise)


# ------------------------------------------------------------------ formatting
def _pm(mean: float | None, std: float | None, spec: str) -> str:
    if mean is None:
        return "-"
    return format(mean, spec) if std is None else f"{format(mean, spec)} ± {format(std, spec)}"


def _int(value: Any) -> str:
    return "-" if value is None else f"{round(float(value)):,}"


def _delta(c: Comparison, is_base: bool) -> str:
    if is_base:
        return "—"
    if c.delta is None:
        return "n/a"
    text = f"{100 * c.delta:+.2f} pt"
    if c.within_noise is None:
        return f"{text} (1 seed)"
    return f"{text} (within noise)" if c.within_noise else text


def paper_ratio(row: Row) -> float | None:
    """Mean measured total bytes over the mean paper-formula bytes (None without the latter)."""
    mine, paper = row.mb("total_bytes")[0], row.mb("paper_formula_bytes")[0]
    return mine / paper if mine is not None and paper else None


def _paper_ratio(row: Row) -> str:
    ratio = paper_ratio(row)
    return "-" if ratio is None else f"{ratio:.3f}"


def table_rows(table: Table) -> tuple[list[Row], dict[int, Comparison]]:
    """The table's rows and their comparisons to FedAvg."""
    rows = make_rows(table.runs)
    order = {name: i for i, name in enumerate(table.suite.get("jobs") or [])}
    if order:  # the suite file's order (methods, then swept values), else the paths' order
        rows.sort(key=lambda r: min(order.get((run.job or {}).get("name"), len(order)) for run in r.runs))
    across = table.suite.get("comparable_across") or ()
    return rows, {id(r): compare(r, rows, across) for r in rows}


def markdown_table(table: Table) -> str:
    """The table in markdown, with its warning and note lines."""
    rows, comps = table_rows(table)
    swept = next((r.sweep_key for r in rows if r.sweep_key), None)
    paper = any(run.summary.get("paper_formula_bytes") is not None for row in rows for run in row.runs)
    head = [
        "method",
        *([swept] if swept else []),
        "final acc",
        "best acc",
        "MB up",
        "MB down",
        "MB total",
        "× FedAvg MB",
        *(["paper-formula MB", "× paper"] if paper else []),
        "Δ acc vs FedAvg",
        "Params",
        "nonzero params",
        "FLOPs/sample (train)",
        "density / frozen",
        "rounds",
        "backend",
        "seeds",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        c = comps[id(row)]
        dens = row.density()
        is_base = row.method == "fedavg" and c.ratio == 1.0
        cells = [
            row.label,
            *([("-" if row.sweep_value is None else str(row.sweep_value))] if swept else []),
            _pm(*row.stat("final_accuracy"), ".4f"),
            _pm(*row.stat("best_accuracy"), ".4f"),
            _pm(*row.mb("total_bytes_up"), ".2f"),
            _pm(*row.mb("total_bytes_down"), ".2f"),
            _pm(*row.mb("total_bytes"), ".2f"),
            "n/a" if c.ratio is None else f"{c.ratio:.3f}",
            *([_pm(*row.mb("paper_formula_bytes"), ".2f"), _paper_ratio(row)] if paper else []),
            _delta(c, is_base),
            _int(row.first("model_params")),
            _int(row.stat("final_nonzero_params")[0]),
            _int(row.first("model_flops_train")),
            "-" if dens is None else f"{dens[0]} {dens[1]:.3f}",
            str(row.first("rounds")),
            str(row.first("backend")),
            str(len(row.runs)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + notes(table, rows, comps))


def notes(table: Table, rows: Sequence[Row], comps: Mapping[int, Comparison]) -> list[str]:
    """Warning lines: differing setups, rows without a FedAvg, failed and omitted jobs."""
    out = []
    across = set(table.suite.get("comparable_across") or ())
    for i, name in enumerate(COMPARABLE):
        values = sorted({str(r.runs[0].setup()[i]) for r in rows})
        if len(values) > 1:
            allowed = " (allowed by the suite's comparable_across)" if name in across else ""
            out.append(
                f"- **warning:** the runs differ in {name} ({', '.join(values)}){allowed}; "
                "ratios to FedAvg are only taken between rows that agree."
            )
    missing = [r.label for r in rows if comps[id(r)].ratio is None]
    if missing and len(missing) < len(rows):
        out.append(f"- no comparable FedAvg row for: {', '.join(missing)} (× FedAvg MB n/a).")
    failed = [
        (name, rec.get("error", "")) for name, rec in table.status.items() if rec.get("status") == "failed"
    ]
    out.extend(f"- **failed:** {name}: {error}" for name, error in failed)
    for name, why in (table.suite.get("omitted") or {}).items():
        out.append(f"- **not run:** {name}: {' '.join(str(why).split())}")
    out.append(
        "- mean ± sample std over seeds; *within noise*: |Δ| ≤ the larger std of the row and FedAvg; "
        "FLOPs/sample: one training step (forward + backward) of the dense model."
    )
    return out


def write_csv(tables: Sequence[Table], path: Path) -> None:
    """All rows of all tables as CSV, mean and std in separate columns."""
    header = [
        "table",
        "method",
        "sweep_key",
        "sweep_value",
        "seeds",
        "final_acc_mean",
        "final_acc_std",
        "best_acc_mean",
        "best_acc_std",
        "mb_up_mean",
        "mb_up_std",
        "mb_down_mean",
        "mb_down_std",
        "mb_total_mean",
        "mb_total_std",
        "ratio_total_mb_vs_fedavg",
        "delta_acc_vs_fedavg",
        "within_noise",
        "params",
        "nonzero_params",
        "flops_train_per_sample",
        "density_kind",
        "density",
        *COMPARABLE,
        "paper_formula_mb_mean",
        "paper_formula_mb_std",
        "ratio_total_mb_vs_paper",
    ]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for table in tables:
            rows, comps = table_rows(table)
            for row in rows:
                c, dens = comps[id(row)], row.density()
                writer.writerow(
                    [
                        table.name,
                        row.label,
                        row.sweep_key or "",
                        "" if row.sweep_value is None else row.sweep_value,
                        len(row.runs),
                        *row.stat("final_accuracy"),
                        *row.stat("best_accuracy"),
                        *row.mb("total_bytes_up"),
                        *row.mb("total_bytes_down"),
                        *row.mb("total_bytes"),
                        c.ratio,
                        c.delta,
                        c.within_noise,
                        row.first("model_params"),
                        row.stat("final_nonzero_params")[0],
                        row.first("model_flops_train"),
                        dens[0] if dens else "",
                        dens[1] if dens else "",
                        *row.runs[0].setup(),
                        *row.mb("paper_formula_bytes"),
                        paper_ratio(row),
                    ]
                )


# ------------------------------------------------------------------ plots
def curve(runs: Sequence[Sequence[Mapping[str, Any]]], x: str) -> tuple[np.ndarray, ...] | None:
    """(round, x mean, accuracy mean, accuracy std) over the rounds every run has.

    ``x`` is ``"mb"`` (cumulative training MB, up + down) or ``"round"``.
    """
    per_run = [{int(r["round"]): r for r in recs if accuracy_of(r) is not None} for recs in runs]
    per_run = [p for p in per_run if p]
    if not per_run:
        return None
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    if not common:
        return None
    acc = np.array([[accuracy_of(p[k]) for k in common] for p in per_run])
    xs = np.array(
        [[total_bytes(p[k]) / MB if x == "mb" else k for k in common] for p in per_run], dtype=float
    )
    std = acc.std(axis=0, ddof=1) if len(acc) > 1 else np.zeros(len(common))
    return np.array(common), xs.mean(axis=0), acc.mean(axis=0), std


def style(i: int) -> tuple[tuple[float, float, float], str]:
    """The colour and marker of the i-th curve: tab20's dark shades first, then the light ones."""
    import matplotlib

    colours = matplotlib.colormaps["tab20"].colors
    return colours[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], MARKERS[i % len(MARKERS)]


def y_range(points: Sequence[np.ndarray], tops: Sequence[np.ndarray]) -> tuple[float, float]:
    """A y-range that shows differences: the 5th percentile of the points minus a margin to the top."""
    ys = np.concatenate(points) if points else np.array([0.0, 1.0])
    top = float(np.max(np.concatenate(tops))) if tops else float(ys.max())
    low = float(np.percentile(ys, 5))
    margin = max(0.1 * (top - low), 0.01)
    return max(0.0, low - margin), min(1.0, top + margin) if top <= 1.0 else top + margin


def plot_accuracy(
    series: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    path: str | Path,
    x: str = "mb",
    title: str | None = None,
) -> None:
    """Accuracy against cumulative MB or the round, mean ± std band over each label's runs.

    Parameters
    ----------
    series : Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]
        Label -> the rounds records of each seed's run.
    path : str | Path
        The PNG to write.
    x : str
        ``"mb"`` or ``"round"``.
    title : str | None
        The plot's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.6))
    points, tops = [], []
    for i, (label, runs) in enumerate(series.items()):
        found = curve(runs, x)
        if found is None:
            continue
        rounds, xs, mean, std = found
        colour, marker = style(i)
        every = max(1, len(xs) // 12)
        ax.plot(
            xs,
            mean,
            color=colour,
            marker=marker,
            markevery=every,
            markersize=5,
            lw=1.4,
            label=label if len(runs) == 1 else f"{label} (n={len(runs)})",
        )
        if np.any(std > 0):
            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.18, lw=0)
        later = rounds >= 1
        points.append(mean[later] if later.any() else mean)
        tops.append((mean + std)[later] if later.any() else mean + std)
    if ax.lines:
        ax.set_ylim(*y_range(points, tops))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    ax.set_xlabel("cumulative measured traffic, up + down (MB)" if x == "mb" else "round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or ("accuracy vs traffic" if x == "mb" else "accuracy vs round"))
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_table(table: Table, path: Path, x: str) -> None:
    """The table's rows as curves (one per row, band over seeds)."""
    rows, _ = table_rows(table)
    series = {}
    for row in rows:
        name = row.label if row.sweep_value is None else f"{row.label} {row.sweep_key}={row.sweep_value}"
        series[name] = [r.rounds for r in row.runs if r.rounds]
    setup = table.runs[0].summary
    what = "accuracy vs cumulative traffic" if x == "mb" else "accuracy vs round"
    title = (
        f"{table.name}: {what} ({setup.get('dataset')}, {setup.get('model')}, "
        f"{setup.get('num_clients')} clients, {setup.get('rounds')} rounds)"
    )
    plot_accuracy(series, path, x=x, title=title)


# ------------------------------------------------------------------ README
def replace_headline(readme: Path, text: str) -> None:
    """Put ``text`` between the headline markers of ``readme``."""
    if not readme.is_file():
        raise ReportError(f"{readme}: no such file")
    content = readme.read_text()
    start, end = content.find(START), content.find(END)
    if start < 0 or end < 0 or end < start:
        raise ReportError(f"{readme}: markers {START} ... {END} not found")
    readme.write_text(content[: start + len(START)] + "\n" + text.strip() + "\n" + content[end:])


# ------------------------------------------------------------------ command line
def report(dirs: Sequence[Path], out: Path | None = None, readme: Path | None = None) -> str:
    """Write report.md, report.csv and the plots; returns the markdown.

    Parameters
    ----------
    dirs : Sequence[Path]
        Suite, multirun or run directories.
    out : Path | None
        Where to write (default: the first directory).
    readme : Path | None
        A file whose headline markers receive the (single) table and its plot.
    """
    tables = [t for t in load_tables(dirs) if t.runs]
    if not tables:
        raise ReportError(f"{', '.join(map(str, dirs))}: no finished run below it")
    out = out or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for table in tables:
        prefix = "" if len(tables) == 1 else f"{table.name}_"
        for x in ("mb", "round"):
            plot_table(table, out / f"{prefix}accuracy_vs_{x}.png", x)
        parts.append(
            f"## {table.name}\n\n{markdown_table(table)}\n\n"
            f"![{table.name}: accuracy vs MB]({prefix}accuracy_vs_mb.png)\n"
            f"![{table.name}: accuracy vs round]({prefix}accuracy_vs_round.png)\n"
        )
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    write_csv(tables, out / "report.csv")
    if readme is not None:
        if len(tables) != 1:
            raise ReportError(f"--readme needs one table, found {len(tables)}")
        image = Path("docs") / "img" / f"{tables[0].name}.png"
        (readme.parent / image).parent.mkdir(parents=True, exist_ok=True)
        plot_table(tables[0], readme.parent / image, "mb")
        replace_headline(readme, f"{markdown_table(tables[0])}\n\n![{tables[0].name}]({image.as_posix()})")
    return text


def main(argv: list[str] | None = None) -> str:
    """Print the tables; exit 2 with a one-line message when the report cannot be made."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.tools.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="suite, multirun or run directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: first dir)")
    parser.add_argument(
        "--readme", type=Path, default=None, help=f"replace the text between {START} and {END} in this file"
    )
    args = parser.parse_args(argv)
    try:
        text = report(args.dirs, args.out, args.readme)
    except ReportError as exc:
        print(f"fedlean report: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(text)
    out = args.out or args.dirs[0]
    print(
        f"wrote {out / 'report.md'}, {out / 'report.csv'} and the plots"
        + (f"; updated {args.readme}" if args.readme else "")
    )
    return text


if __name__ == "__main__":
    main()
