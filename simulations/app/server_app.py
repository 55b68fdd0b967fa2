"""The ServerApp of fedlean for deployment: ``flwr run . <connection>``.

The run is described by the same Hydra config as a simulation; the ServerApp
composes it from the overrides in its run config and hands it to the same
:func:`~simulations.app.compose.compose_run` / :func:`~simulations.app.compose.execute_plan`
pair, so a run on real SuperNodes and a simulated one differ only in the Grid that
carries the messages::

    flwr run . local-deploy --run-config "overrides='method=fedavg num_clients=2 num_rounds=3'"

Run config keys (``[tool.flwr.app.config]`` in ``pyproject.toml``):

``overrides``
    Hydra overrides, space separated as on the command line (shell-style quoting
    works); ``backend`` is always ``deployment``. ``num_clients`` is the number of
    SuperNodes the run waits for before the first round.
``output-dir``
    Where ``rounds.jsonl``, ``summary.json`` etc. go. Empty: a new
    ``outputs/deploy/<timestamp>_<method>_<dataset>_run<id>``. Relative paths are
    taken from the working directory of the SuperLink (whose SuperExec starts this
    ServerApp).
``conf-dir``
    The Hydra config directory. Empty: ``conf/`` next to the installed app (it
    travels in the FAB), else ``./conf``.
``node-wait``
    Seconds the ServerApp waits for SuperNodes before the first round. Without
    ``num_clients`` in ``overrides`` the run takes every node connected once their
    number has held still for a moment, so ``flwr run .`` on Flower's local
    simulation federation (2 simulated SuperNodes by default) needs no override;
    with it, fewer nodes than ``num_clients`` after ``node-wait`` seconds end the
    run with a message naming the setting instead of waiting forever.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from fl_strategies.flwr_compat import FLWR_VERSION, NodeInfo, Run, log
from simulations import CONF_DIR as PACKAGE_CONF_DIR
from simulations.app.config import ConfigError

OVERRIDES_KEY = "overrides"
OUTPUT_DIR_KEY = "output-dir"
CONF_DIR_KEY = "conf-dir"
NODE_WAIT_KEY = "node-wait"
DEFAULT_NODE_WAIT = 300.0
#: Seconds the number of connected nodes must hold still before a run without
#: ``num_clients`` takes it as the federation's size.
NODE_COUNT_SETTLE = 3.0
DEPLOYMENT_BACKEND = "deployment"
DEFAULT_OUTPUT_ROOT = Path("outputs") / "deploy"
#: Written next to the results: what ran where (run id, nodes, overrides).
DEPLOYMENT_INFO_FILE = "deployment.json"


def parse_overrides(text: str) -> list[str]:
    """Hydra overrides from the run config's space-separated string.

    Shell-style quoting keeps a value with spaces together. The backend group is
    fixed by the ServerApp, so ``backend=...`` is refused (``backend.<key>=...``
    tunes the deployment backend and is fine).
    """
    overrides = shlex.split(text or "")
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key == "backend":
            raise ConfigError(
                f"{item!r}: the ServerApp always uses backend={DEPLOYMENT_BACKEND} "
                "(for simulations use `python -m simulations.run`)"
            )
        if "=" not in item:
            raise ConfigError(f"{item!r}: an override must look like key=value")
    return [*overrides, f"backend={DEPLOYMENT_BACKEND}"]


def override_value(overrides: Sequence[str], key: str) -> str | None:
    """The value given to ``key`` in Hydra overrides (last one wins), else None."""
    value = None
    for item in overrides:
        name, _, text = item.partition("=")
        if name.lstrip("+~") == key:
            value = text
    return value


def wait_for_nodes(
    grid: Grid,
    wanted: int | None,
    timeout: float,
    settle: float = NODE_COUNT_SETTLE,
    poll: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Wait for SuperNodes; the number of clients the run will use.

    Parameters
    ----------
    grid : Grid
        The ServerApp's Grid.
    wanted : int | None
        ``num_clients`` from the overrides: wait until that many nodes are connected.
        None: take the federation's size, i.e. the number of connected nodes once it
        has not changed for ``settle`` seconds.
    timeout : float
        Seconds to wait at most; then :class:`ConfigError` naming the setting.
    settle, poll : float
        Seconds the count must hold still (``wanted`` None); seconds between looks.
    clock, sleep : Callable
        Time source and sleep (tests pass fakes).

    """
    start = clock()
    last_count, last_change = -1, start
    while True:
        count = len(list(grid.get_node_ids()))
        now = clock()
        if count != last_count:
            last_count, last_change = count, now
        if wanted is not None and count >= wanted:
            return wanted
        if wanted is None and count > 0 and now - last_change >= settle:
            return count
        if now - start >= timeout:
            if wanted is None:
                raise ConfigError(
                    f"{NODE_WAIT_KEY}: no SuperNode connected within {timeout:.0f} s; "
                    "start SuperNodes or raise the run config's node-wait"
                )
            raise ConfigError(
                f"num_clients={wanted}: only {count} SuperNode(s) connected after {timeout:.0f} s; "
                f"start more SuperNodes, set num_clients={count} in overrides, "
                f"or raise the run config's {NODE_WAIT_KEY}"
            )
        sleep(poll)


