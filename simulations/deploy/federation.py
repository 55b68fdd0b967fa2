"""A local SuperLink + SuperNodes: start them, run the app, read the run record, stop all.

Everything here drives Flower's own command line tools (``flower-superlink``,
``flower-supernode``, ``flwr``); it only saves typing and cleans up after itself.
:class:`LocalFederation` starts each process in its own process group and stops every
process it started.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .credentials import TlsFiles, generate_tls_certs
from .flwr_cli import DeploymentError, _executable, format_node_config, format_run_config, write_connection

REPO_ROOT = Path(__file__).resolve().parents[2]
#: SuperLink connection name used by :class:`LocalFederation`.
LOCAL_CONNECTION = "fedlean-local"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------ local processes
@dataclass
class Proc:
    """A started Flower process (leader of its own process group) and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's output."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None


def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return children
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; fields after it are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Pids of all processes below ``pid`` (Flower detaches some into new sessions)."""
    tree = _children_map()
    found, todo = [], list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class LocalFederation:
    """A SuperLink and SuperNodes on this machine, for demos and tests.

    Parameters
    ----------
    workdir : str | Path
        Logs, ``FLWR_HOME`` (installed apps, CLI config), credentials. The SuperLink
        runs here, so relative ``output-dir`` values land here too.
    tls : bool (default: False)
        Serve the SuperLink over HTTPS with a fresh self-signed CA.
    node_auth : bool (default: False)
        ``--enable-supernode-auth`` (needs ``tls``): only SuperNodes whose public key
        was registered with :meth:`register_node` may connect.
    host : str (default: "127.0.0.1")
        Interface the SuperLink listens on.
    env : Mapping[str, str] | None (default: None)
        Extra environment for every process.

    Use as a context manager, or call :meth:`stop` (safe to call repeatedly): every
    process started here is stopped, with its process group and its descendants.

    """

    workdir: str | Path
    tls: bool = False
    node_auth: bool = False
    host: str = "127.0.0.1"
    env: Mapping[str, str] | None = None
    procs: list[Proc] = field(default_factory=list)
    port: int = 0
    certs: TlsFiles | None = None

    def __post_init__(self) -> None:
        if self.node_auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it otherwise)")
        self.workdir = Path(self.workdir).resolve()
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        self._env = {
            **os.environ,
            # Flower starts flower-superexec, flwr-serverapp and flwr-clientapp by name.
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            "FLWR_HOME": str(self.flwr_home),
            # The app's dependencies are installed already; no `uv sync` per run.
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            **(self.env or {}),
        }
        if self.tls:
            self.certs = generate_tls_certs(self.workdir / "certs")

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """The SuperLink's address (Fleet, Control and Runtime API share one port)."""
        return f"{self.host}:{self.port}"

    def _spawn(self, name: str, command: list[str], env: Mapping[str, str] | None = None) -> Proc:
        if command[0] != sys.executable:
            command = [_executable(command[0]), *command[1:]]
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(  # noqa: S603 - our own argument list
                command,
                cwd=self.workdir,
                env={**self._env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_superlink(self, timeout: float = 60.0) -> Proc:
        """Start ``flower-superlink`` on a free port; return once it accepts connections."""
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = free_port(self.host)
            command = [
                "flower-superlink",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ]
            if self.certs is not None:
                command += [
                    "--ssl-ca-certfile",
                    str(self.certs.ca_cert),
                    "--ssl-certfile",
                    str(self.certs.server_cert),
                    "--ssl-keyfile",
                    str(self.certs.server_key),
                ]
            else:
                command += ["--insecure"]
            if self.node_auth:
                command += ["--enable-supernode-auth"]
            proc = self._spawn("superlink", command)
            if self._wait_port(proc, timeout):
                write_connection(
                    self.flwr_home, LOCAL_CONNECTION, self.address, self.certs.ca_cert if self.certs else None
                )
                return proc
            self._stop_proc(proc)
        raise DeploymentError(f"the SuperLink did not start:\n{proc.log_tail()}")

    def _wait_port(self, proc: Proc, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return True
            except OSError:
                time.sleep(0.2)
        return False

    def start_supernode(
        self,
        name: str,
        node_config: Mapping[str, Any] | str = "",
        private_key: str | Path | None = None,
        max_wait_time: float | None = None,
        isolation: str = "subprocess",
        worker_poll_interval: float = 0.02,
    ) -> Proc:
        """Start a ``flower-supernode`` connected to the SuperLink.

        Parameters
        ----------
        name : str
            Used for the log file ``<name>.log``.
        node_config : Mapping[str, Any] | str (default: "")
            ``--node-config``: e.g. ``{"partition-id": 0, "num-partitions": 2}`` or
            ``{"data-path": "/data/own.npz"}``.
        private_key : str | Path | None (default: None)
            ``--auth-supernode-private-key`` (SuperNode authentication).
        max_wait_time : float | None (default: None)
            Give up connecting after this many seconds (default: retry forever).
        isolation : {"subprocess", "process"} (default: "subprocess")
            ``subprocess``: Flower's default, one ``flwr-clientapp`` process per
            message. ``process``: ``--isolation process`` plus one long-running
            fedlean ClientApp worker (:mod:`simulations.deploy.worker`, log
            ``<name>-clientapp.log``) that serves every message of this SuperNode.
        worker_poll_interval : float (default: 0.02)
            The worker's idle poll interval (``process`` only).

        """
        if isolation not in ("subprocess", "process"):
            raise ValueError(f"isolation must be 'subprocess' or 'process', got {isolation!r}")
        runtime_port = free_port()
        command = [
            "flower-supernode",
            "--superlink",
            self.address,
            "--port",
            str(runtime_port),
            "--isolation",
            isolation,
            "--node-config",
            format_node_config(node_config),
        ]
        if self.certs is not None:
            command += ["--root-certificates", str(self.certs.ca_cert)]
        else:
            command += ["--insecure"]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key)]
        if max_wait_time is not None:
            command += ["--max-wait-time", str(max_wait_time)]
        node = self._spawn(name, command)
        if isolation == "process":
            address = f"127.0.0.1:{runtime_port}"
            self.start_clientapp_worker(f"{name}-clientapp", address, worker_poll_interval)
        return node

    def start_clientapp_worker(
        self, name: str, runtime_api_address: str, poll_interval: float = 0.02
    ) -> Proc:
        """Start ``python -m simulations.deploy clientapp`` for a ``--isolation process`` SuperNode."""
        return self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "simulations.deploy",
                "clientapp",
                "--runtime-api-address",
                runtime_api_address,
                "--poll-interval",
                str(poll_interval),
            ],
            env={"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), self._env.get("PYTHONPATH")]))},
        )

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process started here (SIGTERM, then SIGKILL after ``grace`` s)."""
        for proc in reversed(self.procs):
            self._stop_proc(proc, grace)
        self.procs.clear()

    def _stop_proc(self, proc: Proc, grace: float = 10.0) -> None:
        pid = proc.popen.pid
        # Flower starts its SuperExec in a new session: find it before its parent goes.
        below = descendants(pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):  # ask first, then insist
            _signal(pid, sig, group=True)
            for child in below:
                _signal(child, sig)
            try:
                proc.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if proc in self.procs:
            self.procs.remove(proc)

    # ---------------------------------------------------------------- the CLI
    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """Run a ``flwr`` CLI command against this SuperLink; return its stdout."""
        result = subprocess.run(  # noqa: S603 - our own argument list
            [_executable("flwr"), *args],
            cwd=self.workdir,
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise DeploymentError(
                f"`flwr {shlex.join(args)}` failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        return result.stdout

    def flwr_json(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """A ``flwr`` command with ``--format json``, parsed."""
        out = self.flwr(*args, "--format", "json", timeout=timeout, check=False)
        start = out.find("{")
        if start < 0:
            raise DeploymentError(f"`flwr {shlex.join(args)}` printed no JSON:\n{out[-2000:]}")
        return json.loads(out[start:])

    def register_node(self, public_key: str | Path) -> int:
        """``flwr supernode register``: allow the SuperNode holding this key; its node id."""
        reply = self.flwr_json("supernode", "register", str(public_key), LOCAL_CONNECTION)
        if not reply.get("success"):
            raise DeploymentError(f"registering {public_key} failed: {reply}")
        return int(reply["node-id"])

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list``: the SuperLink's view of its SuperNodes."""
        reply = self.flwr_json("supernode", "list", LOCAL_CONNECTION)
        return list(reply.get("nodes", []))

    def wait_for_nodes(self, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Wait until ``count`` SuperNodes are online; return the online ones."""
        deadline = time.monotonic() + timeout
        online: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            online = [n for n in self.nodes() if n.get("status") == "online"]
            if len(online) >= count:
                return online
            time.sleep(1.0)
        logs = "\n".join(f"--- {p.name}\n{p.log_tail(1500)}" for p in self.procs)
        raise DeploymentError(f"{len(online)} of {count} SuperNodes online after {timeout} s\n{logs}")

    def run(self, app: str | Path = REPO_ROOT, run_config: Mapping[str, Any] | None = None) -> int:
        """``flwr run <app> <connection> --run-config ...``; returns the run id."""
        args = ["run", str(self._app_dir(Path(app))), LOCAL_CONNECTION]
        if run_config:
            args += ["--run-config", format_run_config(run_config)]
        reply = self.flwr_json(*args)
        if not reply.get("success") or reply.get("run-id") is None:
            raise DeploymentError(f"`flwr run` did not start a run: {reply}")
        return int(reply["run-id"])

    def _app_dir(self, app: Path) -> Path:
        """``app``, or a copy of it under a name ``flwr build`` accepts (letters, digits, -)."""
        from fl_strategies.flwr_compat import is_valid_app_name

        app = app.resolve()
        if is_valid_app_name(app.name):
            return app
        staged = self.workdir / "app" / "fedlean"
        if not staged.exists():
            skip = {".git", "outputs", "multirun", "results", "data", ".venv", "venv"}
            shutil.copytree(
                app,
                staged,
                ignore=lambda d, names: [
                    n
                    for n in names
                    if n in {"__pycache__", ".pytest_cache", ".ruff_cache"} or (Path(d) == app and n in skip)
                ],
            )
        return staged

    def run_info(self, run_id: int) -> dict[str, Any]:
        """``flwr ls --run-id``: the SuperLink's record of the run (status, traffic)."""
        reply = self.flwr_json("ls", LOCAL_CONNECTION, "--run-id", str(run_id))
        runs = reply.get("runs") or []
        if not runs:
            raise DeploymentError(f"no run {run_id} on the SuperLink: {reply}")
        return dict(runs[0])

    def wait_for_run(
        self,
        run_id: int,
        timeout: float = 600.0,
        done_file: str | Path | None = None,
    ) -> dict[str, Any]:
        """Wait until the run has finished; return its record (raises if it failed).

        Each ``flwr`` call starts a Python process (about 1 CPU second), so with
        ``done_file`` (e.g. the results' ``deployment.json``) this mostly watches for
        that file and asks the SuperLink only every 15 s (to notice a failed run).
        """
        deadline = time.monotonic() + timeout
        next_ask = 0.0
        info: dict[str, Any] = {}
        running = [p for p in self.procs if p.alive]
        while time.monotonic() < deadline:
            if dead := [p for p in running if not p.alive]:
                # A SuperNode that died would leave the run waiting for it forever.
                raise DeploymentError(
                    f"{dead[0].name} exited ({dead[0].popen.returncode}) "
                    f"during run {run_id}:\n{dead[0].log_tail()}"
                )
            now = time.monotonic()
            if done_file is None or Path(done_file).exists() or now >= next_ask:
                info = self.run_info(run_id)
                if str(info.get("status", "")).startswith("finished"):
                    break
                next_ask = now + 15.0
            time.sleep(1.0 if done_file is None or Path(done_file).exists() else 0.5)
        else:
            raise DeploymentError(
                f"run {run_id} not finished after {timeout} s: {info}\n{self.run_log(run_id)}"
            )
        if info["status"] != "finished:completed":
            raise DeploymentError(
                f"run {run_id} ended {info['status']}: {info.get('status-details')}\n{self.run_log(run_id)}"
            )
        return info

    def run_log(self, run_id: int) -> str:
        """The ServerApp's log of a run (``flwr log --show``)."""
        return self.flwr("log", str(run_id), LOCAL_CONNECTION, "--show", check=False)[-6000:]
