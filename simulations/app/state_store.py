"""Per-node client state on disk (``client_state=disk``): resident memory bounded by a round's nodes.

Methods keep per-node state across rounds in Flower's ``context.state`` (GWPF/APF:
local model, masks and EMAs; FedSparsify: the mask; FedGKT: the edge model and its
optimizer). In simulation every node's Context lives in the simulation process (the
inline Grid, Flower's simulation engine under Ray), so that state adds up over every
node ever sampled. With ``client_state=disk`` the ClientApp's :class:`StateStoreMod`
loads a node's state from ``<run dir>/client_state/<partition id>/`` before each
train/evaluate call, writes it back after the call, and empties ``context.state``
before the reply leaves: only the nodes being served hold state in memory.

Layout of the store (keyed by partition id, which the project assigns the same way on
every runtime, not by node ids, which Flower's simulation draws at random)::

    client_state/<partition>/<round>.state   the node's state after its calls of that round
    client_state/checkpointed                 round of the run's last checkpoint (see below)
    client_state/written/<partition>          nodes written since the last checkpoint

Versions and crash safety: a call of round ``R`` writes version ``R`` (atomically: a
temporary file, then a rename), and only when the call changed the state. A training
call of round ``R`` loads the newest version before ``R``; an evaluation call of round
``R`` (after that round's training) the newest up to ``R``. A version is deleted only
when a newer one exists and the older one is not the node's state at the last
checkpoint, so a run killed in the middle of round ``R + 1`` resumes from checkpoint
``R`` with every node's state as of round ``R`` (:meth:`NodeStateStore.rollback`
drops what the killed rounds wrote). Without checkpoints (``checkpoint_every=0``) each
node keeps its newest version only. Files are not fsynced: they survive the process
being killed, not a power loss.

A version file is a pickle of plain values (each Array's dtype, shape, serialisation
type and bytes, each Config/MetricRecord's items), so a state round-trips bit for bit;
it is read by an unpickler that builds only builtin values and numpy scalars.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import pickle
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from fl_strategies.wire import CONFIG_KEY
from simulations.app.results import write_atomic

#: The node_config key a store keys nodes by (:data:`simulations.app.client_app.PARTITION_ID_KEY`).
PARTITION_ID_KEY = "partition-id"
#: Name of the store's directory in a run's output directory.
STATE_DIR_NAME = "client_state"
#: Run config values of ``client_state``.
CLIENT_STATE_MODES = ("memory", "disk")
CHECKPOINTED_FILE = "checkpointed"
WRITTEN_DIR = "written"
SUFFIX = ".state"
#: Bumped when the layout of a version file changes.
STATE_FORMAT = 1
_RECORD_KINDS: dict[str, type] = {"array": ArrayRecord, "config": ConfigRecord, "metric": MetricRecord}
#: What the unpickler may build beyond builtin values: numpy scalars (a ConfigRecord
#: accepts ``np.float64`` and the like, being subclasses of float/int).
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "dtype"),
}


# ------------------------------------------------------------------ format
def _kind(record: Any) -> str:
    for kind, cls in _RECORD_KINDS.items():
        if isinstance(record, cls):
            return kind
    raise TypeError(f"context.state holds a {type(record).__name__}, not a Flower record")


def state_to_plain(state: RecordDict) -> dict[str, Any]:
    """``state`` as plain picklable values (no copy of any Array's bytes)."""
    records = []
    for key, record in state.items():
        kind = _kind(record)
        if isinstance(record, ArrayRecord):
            items: Any = [(name, a.dtype, tuple(a.shape), a.stype, a.data) for name, a in record.items()]
        else:
            items = list(record.items())
        records.append((key, kind, items))
    return {"format": STATE_FORMAT, "records": records}


def plain_to_state(plain: dict[str, Any]) -> RecordDict:
    """The RecordDict :func:`state_to_plain` took apart."""
    if not isinstance(plain, dict) or plain.get("format") != STATE_FORMAT:
        raise ValueError(f"not a fedlean node state of format {STATE_FORMAT}")
    state = RecordDict()
    for key, kind, items in plain["records"]:
        if kind == "array":
            record: Any = ArrayRecord(
                {
                    name: Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data)
                    for name, dtype, shape, stype, data in items
                }
            )
        else:
            record = _RECORD_KINDS[kind](dict(items))
        state[key] = record
    return state


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"node state file refers to {module}.{name}")


