"""Checkpoints of a run: everything needed to continue it after its last completed round.

After every ``checkpoint_every`` rounds (round 0 included) :func:`save_checkpoint`
replaces ``checkpoint.pt`` in the run's directory atomically. It holds the round, the
strategy's :meth:`~fl_strategies.base.FedleanStrategy.checkpoint_state` (global model,
byte counters, method state), the results writer's rounds so far, the random
generators of Python (Flower's node sampling), numpy and torch, and, where the grid
can give it (``backend=inline``), every node's persistent state. ``python -m
simulations.run resume=<dir>`` continues from it (:func:`simulations.run.resume_run`).

The file is a pickle written by :func:`torch.save`; load only checkpoints you wrote.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulations.app.results import CHECKPOINT_FILE, write_atomic

#: Bumped when the layout of the file changes; an older file is refused.
CHECKPOINT_FORMAT = 1
#: Test-only: the process SIGKILLs itself right after writing the checkpoint of this round
#: (``tests/test_resume.py`` uses it to stop a run at an exact point).
KILL_AFTER_ROUND_ENV = "FEDLEAN_TEST_SIGKILL_AFTER_ROUND"


def rng_state() -> dict[str, Any]:
    """The state of the generators a run draws from in this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put the generators back where :func:`rng_state` found them."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def save_checkpoint(out_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (see the module notes) to ``<out_dir>/checkpoint.pt`` atomically."""
    path = Path(out_dir) / CHECKPOINT_FILE
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    write_atomic(path, buffer.getvalue())
    return path


def load_checkpoint(out_dir: str | Path) -> dict[str, Any]:
    """Read ``<out_dir>/checkpoint.pt``; ``FileNotFoundError``/``ValueError`` say why it cannot be used."""
    path = Path(out_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint (was the run started with checkpoint_every=0?)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a fedlean checkpoint of format {CHECKPOINT_FORMAT}")
    return state
