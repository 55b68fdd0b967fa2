"""``python -m simulations.deploy {certs,keys,export,local,clientapp}``: deployment from the shell.

``python -m simulations.deploy local --nodes 2 -- method=fedavg num_rounds=3`` runs a
whole deployment on this machine and prints where the results are; ``docs/deploy.md``
gives the same steps as plain Flower commands on real devices.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from .credentials import generate_supernode_keys, generate_tls_certs
from .device_data import export_partition
from .federation import LocalFederation


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
            fed.start_supernode(
                f"supernode{i}",
                {"partition-id": i, "num-partitions": args.nodes},
                private_key=key,
                isolation=args.isolation,
            )
        out_dir = fed.workdir / "results"
        run_id = fed.run(run_config={"overrides": shlex.join(overrides), "output-dir": str(out_dir)})
        print(f"run {run_id} started on {fed.address}; logs in {fed.workdir}", flush=True)
        info = fed.wait_for_run(run_id, timeout=args.timeout, done_file=out_dir / "deployment.json")
        print(fed.run_log(run_id))
        print(
            json.dumps(
                {"run-id": run_id, "status": info["status"], "network-traffic": info["network-traffic"]},
                indent=2,
            )
        )
    print(f"results in {out_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulations.deploy {certs,keys,export,local,clientapp} ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    certs = sub.add_parser("certs", help="self-signed CA + SuperLink certificate")
    certs.add_argument("--out", default="certs")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP of the SuperLink (repeat); localhost is always added",
    )
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
    local.add_argument(
        "--isolation",
        choices=("process", "subprocess"),
        default="process",
        help="process: one long-running fedlean ClientApp per SuperNode (default); "
        "subprocess: Flower's default, a new flwr-clientapp process per message",
    )
    local.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=fedavg num_rounds=3")

    worker = sub.add_parser(
        "clientapp",
        help="long-running ClientApp for a SuperNode started with --isolation process",
    )
    worker.add_argument(
        "--runtime-api-address",
        default="127.0.0.1:9094",
        help="the SuperNode's Runtime API (flower-supernode --port; default 127.0.0.1:9094)",
    )
    worker.add_argument("--poll-interval", type=float, default=0.02, help="seconds between task polls")
    worker.add_argument("--root-certificates", default=None, help="CA file of a TLS Runtime API")

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
    elif args.command == "clientapp":
        from .worker import serve

        serve(args.runtime_api_address, args.poll_interval, args.root_certificates)
    elif args.command == "local":
        args.tls = args.tls or args.auth
        return _local(args)
    return 0
