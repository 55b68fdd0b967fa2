"""Deployment helpers: credentials, device data, and a local SuperLink + SuperNodes.

Everything here drives Flower's own command line tools (``flower-superlink``,
``flower-supernode``, ``flwr``); it only saves typing and cleans up after itself.
See ``README.md (section Deploy on devices)`` for the same steps as plain commands on real devices.

* :func:`generate_tls_certs` -- a self-signed CA and a SuperLink certificate (the
  ``cryptography`` package, a Flower dependency; ``scripts/generate_certs.sh`` does
  the same with ``openssl``);
* :func:`generate_supernode_keys` -- a SuperNode's EC P-384 key pair in OpenSSH
  format, as ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` expect;
* :func:`export_partition` -- one partition of a dataset as the ``.npz`` file a
  device reads through ``--node-config data-path=...``;
* :func:`write_connection` -- a SuperLink connection in ``$FLWR_HOME/config.toml``;
* :class:`LocalFederation` -- starts a SuperLink and SuperNodes on this machine (each
  in its own process group), runs the app, reads the SuperLink's run record, and
  stops every process it started.

``python -m simulations.deploy local --nodes 2 -- method=fedavg num_rounds=3`` runs a
whole deployment on this machine and prints where the results are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: SuperLink connection name used by :class:`LocalFederation`.
LOCAL_CONNECTION = "fedlean-local"


# ----------------------------------------------------------------- credentials
@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a self-signed CA and the SuperLink certificate it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def generate_tls_certs(
    out_dir: str | Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
) -> TlsFiles:
    """Write a self-signed CA and a server certificate for ``hosts`` into ``out_dir``.

    Parameters
    ----------
    out_dir : str | Path
        Directory for ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key``.
    hosts : Sequence[str] (default: ("localhost", "127.0.0.1"))
        DNS names and IP addresses the SuperLink is reached at; all go into the
        certificate's subjectAltName. ``localhost``/``127.0.0.1`` are always added:
        the SuperLink's own SuperExec connects through them.
    days : int (default: 365)
        Validity.

    Returns
    -------
    TlsFiles
        The paths written. Only ``ca.crt`` goes to SuperNodes and CLI users.

    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlean test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    files = TlsFiles(out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.ca_key, key_pem(ca_key))
    _write_private(files.server_key, key_pem(server_key))
    return files


@dataclass(frozen=True)
class NodeKeys:
    """A SuperNode's authentication key pair (OpenSSH format)."""

    private_key: Path
    public_key: Path


