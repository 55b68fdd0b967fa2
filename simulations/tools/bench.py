"""Benchmarks: FedAvg four ways, population scaling, deployed vs simulated rounds.

``python -m simulations.tools.bench [--rounds 20] [--epochs 5] [--clients 10] [--skip-ray] [--repeats 3]``
``python -m simulations.tools.bench population [--sizes 10 1000 10000] [--backends inline ray]``
``python -m simulations.tools.bench deployed [--rounds 3] [--nodes 2]``
``python -m simulations.tools.bench methods [--methods fedavg ...] [--repeats 3] [-- override ...]``

The sub-commands are described in :func:`population_main`, :func:`deployed_main` and
:func:`methods_main`.

Work: digits, the MLP, IID partitions, every client every round, no evaluation
during the run (so every way does only training and aggregation). Ways:

1. a plain PyTorch loop over the same client partitions (no Flower at all), with
   batches sliced from the tensors: the floor a user would write for in-memory data,
   and every ratio's denominator;
2. the same loop with a per-example ``DataLoader``;
3. ``backend=inline``: fedlean's strategy + ClientApp over the in-process Grid;
4. ``backend=ray``: the same over Flower's Simulation Runtime on Ray.

Per-round times are medians over rounds 2..R (round 1 includes warm-up); the
final accuracy of each way is printed so that equal work is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from clients.data import load_central_testset, load_partition
from clients.methods import load_arrays
from clients.models import build_model
from clients.train import evaluate_model
from simulations import CONF_DIR as PACKAGE_CONF_DIR
from simulations.app.compose import client_settings, seed_everything
from simulations.app.records import read_rounds
from simulations.runtimes.simulation import run_from_config

CONF_DIR = str(PACKAGE_CONF_DIR)


def bench_config(args: argparse.Namespace, backend: str):
    """The benchmark's run config for one backend."""
    overrides = [
        f"backend={backend}",
        f"num_rounds={args.rounds}",
        f"local_epochs={args.epochs}",
        f"num_clients={args.clients}",
        "fraction_evaluate=0",
        "central_eval=false",
        f"seed={args.seed}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="config", overrides=overrides)


def sliced_batches(part, batch_size: int, generator: torch.Generator):
    """Shuffled batches sliced from a TensorDataset's tensors: the floor for in-memory data."""
    order = torch.randperm(len(part), generator=generator)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield tuple(t[rows] for t in part.tensors)


def plain_loop(cfg, sliced: bool = False) -> tuple[float, list[float], float]:
    """FedAvg in plain PyTorch: total seconds, per-round seconds, final accuracy.

    ``sliced``: batches sliced from the tensors (:func:`sliced_batches`) instead of a
    per-example ``DataLoader``.
    """
    settings = client_settings(cfg)
    data, dims, train = settings["data"], settings["model"], settings["train"]
    seed_everything(int(cfg.seed))
    model = build_model(dims["name"], dims["in_channels"], dims["num_classes"], dims["image_size"])
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    parts = [load_partition(data, i, int(cfg.num_clients))[0] for i in range(int(cfg.num_clients))]
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(int(cfg.seed))
    start, round_times = time.perf_counter(), []
    for _ in range(int(cfg.num_rounds)):
        t0 = time.perf_counter()
        states, weights = [], []
        for part in parts:
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=train["lr"], momentum=train["momentum"])
            model.train()
            for _ in range(train["epochs"]):
                if sliced:
                    loader = sliced_batches(part, train["batch_size"], generator)
                else:
                    loader = DataLoader(
                        part, batch_size=train["batch_size"], shuffle=True, generator=generator
                    )
                for x, y in loader:
                    opt.zero_grad()
                    loss_fn(model(x), y).backward()
                    opt.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(len(part))
        total = sum(weights)
        global_state = {
            k: sum(s[k].double() * (w / total) for s, w in zip(states, weights, strict=True)).to(v.dtype)
            for k, v in global_state.items()
        }
        round_times.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    model.load_state_dict(global_state)
    testset = load_central_testset(data)
    accuracy = evaluate_model(model, DataLoader(testset, batch_size=512), torch.device("cpu")).accuracy
    return seconds, round_times, accuracy


