"""Start-up benchmark: seconds from process start (and from after imports) to round 0.

``python -m simulations.tools.start_bench [--repeats 3] [--trees DIR ...] [--cold] [-- override ...]``

Each repeat runs ``python -m simulations.run`` (the default run unless overrides are
given: digits, MLP, inline) in a fresh subprocess, once per source tree, the trees
interleaved so that machine load hits them alike. A small driver in the child imports
:mod:`simulations.run` (the entry point's own imports), notes the time, then runs the
entry point as ``python -m simulations.run`` would and watches the run's
``rounds.jsonl``: round 0 is recorded once the initial model is evaluated, just before
round 1 starts, and round 1 once the first training round (the clients' first data
access included) is done. The child stops there. Figures are medians over the
repeats, with min and max:

* ``process``: from the child's start (measured by this process) to round 0;
* ``imports``: the entry point's imports alone;
* ``round0``: from after those imports to round 0 -- the figure issue 16 bounds;
* ``round0_cpu``: the CPU seconds of the child over the same span (less sensitive to
  other load on a shared machine than wall time);
* ``round1``: from after the imports to the end of round 1.

A tree is a checkout of this project; the driver only runs ``simulations.run`` as
``__main__``, so any earlier checkout can be measured against this one
(``--trees /path/to/old /path/to/new``; each runs with ``PYTHONPATH`` set to it).
The caches that make later starts fast (:mod:`clients.cache`) live under a temporary
``FEDLEAN_CACHE_DIR`` per tree: the first repeat of each tree fills it (reported
separately as ``cold``), the others use it; ``--cold`` empties it before every repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The child: ``python -c DRIVER <out_dir> <override>...``; prints one JSON line.
DRIVER = r"""
import json, os, runpy, sys, threading, time
out, overrides = sys.argv[1], sys.argv[2:]
import simulations.run
imported, imported_cpu = time.time(), time.process_time()
rounds = os.path.join(out, "rounds.jsonl")
marks = {}

def lines():
    try:
        with open(rounds, "rb") as fh:
            return fh.read().count(b"\n")
    except OSError:
        return 0

def watch():
    while True:
        n = lines()
        if n >= 1 and "round0" not in marks:
            marks["round0"], marks["round0_cpu"] = time.time(), time.process_time()
        if n >= 2:
            marks["round1"] = time.time()
            print(json.dumps({"imported": imported, "imported_cpu": imported_cpu, **marks}), flush=True)
            os._exit(0)
        time.sleep(0.002)

threading.Thread(target=watch, daemon=True).start()
sys.argv = ["simulations.run", f"hydra.run.dir={out}", *overrides]
# As `python -m simulations.run` (Hydra finds its config next to the __main__ file);
# the module's imports are already done, so this only re-runs its definitions.
runpy.run_module("simulations.run", run_name="__main__", alter_sys=True)
time.sleep(1.0)  # the watcher reports and exits
print(json.dumps({"imported": imported, "imported_cpu": imported_cpu, **marks}), flush=True)
"""


def run_once(tree: Path, overrides: list[str], cache_dir: Path, work: Path) -> dict[str, float]:
    """One child run from ``tree``; returns its seconds (process, imports, round0, round1, round0_cpu)."""
    out = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    env = {**os.environ, "PYTHONPATH": str(tree), "FEDLEAN_CACHE_DIR": str(cache_dir)}
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(out), *overrides],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    shutil.rmtree(out, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{tree}: run failed (exit {proc.returncode}): {' | '.join(tail)}")
    marks = json.loads(lines[-1])
    if "round1" not in marks:
        raise RuntimeError(f"{tree}: the run ended before round 1 was recorded")
    return {
        "process": marks["round0"] - started,
        "imports": marks["imported"] - started,
        "round0": marks["round0"] - marks["imported"],
        "round1": marks["round1"] - marks["imported"],
        "round0_cpu": marks["round0_cpu"] - marks["imported_cpu"],
    }


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> None:
    """Measure and print the start-up table (one row per tree)."""
    parser = argparse.ArgumentParser(prog="python -m simulations.tools.start_bench", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per tree (median of these)")
    parser.add_argument(
        "--trees",
        nargs="+",
        type=Path,
        default=[Path(__file__).resolve().parents[2]],
        help="source trees to compare (default: this checkout)",
    )
    parser.add_argument("--cold", action="store_true", help="empty the cache before every run")
    parser.add_argument("overrides", nargs="*", help="run overrides (default: the default run)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats}: must be >= 1")
    overrides = ["torch_threads=1", *args.overrides]
    work = Path(tempfile.mkdtemp(prefix="fedlean-start-bench-"))
    try:
        caches = {tree: work / f"cache-{i}" for i, tree in enumerate(args.trees)}
        cold: dict[Path, dict[str, float]] = {}
        warm: dict[Path, list[dict[str, float]]] = {tree: [] for tree in args.trees}
        # Repeat 0 fills each tree's cache (cold); the later repeats are the warm figures.
        for repeat in range(args.repeats + (0 if args.cold else 1)):
            for tree in args.trees:
                if args.cold:
                    shutil.rmtree(caches[tree], ignore_errors=True)
                result = run_once(tree.resolve(), overrides, caches[tree], work)
                if repeat == 0 and not args.cold:
                    cold[tree] = result
                else:
                    warm[tree].append(result)
        print(f"time to round 0 (s), median (min-max) of {args.repeats}; overrides: {' '.join(overrides)}")
        keys = ("process", "imports", "round0", "round0_cpu", "round1")
        print(f"{'tree':24s} " + " ".join(f"{k:>18s}" for k in keys) + "  cold round0")
        for tree in args.trees:
            cells = [_fmt([r[k] for r in warm[tree]]) for k in keys]
            first = f"{cold[tree]['round0']:.2f}" if tree in cold else "-"
            print(f"{str(tree)[-24:]:24s} " + " ".join(f"{c:>18s}" for c in cells) + f"  {first}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