def generate_supernode_keys(out_dir: str | Path, name: str) -> NodeKeys:
    """Write an EC P-384 key pair ``<name>`` / ``<name>.pub`` (like ``ssh-keygen -t ecdsa -b 384``).

    The private key stays on the device (``--auth-supernode-private-key``); the
    public key is registered with ``flwr supernode register <name>.pub``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    keys = NodeKeys(out / name, out / f"{name}.pub")
    _write_private(keys.private_key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    keys.public_key.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return keys


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


# ----------------------------------------------------------------- device data
def export_partition(
    path: str | Path, partition_id: int, num_partitions: int,
    overrides: Sequence[str] = (),
) -> Path:
    """Save one client partition (train + local test) as a device's ``.npz`` file.

    The file holds ``x`` (float32 images in [0, 1], ``N x C x H x W``) and ``y``
    (int64 labels), the format :func:`clients.data.load_local_data` reads. The
    partition is the one a simulation with the same ``overrides`` gives client
    ``partition_id``; a device normalizes it again like the run's dataset.
    """
    import numpy as np
    import torch

    from clients.data import get_spec, load_partition

    from .compose import client_settings, to_dict
    from .server_app import compose_config

    cfg = to_dict(compose_config(list(overrides)))
    data_cfg = client_settings(cfg)["data"]
    train, test = load_partition(data_cfg, partition_id, num_partitions)
    x = torch.cat([train.tensors[0], test.tensors[0]])
    y = torch.cat([train.tensors[1], test.tensors[1]])
    spec = get_spec(data_cfg["name"])
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    images = (x * std + mean).clamp_(0.0, 1.0)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x=images.numpy().astype(np.float32), y=y.numpy().astype(np.int64))
    return out


# ------------------------------------------------------------- flwr CLI config
def write_connection(
    flwr_home: str | Path, name: str, address: str,
    root_certificates: str | Path | None = None, default: bool = True,
) -> Path:
    """Add (or replace) a SuperLink connection in ``<flwr_home>/config.toml``.

    Without ``root_certificates`` the connection is ``insecure`` (plain HTTP).
    """
    import tomli_w

    path = Path(flwr_home) / "config.toml"
    config: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    links = config.setdefault("superlink", {})
    entry: dict[str, Any] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(root_certificates).resolve())
    links[name] = entry
    if default:
        links["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------ local processes
class DeploymentError(RuntimeError):
    """A SuperLink, SuperNode or run did not do what was expected; the message says what."""


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

    def _spawn(self, name: str, command: list[str]) -> Proc:
        command = [_executable(command[0]), *command[1:]]
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(  # noqa: S603 - our own argument list
                command, cwd=self.workdir, env=self._env, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_superlink(self, timeout: float = 60.0) -> Proc:
        """Start ``flower-superlink`` on a free port; return once it accepts connections."""
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = free_port(self.host)
            command = ["flower-superlink", "--host", self.host, "--port", str(self.port),
                       "--disable-runtime-dependency-installation"]
            if self.certs is not None:
                command += ["--ssl-ca-certfile", str(self.certs.ca_cert),
                            "--ssl-certfile", str(self.certs.server_cert),
                            "--ssl-keyfile", str(self.certs.server_key)]
            else:
                command += ["--insecure"]
            if self.node_auth:
                command += ["--enable-supernode-auth"]
            proc = self._spawn("superlink", command)
            if self._wait_port(proc, timeout):
                write_connection(self.flwr_home, LOCAL_CONNECTION, self.address,
                                 self.certs.ca_cert if self.certs else None)
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
        self, name: str, node_config: Mapping[str, Any] | str = "",
        private_key: str | Path | None = None, max_wait_time: float | None = None,
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

        """
        command = ["flower-supernode", "--superlink", self.address,
                   "--port", str(free_port()), "--node-config", format_node_config(node_config)]
        if self.certs is not None:
            command += ["--root-certificates", str(self.certs.ca_cert)]
        else:
            command += ["--insecure"]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key)]
        if max_wait_time is not None:
            command += ["--max-wait-time", str(max_wait_time)]
        return self._spawn(name, command)

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
            [_executable("flwr"), *args], cwd=self.workdir, env=self._env, capture_output=True,
            text=True, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise DeploymentError(f"`flwr {shlex.join(args)}` failed ({result.returncode}):\n"
                                  f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
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
        from flwr.cli.utils import is_valid_name

        app = app.resolve()
        if is_valid_name(app.name)[0]:
            return app
        staged = self.workdir / "app" / "fedlean"
        if not staged.exists():
            skip = {".git", "outputs", "multirun", "results", "data", ".venv", "venv"}
            shutil.copytree(app, staged, ignore=lambda d, names: [
                n for n in names
                if n in {"__pycache__", ".pytest_cache", ".ruff_cache"}
                or (Path(d) == app and n in skip)
            ])
        return staged

    def run_info(self, run_id: int) -> dict[str, Any]:
        """``flwr ls --run-id``: the SuperLink's record of the run (status, traffic)."""
        reply = self.flwr_json("ls", LOCAL_CONNECTION, "--run-id", str(run_id))
        runs = reply.get("runs") or []
        if not runs:
            raise DeploymentError(f"no run {run_id} on the SuperLink: {reply}")
        return dict(runs[0])

    def wait_for_run(
        self, run_id: int, timeout: float = 600.0, done_file: str | Path | None = None,
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
                raise DeploymentError(f"{dead[0].name} exited ({dead[0].popen.returncode}) "
                                      f"during run {run_id}:\n{dead[0].log_tail()}")
            now = time.monotonic()
            if done_file is None or Path(done_file).exists() or now >= next_ask:
                info = self.run_info(run_id)
                if str(info.get("status", "")).startswith("finished"):
                    break
                next_ask = now + 15.0
            time.sleep(1.0 if done_file is None or Path(done_file).exists() else 0.5)
        else:
            raise DeploymentError(f"run {run_id} not finished after {timeout} s: {info}\n"
                                  f"{self.run_log(run_id)}")
        if info["status"] != "finished:completed":
            raise DeploymentError(f"run {run_id} ended {info['status']}: "
                                  f"{info.get('status-details')}\n{self.run_log(run_id)}")
        return info

    def run_log(self, run_id: int) -> str:
        """The ServerApp's log of a run (``flwr log --show``)."""
        return self.flwr("log", str(run_id), LOCAL_CONNECTION, "--show", check=False)[-6000:]


def _executable(name: str) -> str:
    """A Flower command next to this interpreter (an unactivated venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"`{name}` not found: install flwr (pip install -e .)")
    return found


def format_node_config(node_config: Mapping[str, Any] | str) -> str:
    """``--node-config`` text: space-separated ``key=value``, strings quoted (TOML values)."""
    if isinstance(node_config, str):
        return node_config
    return " ".join(f"{k}={_toml_value(v)}" for k, v in node_config.items())


def format_run_config(run_config: Mapping[str, Any]) -> str:
    """``--run-config`` text from a dict (values as TOML)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


# ------------------------------------------------------------------------- CLI
def _local(args: argparse.Namespace) -> int:
    """Start a SuperLink and N SuperNodes here, run the app, stop everything."""
    workdir = Path(args.workdir or f"outputs/deploy-local/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    overrides = [f"num_clients={args.nodes}", *args.overrides]
    with LocalFederation(workdir, tls=args.tls, node_auth=args.auth) as fed:
        fed.start_superlink()
        for i in range(args.nodes):
            key = None
            if args.auth:
                keys = generate_supernode_keys(fed.workdir / "keys", f"node{i}")
                fed.register_node(keys.public_key)
                key = keys.private_key
            fed.start_supernode(f"supernode{i}", {"partition-id": i, "num-partitions": args.nodes},
                                private_key=key)
        out_dir = fed.workdir / "results"
        run_id = fed.run(run_config={"overrides": shlex.join(overrides),
                                     "output-dir": str(out_dir)})
        print(f"run {run_id} started on {fed.address}; logs in {fed.workdir}", flush=True)
        info = fed.wait_for_run(run_id, timeout=args.timeout,
                                done_file=out_dir / "deployment.json")
        print(fed.run_log(run_id))
        print(json.dumps({"run-id": run_id, "status": info["status"],
                          "network-traffic": info["network-traffic"]}, indent=2))
    print(f"results in {out_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulations.deploy {certs,keys,export,local} ...``."""
    parser = argparse.ArgumentParser(prog="python -m simulations.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    certs = sub.add_parser("certs", help="self-signed CA + SuperLink certificate")
    certs.add_argument("--out", default="certs")
    certs.add_argument("--host", action="append", default=[],
                       help="DNS name or IP of the SuperLink (repeat); localhost is always added")
    certs.add_argument("--days", type=int, default=365)

    keys = sub.add_parser("keys", help="SuperNode authentication key pairs")
    keys.add_argument("--out", default="keys")
    keys.add_argument("names", nargs="+", help="one key pair per name, e.g. pi-1 jetson-1")

    export = sub.add_parser("export", help="one partition as a device's .npz file")
    export.add_argument("--partition-id", type=int, required=True)
    export.add_argument("--num-partitions", type=int, required=True)
    export.add_argument("--out", required=True)
    export.add_argument("overrides", nargs="*", help="Hydra overrides (dataset=..., partition=...)")

    local = sub.add_parser("local", help="SuperLink + N SuperNodes here: run the app, stop all")
    local.add_argument("--nodes", type=int, default=2)
    local.add_argument("--tls", action="store_true")
    local.add_argument("--auth", action="store_true", help="SuperNode authentication (implies --tls)")
    local.add_argument("--workdir", default=None)
    local.add_argument("--timeout", type=float, default=3600.0)
    local.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=fedavg num_rounds=3")

    args = parser.parse_args(argv)
    if args.command == "certs":
        files = generate_tls_certs(args.out, hosts=args.host or ["localhost"], days=args.days)
        print(f"CA: {files.ca_cert}  server: {files.server_cert} {files.server_key}")
    elif args.command == "keys":
        for name in args.names:
            pair = generate_supernode_keys(args.out, name)
            print(f"{pair.private_key}  {pair.public_key}")
    elif args.command == "export":
        path = export_partition(args.out, args.partition_id, args.num_partitions, args.overrides)
        print(path)
    elif args.command == "local":
        args.tls = args.tls or args.auth
        return _local(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