def fedlean_way(cfg, out_dir: Path) -> tuple[float, list[float], float]:
    """A fedlean run: total seconds, per-round seconds, final accuracy."""
    start = time.perf_counter()
    run_from_config(cfg, out_dir, quiet=True)
    seconds = time.perf_counter() - start
    walls = [r["wall_seconds"] for r in read_rounds(out_dir / "rounds.jsonl")]
    round_times = [b - a for a, b in zip(walls, walls[1:], strict=False)]
    settings = client_settings(cfg)
    dims = settings["model"]
    model = build_model(dims["name"], dims["in_channels"], dims["num_classes"], dims["image_size"])
    load_arrays(model, dict(np.load(out_dir / "final_model.npz")))
    testset = load_central_testset(settings["data"])
    accuracy = evaluate_model(model, DataLoader(testset, batch_size=512), torch.device("cpu")).accuracy
    return seconds, round_times, accuracy


def per_round_seconds(rounds_jsonl: Path) -> list[float]:
    """Seconds of each round 1..R from ``rounds.jsonl`` (``wall_seconds`` is cumulative)."""
    walls = [r["wall_seconds"] for r in read_rounds(rounds_jsonl)]
    return [b - a for a, b in zip(walls, walls[1:], strict=False)]


# ------------------------------------------------------------ population scaling
def population_overrides(backend: str, num_clients: int, sampled: int, rounds: int, seed: int) -> list[str]:
    """FedAvg on digits with ``sampled`` of ``num_clients`` clients per round, no evaluation."""
    return [
        "method=fedavg",
        "dataset=digits",
        f"backend={backend}",
        "partition=sampled",
        f"num_clients={num_clients}",
        f"fraction_train={min(1.0, sampled / num_clients)!r}",
        "fraction_evaluate=0",
        "central_eval=false",
        f"num_rounds={rounds}",
        "local_epochs=1",
        f"seed={seed}",
    ]


