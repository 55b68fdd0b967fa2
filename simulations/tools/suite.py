"""Run a named grid of runs: ``python -m simulations.tools.suite <name> [--jobs N] [--out DIR] [overrides]``.

A suite (``simulations/conf/suite/<name>.yaml``, or a path to such a file) is
methods x seeds x (optionally) the values of one swept knob, on one common setup::

    description: one line shown by --list
    overrides: [dataset=digits, num_rounds=10]   # every job
    seeds: [0, 1, 2]                              # the same seeds for every method
    methods:                                      # label: that label's own overrides
      fedavg: []                                  # a label that names a method implies method=<label>
      oneshot: [method.ft_rounds=3]
      zerofl_topk_diff: [method=zerofl, method.uplink=topk_diff]
    sweep: {key: method.s_f, values: [0.5, 0.9], methods: [fedsparsify_global]}  # optional
    omitted: {fedgkt: why it is not run}          # optional, printed by the report

The seed fixes the partitions and the initial model, so jobs of one seed see the same
client data whatever the method. Extra command-line overrides go after the suite's
own (e.g. ``num_rounds=2`` for a quick check). Each job writes into
``<out>/<label>[/<knob>=<value>]/seed<seed>/`` (``job.json``, ``job.log`` and the run's
``rounds.jsonl``/``summary.json``); the suite keeps ``suite.json``, ``jobs.jsonl`` (one
line per job and invocation: ``done``, ``failed`` with a one-line error, or
``cached``) and ``status.json`` (the latest state of every job).

A job is finished when its ``summary.json`` exists; a suite started again skips
finished jobs whose overrides are unchanged and re-runs the others.

Each job runs in its own Python process (``python -m simulations.tools.suite --run-job
DIR``), which composes the config with Hydra's compose API and calls
:func:`simulations.runtimes.simulation.run_from_config`. A process per job costs a few
seconds of imports and data loading, small next to a job's training, and buys what an
in-process loop cannot give: a crash (a segfault in a native library, running out of
memory, a hung Ray actor) fails that job only, global state (torch seeds and threads,
Flower's loggers, Ray) never leaks from one job into the next, and ``--jobs N`` runs N
jobs at once on N cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from simulations import CONF_DIR

#: Where the shipped suites live (read with OmegaConf; not a group of ``config.yaml``).
SUITE_DIR = CONF_DIR / "suite"
#: The exit status of a job whose config is invalid (as ``simulations.run``).
INVALID_CONFIG = 2


class SuiteError(ValueError):
    """A suite file that cannot be expanded into jobs."""


@dataclass(frozen=True)
class Job:
    """One run of a suite.

    Attributes
    ----------
    name : str
        The job's directory relative to the suite's, e.g. ``fedavg/seed0``.
    label : str
        The suite's name for the method setting (a table row).
    method : str
        The method name (``method=`` override).
    seed : int
        The seed.
    overrides : list[str]
        Every Hydra override of the job, in order.
    sweep_key : str | None
        The swept knob, when the suite has one and it applies to this label.
    sweep_value : Any
        Its value for this job.
    """

    name: str
    label: str
    method: str
    seed: int
    overrides: list[str] = field(default_factory=list)
    sweep_key: str | None = None
    sweep_value: Any = None


def suite_path(name: str) -> Path:
    """The file of a suite given by name (``conf/suite/<name>.yaml``) or by path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = SUITE_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SUITE_DIR.glob("*.yaml")))
        raise SuiteError(f"{name}: no such suite (known: {known})")
    return path


def load_suite(name: str) -> dict[str, Any]:
    """The suite's definition as a plain dict, with ``name`` set."""
    path = suite_path(name)
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(spec, dict) or not isinstance(spec.get("methods"), dict) or not spec["methods"]:
        raise SuiteError(f"{path}: needs a non-empty 'methods' mapping")
    spec.setdefault("name", path.stem)
    return spec


def _method_of(label: str, overrides: Sequence[str]) -> str:
    for item in overrides:
        if item.startswith("method="):
            return item.split("=", 1)[1]
    return label