def read_state(path: Path) -> RecordDict:
    """The node state stored in ``path``."""
    with path.open("rb") as fh:
        return plain_to_state(_PlainUnpickler(fh).load())


def write_state(path: Path, state: RecordDict) -> None:
    """Store ``state`` in ``path`` atomically (readers see the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with tmp.open("wb") as fh:
        # Protocol 5 streams each large bytes object straight to the file (no copy).
        pickle.dump(state_to_plain(state), fh, protocol=5)
    os.replace(tmp, path)


# ------------------------------------------------------------------ the store
class NodeStateStore:
    """Versioned per-partition node states under ``root`` (see the module notes).

    Parameters
    ----------
    root : str | Path
        The store's directory, ``<run dir>/client_state`` (absolute: Ray actors need
        not share the driver's working directory).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def node_dir(self, partition: int) -> Path:
        """Directory of one node's versions."""
        return self.root / str(int(partition))

    def versions(self, partition: int) -> list[int]:
        """Rounds of the node's stored versions, oldest first."""
        try:
            names = os.listdir(self.node_dir(partition))
        except FileNotFoundError:
            return []
        return sorted(int(n[: -len(SUFFIX)]) for n in names if n.endswith(SUFFIX) and not n.startswith("."))

    def _path(self, partition: int, server_round: int) -> Path:
        return self.node_dir(partition) / f"{int(server_round)}{SUFFIX}"

    def load(self, partition: int, max_round: int) -> RecordDict | None:
        """The node's newest state of a round ``<= max_round``; None if it has none."""
        usable = [v for v in self.versions(partition) if v <= max_round]
        return read_state(self._path(partition, usable[-1])) if usable else None

    def save(self, partition: int, server_round: int, state: RecordDict) -> None:
        """Store the node's state after its call of ``server_round``, then drop what is not needed."""
        self.node_dir(partition).mkdir(parents=True, exist_ok=True)
        write_state(self._path(partition, server_round), state)
        self.prune(partition, self.checkpointed_round())
        written = self.root / WRITTEN_DIR
        written.mkdir(exist_ok=True)
        (written / str(int(partition))).touch()

    def prune(self, partition: int, checkpointed: int | None) -> None:
        """Delete the versions no resume can need.

        Kept: the newest version (``checkpointed`` None: checkpoints off), else the
        newest of a round ``<= checkpointed`` and every later one.
        """
        versions = self.versions(partition)
        if checkpointed is None:
            keep = set(versions[-1:])
        else:
            before = [v for v in versions if v <= checkpointed]
            keep = set(before[-1:]) | {v for v in versions if v > checkpointed}
        for version in versions:
            if version not in keep:
                self._path(partition, version).unlink(missing_ok=True)

    def checkpointed_round(self) -> int | None:
        """Round of the run's last checkpoint (-1: none yet); None when the run writes none."""
        try:
            return int((self.root / CHECKPOINTED_FILE).read_text())
        except FileNotFoundError:
            return None

    def _mark(self, server_round: int | None) -> None:
        marker = self.root / CHECKPOINTED_FILE
        if server_round is None:
            marker.unlink(missing_ok=True)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, str(int(server_round)).encode(), durable=False)

    # -------------------------------------------------- the server's side
    def start(self, resume_round: int | None, checkpoints: bool) -> None:
        """Before the first round: a new run starts empty; a resumed one rolls back.

        Parameters
        ----------
        resume_round : int | None
            The round of the checkpoint the run resumes from; None: a new run.
        checkpoints : bool
            Whether the run writes checkpoints (``checkpoint_every > 0``).
        """
        if resume_round is None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True)
            self._mark(-1 if checkpoints else None)
        else:
            self.rollback(resume_round)
            if not checkpoints:
                self._mark(None)

    def rollback(self, server_round: int) -> None:
        """Back to every node's state as of the checkpoint of ``server_round``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._mark(server_round)
        for entry in os.scandir(self.root):
            if not entry.is_dir() or not entry.name.isdigit():
                continue
            for name in os.listdir(entry.path):
                stale = name.startswith(".") or int(name[: -len(SUFFIX)]) > server_round
                if stale:
                    os.unlink(os.path.join(entry.path, name))
            self.prune(int(entry.name), server_round)
        shutil.rmtree(self.root / WRITTEN_DIR, ignore_errors=True)

    def checkpointed(self, server_round: int) -> None:
        """The run's checkpoint of ``server_round`` is written: older versions may go."""
        self._mark(server_round)
        written = self.root / WRITTEN_DIR
        try:
            names = os.listdir(written)
        except FileNotFoundError:
            return
        for name in names:
            self.prune(int(name), server_round)
            if len(self.versions(int(name))) <= 1:  # else a later version awaits a later checkpoint
                (written / name).unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the store (a finished run cannot be resumed)."""
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ the mod
def _fingerprint(state: RecordDict) -> list[tuple[Any, ...]]:
    """What a call may change in ``state``: records and Arrays by identity, other values by value."""
    out: list[tuple[Any, ...]] = []
    for key, record in state.items():
        if isinstance(record, ArrayRecord):
            items: Any = [(n, a, a.data, a.dtype, a.shape, a.stype) for n, a in record.items()]
        else:
            items = [(k, list(v) if isinstance(v, list) else v) for k, v in record.items()]
        out.append((key, record, items))
    return out


def _unchanged(before: list[tuple[Any, ...]], after: list[tuple[Any, ...]]) -> bool:
    if len(before) != len(after):
        return False
    for (key_b, rec_b, items_b), (key_a, rec_a, items_a) in zip(before, after, strict=True):
        if key_b != key_a or rec_b is not rec_a or len(items_b) != len(items_a):
            return False
        if isinstance(rec_a, ArrayRecord):
            for (n_b, a_b, d_b, *meta_b), (n_a, a_a, d_a, *meta_a) in zip(items_b, items_a, strict=True):
                if n_b != n_a or a_b is not a_a or d_b is not d_a or meta_b != meta_a:
                    return False
        elif items_b != items_a:
            return False
    return True


class StateStoreMod:
    """A Flower mod: the node's ``context.state`` comes from the store and goes back to it.

    Applied to train and evaluate calls (see :func:`simulations.app.client_app.build_client_app`).
    A node without ``partition-id`` in its ``node_config`` (a device's own data) keeps
    its state in memory. A call that raises leaves the stored state as it was.

    Parameters
    ----------
    root : str | Path
        The store's directory (:class:`NodeStateStore`).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)

    def __call__(
        self, message: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        """Load the node's state, run the call, store the state if it changed, empty the context."""
        if PARTITION_ID_KEY not in context.node_config:
            return call_next(message, context)
        store = NodeStateStore(self.root)
        partition = int(context.node_config[PARTITION_ID_KEY])
        config = message.content.config_records.get(CONFIG_KEY, ConfigRecord())
        server_round = int(config.get("server-round", 0))  # type: ignore[arg-type]
        # Training in round R starts from the state before R; evaluation follows R's training.
        newest = server_round - 1 if message.metadata.message_type == MessageType.TRAIN else server_round
        loaded = store.load(partition, newest)
        if loaded is not None:
            context.state = loaded
        before = _fingerprint(context.state)
        try:
            reply = call_next(message, context)
            # A state that came in with the context (a checkpoint of the memory store) is stored too.
            if not _unchanged(before, _fingerprint(context.state)) or (loaded is None and len(context.state)):
                store.save(partition, server_round, context.state)
        finally:
            context.state = RecordDict()
            release_freed_memory()
        return reply


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc; elsewhere nothing).

    A call's arrays (a model's tensors, a few MB each) come from the heap, whose freed
    pages glibc keeps mapped: without this, the process's resident size stays at its
    highest call plus whatever the server allocates next (about 0.8 GB more peak RSS
    in the ResNet-18 benchmark of :mod:`simulations.tools.state_bench`).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def state_store_for(cfg: dict[str, Any], out_dir: str | Path) -> NodeStateStore | None:
    """The run's store under ``out_dir`` (``client_state=disk``), else None (state in memory)."""
    if cfg.get("client_state", "disk") != "disk":
        return None
    return NodeStateStore(Path(out_dir).expanduser().resolve() / STATE_DIR_NAME)