def population_run(overrides: list[str]) -> dict[str, object]:
    """One run in this process: its per-round seconds and this process's peak RSS (MB)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run_from_config(cfg, Path(tmp) / "run", quiet=True)
        rounds = per_round_seconds(Path(tmp) / "run" / "rounds.jsonl")
    # Linux reports ru_maxrss in KiB. The server (strategy, Grid or Flower's engine and
    # LinkState) lives in this process; Ray's workers do not.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"per_round": rounds, "peak_rss_mb": peak_mb}


def population_main(argv: list[str]) -> None:
    """Per-round seconds and server RSS of FedAvg at several population sizes.

    Each (backend, size) runs in a fresh process (so that peak RSS is its own):
    ``partition=sampled`` (every client draws ``examples_per_partition`` = 16
    digits examples with replacement), ``--sampled`` clients per round, no
    evaluation, one local epoch; seconds per round are the median of rounds 2..R.
    """
    parser = argparse.ArgumentParser(prog="python -m simulations.tools.bench population")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--backends", nargs="+", default=["inline", "ray"], choices=["inline", "ray"])
    parser.add_argument("--sampled", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        help="more Hydra overrides, e.g. backend.engine_poll_interval=null (Flower's own engine loop)",
    )
    args = parser.parse_args(argv)
    rows = []
    for backend in args.backends:
        for size in args.sizes:
            overrides = population_overrides(backend, size, args.sampled, args.rounds, args.seed)
            overrides += args.extra
            result = subprocess.run(  # noqa: S603 - this module, our arguments
                [sys.executable, "-m", "simulations.tools.bench", "population-run", *overrides],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
            if result.returncode != 0 or not lines:
                raise SystemExit(f"{backend} at {size} clients failed:\n{result.stderr[-3000:]}")
            record = json.loads(lines[-1])
            rows.append((backend, size, statistics.median(record["per_round"][1:]), record["peak_rss_mb"]))
            print(f"  {backend} {size}: {rows[-1][2]:.3f} s/round, {rows[-1][3]:.0f} MB", file=sys.stderr)
    print(
        f"\nFedAvg, digits (partition=sampled, 16 examples each), {args.sampled} clients per round, "
        f"{args.rounds} rounds, median of rounds 2..{args.rounds}\n"
    )
    print("| backend | num_clients | s/round | × smallest | server peak RSS MB | MB per 1,000 clients |")
    print("|---|---|---|---|---|---|")
    for backend, size, seconds, rss in rows:
        base = next(r for r in rows if r[0] == backend)
        growth = (rss - base[3]) / (size - base[1]) * 1000 if size != base[1] else 0.0
        print(
            f"| {backend} | {size:,} | {seconds:.3f} | {seconds / base[2]:.2f} | {rss:.0f} | {growth:+.2f} |"
        )


# ------------------------------------------------------------------ method overheads
OVERHEAD_METHODS = (
    "fedavg",
    "fedprox",
    "gwpf",
    "apf",
    "fedsparsify_global",
    "fedsparsify_local",
    "swat",
    "zerofl",
    "prunefl",
)


def cpu_per_round(rounds_path: Path) -> list[float]:
    """Process CPU seconds of each round 1..R (``cpu_seconds`` differences in ``rounds.jsonl``)."""
    cpu = [r["cpu_seconds"] for r in read_rounds(rounds_path)]
    return [b - a for a, b in zip(cpu, cpu[1:], strict=False)]


def methods_main(argv: list[str]) -> None:
    """CPU per round of every method on the digits MLP setup, as a multiple of FedAvg's.

    Inline (server and clients in this process, so process CPU time covers both), 10
    clients, every client every round, no evaluation; per method the median over
    ``--repeats`` runs of the median of rounds 2..R. Repeats are interleaved (method
    after method), so a noisy neighbour slows every method alike.
    """
    parser = argparse.ArgumentParser(prog="python -m simulations.tools.bench methods")
    parser.add_argument("--methods", nargs="+", default=list(OVERHEAD_METHODS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="run overrides for every method")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if "fedavg" not in args.methods:
        args.methods = ["fedavg", *args.methods]
    samples: dict[str, list[float]] = {m: [] for m in args.methods}
    for _ in range(args.repeats):
        for method in args.methods:
            overrides = [
                f"method={method}",
                f"num_rounds={args.rounds}",
                f"local_epochs={args.epochs}",
                f"num_clients={args.clients}",
                "fraction_evaluate=0",
                "central_eval=false",
                "checkpoint_every=0",
                f"seed={args.seed}",
                *args.overrides,
            ]
            with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
                cfg = compose(config_name="config", overrides=overrides)
            with tempfile.TemporaryDirectory() as tmp:
                run_from_config(cfg, Path(tmp) / "run", quiet=True)
                per_round = cpu_per_round(Path(tmp) / "run" / "rounds.jsonl")
            samples[method].append(statistics.median(per_round[1:]))
            print(f"  {method}: {samples[method][-1]:.3f} CPU s/round", file=sys.stderr)
    base = statistics.median(samples["fedavg"])
    print(
        f"\nCPU per round (inline, digits, MLP, {args.clients} clients, {args.epochs} local epoch(s), "
        f"rounds 2..{args.rounds}, median of {args.repeats}, torch threads 1)\n"
    )
    print("| method | CPU s/round | × FedAvg | min–max of the repeats |")
    print("|---|---|---|---|")
    for method in args.methods:
        median = statistics.median(samples[method])
        print(
            f"| {method} | {median:.3f} | {median / base:.2f} | "
            f"{min(samples[method]):.3f}–{max(samples[method]):.3f} |"
        )


# ------------------------------------------------------------ deployed vs simulated
def deployed_run(isolation: str, overrides: list[str], workdir: Path, timeout: float) -> dict[str, object]:
    """A LocalFederation run: per-round seconds, final accuracy, bytes (ours and the SuperLink's)."""
    from simulations.deploy import LocalFederation

    nodes = next(int(o.split("=", 1)[1]) for o in overrides if o.startswith("num_clients="))
    with LocalFederation(workdir, env={"OMP_NUM_THREADS": "1"}) as fed:
        fed.start_superlink()
        for i in range(nodes):
            fed.start_supernode(
                f"supernode{i}", {"partition-id": i, "num-partitions": nodes}, isolation=isolation
            )
        out_dir = fed.workdir / "results"
        run_id = fed.run(run_config={"overrides": shlex.join(overrides), "output-dir": str(out_dir)})
        info = fed.wait_for_run(run_id, timeout=timeout, done_file=out_dir / "deployment.json")
    summary = json.loads((out_dir / "summary.json").read_text())
    return {
        "per_round": per_round_seconds(out_dir / "rounds.jsonl"),
        "accuracy": summary["final_central_accuracy"],
        "bytes": summary["total_bytes"] + summary["eval_bytes"],
        "link_bytes": info["network-traffic"]["total-bytes"],
    }


def deployed_main(argv: list[str]) -> None:
    """Seconds per round of a deployed run (SuperLink + SuperNodes on 127.0.0.1) vs inline.

    Deployed twice on this machine, one after the other: Flower's default
    ``subprocess`` isolation (a new ``flwr-clientapp`` process per message) and
    ``process`` isolation with fedlean's long-running ClientApp worker
    (:mod:`simulations.deploy.worker`); then the same config with ``backend=inline``.
    Seconds per round: median of rounds 1..R (each deployed round includes its
    process starts, so round 1 is not set apart).
    """
    parser = argparse.ArgumentParser(prog="python -m simulations.tools.bench deployed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--isolations", nargs="+", default=["subprocess", "process"])
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    overrides = [
        "method=fedavg",
        "dataset=digits",
        f"num_clients={args.nodes}",
        f"num_rounds={args.rounds}",
        "local_epochs=1",
        "seed=0",
    ]
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for isolation in args.isolations:
            results[f"deployed, {isolation} isolation"] = deployed_run(
                isolation, overrides, Path(tmp) / isolation, args.timeout
            )
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = compose(config_name="config", overrides=[*overrides, "backend=inline"])
        run_from_config(cfg, Path(tmp) / "inline", quiet=True)
        summary = json.loads((Path(tmp) / "inline" / "summary.json").read_text())
        results["backend=inline"] = {
            "per_round": per_round_seconds(Path(tmp) / "inline" / "rounds.jsonl"),
            "accuracy": summary["final_central_accuracy"],
            "bytes": summary["total_bytes"] + summary["eval_bytes"],
            "link_bytes": None,
        }
    first = statistics.median(next(iter(results.values()))["per_round"])  # type: ignore[arg-type]
    print(
        f"\nFedAvg, digits, MLP, {args.nodes} SuperNodes on 127.0.0.1, {args.rounds} rounds x 1 "
        f"local epoch (train + evaluate per round), median of rounds 1..{args.rounds}\n"
    )
    print(
        "| run | s/round | rounds (s) | speed-up vs first | final acc | bytes (fedlean) | bytes (SuperLink) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rounds = r["per_round"]
        median = statistics.median(rounds)  # type: ignore[arg-type]
        link = f"{r['link_bytes']:,}" if r["link_bytes"] is not None else "-"
        print(
            f"| {name} | {median:.2f} | {', '.join(f'{x:.2f}' for x in rounds)} | "  # type: ignore[union-attr]
            f"{first / median:.1f} | {r['accuracy']:.4f} | {r['bytes']:,} | {link} |"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the four ways and print the table (or a sub-command: population, deployed, methods)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "population":
        return population_main(argv[1:])
    if argv and argv[0] == "deployed":
        return deployed_main(argv[1:])
    if argv and argv[0] == "methods":
        return methods_main(argv[1:])
    if argv and argv[0] == "population-run":  # one child of `population`
        print(json.dumps(population_run(argv[1:])))
        return None
    parser = argparse.ArgumentParser(description="FedAvg: plain PyTorch vs inline vs Ray")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way; figures are medians")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # same threading for all three ways (Ray actors get 1 CPU)

    ways = {
        "plain loop, sliced tensors": lambda tmp: plain_loop(bench_config(args, "inline"), sliced=True),
        "plain loop, DataLoader": lambda tmp: plain_loop(bench_config(args, "inline")),
        "backend=inline": lambda tmp: fedlean_way(bench_config(args, "inline"), Path(tmp) / "inline"),
    }
    if not args.skip_ray:
        ways["backend=ray"] = lambda tmp: fedlean_way(bench_config(args, "ray"), Path(tmp) / "ray")
    # Interleaved repeats: a noisy neighbour slows every way alike.
    runs: dict[str, list[tuple[float, list[float], float]]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(way(tmp))

    def per_round(name: str) -> float:
        return statistics.median(statistics.median(rounds[1:]) for _, rounds, _ in runs[name])

    def total(name: str) -> float:
        return statistics.median(seconds for seconds, _, _ in runs[name])

    floor = "plain loop, sliced tensors"
    print(
        f"\nFedAvg, digits, MLP, {args.clients} clients, {args.rounds} rounds x "
        f"{args.epochs} local epochs, torch threads 1, median of {args.repeats}\n"
    )
    print("| way | total s | s/round (rounds 2..R) | total × floor | round × floor | final acc |")
    print("|---|---|---|---|---|---|")
    for name in ways:
        print(
            f"| {name} | {total(name):.2f} | {per_round(name):.3f} | {total(name) / total(floor):.2f} "
            f"| {per_round(name) / per_round(floor):.2f} | {runs[name][-1][2]:.4f} |"
        )


if __name__ == "__main__":
    main()
