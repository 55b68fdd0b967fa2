"""Peak memory of a simulation with the node state in memory vs on disk (``client_state``).

``python -m simulations.tools.state_bench`` runs GWPF with ResNet-18 on CIFAR-shaped
random data (``dataset=synthetic_cifar10``), 100 nodes, 10 sampled per round, 3 rounds,
a few examples per node (``partition=sampled``), inline, once per store, each in a
fresh process, and prints each process's peak resident memory (``ru_maxrss``: the
kernel's high-water mark, so no spike between samples is missed), the run's wall
time, the store's size on disk at the end, and whether the two runs' ``rounds.jsonl``
(accuracies, bytes, method statistics; timings aside) are identical.

GWPF keeps about 18 bytes per parameter per node (model, two masks, three drift
arrays): about 200 MB per ResNet-18 node. With the memory store every node sampled so
far stays resident, and each checkpoint pickles all of them again (twice over, while
it is written), so the memory store's run writes no checkpoints by default here
(``--memory-checkpoints`` to have them); the disk store's run checkpoints every round
as a default run does.

Options: ``--nodes``, ``--per-round``, ``--rounds``, ``--examples`` (per node),
``--model``, ``--stores memory disk``, ``--out`` (a scratch directory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def overrides(args: argparse.Namespace, store: str) -> list[str]:
    """The run's Hydra overrides for one store."""
    checkpoints = store == "disk" or args.memory_checkpoints
    return [
        "method=gwpf",
        f"model={args.model}",
        "dataset=synthetic_cifar10",
        "partition=sampled",
        f"partition.examples_per_partition={args.examples}",
        f"num_clients={args.nodes}",
        f"fraction_train={args.per_round / args.nodes}",
        "fraction_evaluate=0",
        "central_eval=false",
        f"num_rounds={args.rounds}",
        "local_epochs=1",
        f"batch_size={args.examples}",
        "torch_threads=1",
        "save_model=false",
        f"checkpoint_every={1 if checkpoints else 0}",
        f"client_state={store}",
        "seed=0",
    ]


def child(args: argparse.Namespace) -> None:
    """One run in this process; prints one JSON line."""
    from hydra import compose, initialize_config_dir

    from simulations import CONF_DIR
    from simulations.app import state_store
    from simulations.runtimes.simulation import run_from_config

    store_bytes: list[int] = []
    original_remove = state_store.NodeStateStore.remove

    def measured_remove(self: state_store.NodeStateStore) -> None:
        store_bytes.append(sum(p.stat().st_size for p in self.root.rglob("*.state")))
        original_remove(self)

    state_store.NodeStateStore.remove = measured_remove  # type: ignore[method-assign]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=overrides(args, args.child))
    out = Path(args.out) / args.child
    started = time.perf_counter()
    run_from_config(cfg, out, quiet=True)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    print(
        json.dumps(
            {
                "store": args.child,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "wall_s": wall,
                "store_bytes": store_bytes[0] if store_bytes else None,
                "rounds": [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows],
            }
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run each store in a fresh process and print the table; returns the measurements."""
    parser = argparse.ArgumentParser(prog="python -m simulations.tools.state_bench", description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=4, help="training examples per node (plus 1 to test)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--stores", nargs="+", default=["memory", "disk"], choices=["memory", "disk"])
    parser.add_argument(
        "--memory-checkpoints", action="store_true", help="checkpoint the memory store's run too"
    )
    parser.add_argument("--out", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.per_round < 1 or args.per_round > args.nodes:
        parser.error(f"--per-round={args.per_round}: must be in [1, --nodes]")
    if args.child:
        child(args)
        return {}
    with tempfile.TemporaryDirectory(prefix="state_bench_", dir=args.out) as scratch:
        results = {}
        for store in args.stores:
            cmd = [sys.executable, "-m", "simulations.tools.state_bench", *_forward(args), "--out", scratch]
            env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
            done = subprocess.run(
                [*cmd, "--child", store], env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise SystemExit(f"state_bench: the {store} run failed:\n{done.stderr[-3000:]}")
            results[store] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"GWPF {args.model}, {args.nodes} nodes, {args.per_round} per round, {args.rounds} rounds, "
        f"{args.examples} examples per node, inline"
    )
    print(f"{'store':<8} {'peak RSS':>10} {'wall':>8} {'on disk at end':>15}")
    for store, r in results.items():
        on_disk = f"{r['store_bytes'] / 2**30:.2f} GiB" if r["store_bytes"] is not None else "-"
        print(f"{store:<8} {r['peak_rss_bytes'] / 2**30:>6.2f} GiB {r['wall_s']:>6.1f} s {on_disk:>15}")
    if len(results) == 2:
        same = results["memory"]["rounds"] == results["disk"]["rounds"]
        print(f"rounds.jsonl identical (timings aside): {same}")
    return results


def _forward(args: argparse.Namespace) -> list[str]:
    out = [
        f"--nodes={args.nodes}",
        f"--per-round={args.per_round}",
        f"--rounds={args.rounds}",
        f"--examples={args.examples}",
        f"--model={args.model}",
    ]
    return out + (["--memory-checkpoints"] if args.memory_checkpoints else [])


if __name__ == "__main__":
    main()