def expand_jobs(spec: Mapping[str, Any], extra: Sequence[str] = ()) -> list[Job]:
    """Every job of a suite: methods x seeds x swept values, in the file's order.

    Parameters
    ----------
    spec : Mapping[str, Any]
        A loaded suite (:func:`load_suite`).
    extra : Sequence[str]
        Command-line overrides, applied after the suite's own.
    """
    seeds = [int(s) for s in spec.get("seeds", [0])]
    sweep = spec.get("sweep") or {}
    if sweep and ("key" not in sweep or not sweep.get("values")):
        raise SuiteError(f"suite {spec['name']}: 'sweep' needs 'key' and a non-empty 'values'")
    swept_labels = sweep.get("methods")
    common = [str(o) for o in spec.get("overrides", [])]
    jobs = []
    for label, own in spec["methods"].items():
        own = [str(o) for o in own or []]
        method = _method_of(label, own)
        head = [] if any(o.startswith("method=") for o in own) else [f"method={method}"]
        values = sweep["values"] if sweep and (swept_labels is None or label in swept_labels) else [None]
        for value in values:
            knob = [] if value is None else [f"{sweep['key']}={value}"]
            folder = label if value is None else f"{label}/{sweep['key'].split('.')[-1]}={value}"
            for seed in seeds:
                jobs.append(
                    Job(
                        name=f"{folder}/seed{seed}",
                        label=label,
                        method=method,
                        seed=seed,
                        overrides=[*head, *common, *own, *knob, *extra, f"seed={seed}"],
                        sweep_key=None if value is None else str(sweep["key"]),
                        sweep_value=value,
                    )
                )
    return jobs