def find_conf_dir(explicit: str | Path | None = None) -> Path:
    """The Hydra config directory: ``explicit``, else the app's own ``conf/``, else ``./conf``.

    ``flwr run`` packs ``conf/**/*.yaml`` into the FAB and the SuperLink installs
    the FAB as a directory, so ``conf/`` sits next to this package both in a
    checkout and in an installed app.
    """
    candidates = [Path(explicit).expanduser()] if explicit else [PACKAGE_CONF_DIR, Path.cwd() / "conf"]
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{CONF_DIR_KEY}: no Hydra config.yaml found (tried {tried})")


def compose_config(overrides: Sequence[str], conf_dir: str | Path | None = None) -> DictConfig:
    """Compose ``simulations/conf/config.yaml`` with overrides, as ``python -m simulations.run`` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    conf = find_conf_dir(conf_dir)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            return compose(config_name="config", overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(f"{OVERRIDES_KEY}: {exc}") from exc


def output_dir(
    run_config: Mapping[str, Any],
    cfg: Mapping[str, Any],
    run_id: int,
    now: datetime | None = None,
) -> Path:
    """Absolute results directory from the run config (default: a new timestamped one)."""
    explicit = str(run_config.get(OUTPUT_DIR_KEY, "") or "")
    if explicit:
        return Path(explicit).expanduser().resolve()
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    name = f"{stamp}_{cfg['method']['name']}_{cfg['dataset']['name']}_run{run_id}"
    return (DEFAULT_OUTPUT_ROOT / name).resolve()


class PollingGrid(Grid):
    """A Grid that polls the wrapped Grid for replies every ``interval`` seconds.

    Flower's deployment Grid sleeps 3 s between polls in ``send_and_receive``; with
    two phases per round (train, evaluate) that alone adds up to 6 s a round. All
    other calls go to the wrapped Grid unchanged.
    """

    def __init__(self, grid: Grid, interval: float) -> None:
        self.grid = grid
        self.interval = float(interval)

    @property
    def run(self) -> Run:
        """The wrapped Grid's run."""
        return self.grid.run

    def set_run(self, run: Run) -> None:
        """Set the run on the wrapped Grid."""
        self.grid.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build a message with the wrapped Grid (deprecated in Flower)."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Ids of the SuperNodes connected now."""
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """The connected SuperNodes, as the wrapped Grid describes them."""
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push messages through the wrapped Grid."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull replies through the wrapped Grid."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then poll every ``interval`` s until all replies are in or ``timeout``."""
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            received = list(self.pull_messages(pending))
            replies.extend(received)
            pending -= {m.metadata.reply_to_message_id for m in received}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval)
        return replies


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Compose the run from the run config, run it on the SuperNodes, write results."""
    from simulations.app.compose import compose_run, execute_plan

    run_config = dict(context.run_config)
    overrides = parse_overrides(str(run_config.get(OVERRIDES_KEY, "") or ""))
    given = override_value(overrides, "num_clients")
    node_wait = float(run_config.get(NODE_WAIT_KEY, DEFAULT_NODE_WAIT) or DEFAULT_NODE_WAIT)
    wanted = int(given) if given is not None and given.strip().isdigit() else None
    if given is None or wanted is not None:
        num_clients = wait_for_nodes(grid, wanted, node_wait)
        if given is None:
            log(INFO, "fedlean: num_clients=%d (the SuperNodes connected)", num_clients)
            overrides.append(f"num_clients={num_clients}")
    conf_dir = find_conf_dir(str(run_config.get(CONF_DIR_KEY, "") or "") or None)
    cfg = compose_config(overrides, conf_dir)
    out_dir = output_dir(run_config, cfg, context.run_id)
    plan = compose_run(cfg, out_dir)
    log(
        INFO,
        "fedlean: %s on %s with %d SuperNodes; results in %s",
        plan.cfg["method"]["name"],
        plan.cfg["dataset"]["name"],
        int(plan.cfg["num_clients"]),
        out_dir,
    )
    polling = PollingGrid(grid, float(plan.cfg["backend"].get("poll_interval", 0.05)))
    started = time.time()
    summary = execute_plan(plan, polling)
    info = {
        "run_id": context.run_id,
        "flwr_version": FLWR_VERSION,
        "overrides": overrides,
        "conf_dir": str(conf_dir),
        "node_ids": sorted(int(n) for n in grid.get_node_ids()),
        "started": started,
        "finished": time.time(),
    }
    (out_dir / DEPLOYMENT_INFO_FILE).write_text(json.dumps(info, indent=2))
    print(
        f"fedlean: results in {out_dir} (final accuracy {summary['final_accuracy']}, "
        f"{summary['total_mb']:.3f} MB up+down)",
        flush=True,
    )
