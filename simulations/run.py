"""Hydra entry point: ``python -m simulations.run [overrides]`` (``--multirun`` sweeps).

Groups: ``dataset/ model/ method/ partition/ backend/`` under ``simulations/conf/``;
top-level keys and their defaults in :class:`simulations.app.config.RunConfig`. A bad
override fails before any training with one line that names the key (exit 2).
Results go to the Hydra output directory of each job.

``python -m simulations.run resume=<output dir> [timeout=... min_replies=...]``
continues an interrupted (or killed) run from its last checkpoint: the directory's
``config.json`` gives the run; only the keys in :data:`RESUME_OVERRIDABLE` may be
changed (how the run waits and checkpoints, never what it computes). See
``docs/resume.md``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fl_strategies.base import TooFewRepliesError
from simulations import CONF_DIR
from simulations.app.config import ConfigError, validate_config
from simulations.runtimes.simulation import run_from_config

RESUME_KEY = "resume"
#: Statuses of a directory whose run can be continued (``running``: the process was killed).
RESUMABLE = ("running", "interrupted")
#: Top-level keys ``resume=<dir>`` may change.
RESUME_OVERRIDABLE = ("timeout", "min_replies", "on_too_few_replies", "checkpoint_every", "verbose")
#: Exit status of a run stopped by ``min_replies`` (a config error exits with 2).
TOO_FEW_REPLIES_EXIT = 3


def precheck(argv: Sequence[str]) -> None:
    """Compose and validate plain overrides before Hydra does, to fail in one line.

    Hydra's own composition errors span several lines; sweeps (``--multirun``, ``a,b``)
    and ``hydra.*`` overrides are left to Hydra and checked per job.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    if any(arg.startswith("-") for arg in argv):
        return
    # hydra.searchpath decides which configs exist (a plug-in's yaml); other hydra.* keys do not matter here.
    overrides = [
        arg
        for arg in argv
        if arg.startswith("hydra.searchpath=") or not arg.startswith(("hydra.", "+hydra.", "++hydra."))
    ]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
    except HydraException as exc:
        raise ConfigError(_one_line(exc, overrides)) from None
    except ValueError as exc:  # a sweep list given without --multirun, and the like
        raise ConfigError(str(exc).splitlines()[0]) from None
    validate_config(cfg)


def _one_line(exc: Exception, overrides: Sequence[str]) -> str:
    """``<override>: <why>`` from a Hydra composition error."""
    import re

    text = str(exc)
    cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ and str(exc.__cause__) else ""
    missing = re.search(r"Could not find '(\w+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        return f"{group}={option}: no such option; available: {', '.join(known)}"
    key = re.search(r"(?:override|Could not override) '?([\w.+~]+)", text)
    if key:
        name = key.group(1).lstrip("+~")
        arg = next((o for o in overrides if o.lstrip("+~").split("=")[0] == name), name)
        return f"{arg}: {cause or text.splitlines()[0]}"
    return text.splitlines()[0]


def resume_run(out_dir: str | Path, overrides: Sequence[str] = (), quiet: bool = False) -> dict[str, Any]:
    """Continue the run in ``out_dir`` from its last checkpoint; returns its summary.

    Parameters
    ----------
    out_dir : str | Path
        The directory of a run whose ``status.json`` says ``running`` (killed) or
        ``interrupted``; a finished run is refused.
    overrides : Sequence[str] (default: ())
        ``key=value`` for the keys in :data:`RESUME_OVERRIDABLE`.
    quiet : bool (default: False)
        No progress lines.

    Raises
    ------
    ConfigError
        One line saying why the directory cannot be resumed.

    """
    import yaml

    from simulations.app.checkpoint import load_checkpoint
    from simulations.app.compose import CONFIG_FILE
    from simulations.app.results import STATUS_FILE, SUMMARY_FILE

    out = Path(out_dir).expanduser().resolve()
    where = f"{RESUME_KEY}={out}"
    if not (out / STATUS_FILE).is_file() or not (out / CONFIG_FILE).is_file():
        raise ConfigError(f"{where}: no {STATUS_FILE} and {CONFIG_FILE}: not the directory of a fedlean run")
    status = json.loads((out / STATUS_FILE).read_text())
    if (out / SUMMARY_FILE).exists() or status.get("status") not in RESUMABLE:
        raise ConfigError(
            f"{where}: the run is {status.get('status', 'finished')}"
            "; only a running or interrupted run resumes"
        )
    pid = status.get("pid")
    if status["status"] == "running" and isinstance(pid, int) and pid != os.getpid() and _alive(pid):
        raise ConfigError(f"{where}: still running (pid {pid}); stop it first")
    cfg = json.loads((out / CONFIG_FILE).read_text())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in RESUME_OVERRIDABLE:
            raise ConfigError(f"{item!r}: a resumed run may change only {', '.join(RESUME_OVERRIDABLE)}")
        cfg[key] = yaml.safe_load(value)
    try:
        checkpoint = load_checkpoint(out)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return run_from_config(cfg, out, quiet=quiet, resume=checkpoint)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _report(summary: dict[str, Any], out_dir: str | Path) -> None:
    print(
        f"fedlean: results in {out_dir} (final accuracy {summary['final_accuracy']}, "
        f"{summary['total_mb']:.3f} MB up+down)"
    )


def _stopped(exc: TooFewRepliesError, out_dir: str | Path) -> SystemExit:
    print(
        f"fedlean: run stopped: {exc}. Rounds so far in {out_dir}; continue with: "
        f"python -m simulations.run {RESUME_KEY}={out_dir} [timeout=... min_replies=...]",
        file=sys.stderr,
    )
    if threading.active_count() > 1:
        # Abandoned client calls (inline timeout) may still run torch in their threads;
        # the interpreter's teardown under them aborts the process (SIGABRT). The
        # results are written: leave without tearing down.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(TOO_FEW_REPLIES_EXIT)
    return SystemExit(TOO_FEW_REPLIES_EXIT)


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Run one simulation; returns the final accuracy (for sweepers)."""
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = run_from_config(cfg, out_dir)
    except ConfigError as exc:
        print(f"fedlean: invalid config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except TooFewRepliesError as exc:
        raise _stopped(exc, out_dir) from None
    _report(summary, out_dir)
    return summary["final_accuracy"]


def resume_main(argv: Sequence[str]) -> None:
    """``resume=<dir> [key=value ...]``: continue a run; exits like a run would."""
    target = next(a for a in argv if a.startswith(f"{RESUME_KEY}="))
    out_dir = target.split("=", 1)[1]
    try:
        summary = resume_run(out_dir, [a for a in argv if a != target])
    except ConfigError as exc:
        print(f"fedlean: cannot resume: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except TooFewRepliesError as exc:
        raise _stopped(exc, out_dir) from None
    _report(summary, out_dir)


if __name__ == "__main__":
    from simulations.app.compose import mark_imported

    mark_imported()  # startup_seconds in summary.json counts from here
    if any(arg.startswith(f"{RESUME_KEY}=") for arg in sys.argv[1:]):
        resume_main(sys.argv[1:])
        raise SystemExit(0)
    try:
        precheck(sys.argv[1:])
    except ConfigError as exc:
        print(f"fedlean: invalid config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    main()