def one_line(text: str, limit: int = 300) -> str:
    """The last informative line of a job's output (its error), shortened."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        noise = line.startswith(("File ", "Traceback", "^", "~")) or "Set the environment variable" in line
        if not noise:
            return line[:limit]
    return "(no output)"


def is_finished(job_dir: Path, job: Job) -> bool:
    """Whether the job has its ``summary.json`` from a run with the same overrides."""
    if not (job_dir / "summary.json").is_file():
        return False
    try:
        previous = json.loads((job_dir / "job.json").read_text())
    except (OSError, ValueError):
        return False
    return previous.get("overrides") == job.overrides


def run_job(job: Job, job_dir: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run one job in a child process; returns its ``jobs.jsonl`` record."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "summary.json").unlink(missing_ok=True)
    (job_dir / "job.json").write_text(json.dumps(asdict(job), indent=2))
    start = time.perf_counter()
    record: dict[str, Any] = {
        "job": job.name,
        "label": job.label,
        "method": job.method,
        "seed": job.seed,
        "sweep_key": job.sweep_key,
        "sweep_value": job.sweep_value,
    }
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HYDRA_FULL_ERROR": "0"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "simulations.tools.suite", "--run-job", str(job_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or "") + (exc.stderr or "")
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        (job_dir / "job.log").write_text(output)
        return {
            **record,
            "status": "failed",
            "error": f"timed out after {timeout:g} s",
            "seconds": round(time.perf_counter() - start, 1),
        }
    (job_dir / "job.log").write_text(proc.stdout + proc.stderr)
    record["seconds"] = round(time.perf_counter() - start, 1)
    if proc.returncode == 0 and (job_dir / "summary.json").is_file():
        summary = json.loads((job_dir / "summary.json").read_text())
        return {
            **record,
            "status": "done",
            "final_accuracy": summary.get("final_accuracy"),
            "total_mb": summary.get("total_mb"),
        }
    error = one_line(proc.stderr or proc.stdout)
    kind = "invalid config" if proc.returncode == INVALID_CONFIG else f"exit {proc.returncode}"
    return {**record, "status": "failed", "error": f"{kind}: {error}"}


def _child(job_dir: Path) -> int:
    """Compose one job's config from its ``job.json`` and run it (the child process)."""
    from hydra import compose, initialize_config_dir

    from simulations.app.config import ConfigError

    job = json.loads((job_dir / "job.json").read_text())
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name="config", overrides=job["overrides"])
        from simulations.runtimes.simulation import run_from_config

        summary = run_from_config(cfg, job_dir, quiet=True)
    except ConfigError as exc:
        print(f"{exc}", file=sys.stderr)
        return INVALID_CONFIG
    except Exception as exc:  # a Hydra override error is a config error too
        if type(exc).__module__.startswith(("hydra", "omegaconf")):
            print(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
            return INVALID_CONFIG
        raise
    print(f"final accuracy {summary['final_accuracy']}, {summary['total_mb']:.3f} MB")
    return 0


class Suite:
    """A suite's jobs and its output directory.

    Parameters
    ----------
    spec : Mapping[str, Any]
        The loaded suite.
    out : Path
        The suite's directory.
    extra : Sequence[str]
        Extra overrides for every job.
    """

    def __init__(self, spec: Mapping[str, Any], out: Path, extra: Sequence[str] = ()) -> None:
        self.spec = dict(spec)
        self.out = Path(out)
        self.extra = list(extra)
        self.jobs = expand_jobs(spec, extra)

    def write_manifest(self) -> None:
        """``suite.json``: the definition, the extra overrides and the job names."""
        self.out.mkdir(parents=True, exist_ok=True)
        manifest = {**self.spec, "extra_overrides": self.extra, "jobs": [j.name for j in self.jobs]}
        (self.out / "suite.json").write_text(json.dumps(manifest, indent=2, default=str))

    def _log(self, record: Mapping[str, Any], status: dict[str, Any]) -> None:
        with (self.out / "jobs.jsonl").open("a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        status[record["job"]] = dict(record)
        (self.out / "status.json").write_text(json.dumps(status, indent=2, default=str))

    def run(self, jobs: int = 1, timeout: float | None = None, quiet: bool = False) -> dict[str, Any]:
        """Run the unfinished jobs, ``jobs`` at a time; returns the latest record per job."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.write_manifest()
        console = Console(stderr=True, quiet=quiet, highlight=False)
        status: dict[str, Any] = {}
        todo = []
        for job in self.jobs:
            if is_finished(self.out / job.name, job):
                self._log(
                    {
                        "job": job.name,
                        "label": job.label,
                        "method": job.method,
                        "seed": job.seed,
                        "sweep_key": job.sweep_key,
                        "sweep_value": job.sweep_value,
                        "status": "cached",
                    },
                    status,
                )
            else:
                todo.append(job)
        console.print(
            f"suite [bold]{self.spec['name']}[/]: {len(self.jobs)} jobs, "
            f"{len(self.jobs) - len(todo)} already finished, running {len(todo)} "
            f"({jobs} at a time) into {self.out}"
        )
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[last]}"),
        )
        with (
            Progress(*columns, console=console, disable=quiet) as progress,
            ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
        ):
            task = progress.add_task(self.spec["name"], total=len(todo), last="")
            futures = {pool.submit(run_job, job, self.out / job.name, timeout): job for job in todo}
            for future in as_completed(futures):
                record = future.result()
                self._log(record, status)
                if record["status"] == "failed":
                    console.print(f"[red]failed[/] {record['job']}: {record['error']}")
                elif not console.is_terminal:  # a log file: one line per job instead of the bar
                    console.print(f"{record['job']}: {record['status']} in {record.get('seconds', 0):.0f} s")
                progress.update(task, advance=1, last=f"{record['job']} {record['status']}")
        failed = [name for name, r in status.items() if r["status"] == "failed"]
        console.print(
            f"suite {self.spec['name']}: {len(status) - len(failed)} finished, "
            f"{len(failed)} failed; see {self.out / 'status.json'}"
        )
        return status


def list_suites() -> list[tuple[str, str]]:
    """(name, description) of every shipped suite."""
    out = []
    for path in sorted(SUITE_DIR.glob("*.yaml")):
        spec = OmegaConf.load(path)
        out.append((path.stem, str(spec.get("description", ""))))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status (1 when a job failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.tools.suite",
        description=__doc__.splitlines()[0],
        epilog="Suites: " + ", ".join(name for name, _ in list_suites()),
    )
    parser.add_argument("name", nargs="?", help="suite name (conf/suite/<name>.yaml) or a .yaml path")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides appended to every job")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="jobs run at once (default 1)")
    parser.add_argument(
        "--out", type=Path, default=None, help="suite directory (default outputs/suite/<name>)"
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per job before it is failed")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs' overrides and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--run-job", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    if args.run_job is not None:
        return _child(args.run_job)
    if args.list:
        for name, description in list_suites():
            print(f"{name:24s} {description}")
        return 0
    if not args.name:
        parser.error("a suite name is needed (or --list)")
    try:
        spec = load_suite(args.name)
    except SuiteError as exc:
        print(f"fedlean suite: {exc}", file=sys.stderr)
        return 2
    suite = Suite(spec, args.out or Path("outputs") / "suite" / spec["name"], args.overrides)
    if args.dry_run:
        for job in suite.jobs:
            print(f"{job.name}: {' '.join(job.overrides)}")
        return 0
    status = suite.run(jobs=args.jobs, timeout=args.timeout, quiet=args.quiet)
    return 1 if any(r["status"] == "failed" for r in status.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
