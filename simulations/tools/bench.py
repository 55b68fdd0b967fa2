"""Benchmark: the same FedAvg work four ways in one process, with times and ratios.

``python -m simulations.tools.bench [--rounds 20] [--epochs 5] [--clients 10] [--skip-ray] [--repeats 3]``

Work: digits, the MLP, IID partitions, every client every round, no evaluation
during the run (so all three do only training and aggregation). Ways:

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
import statistics
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


def main(argv: list[str] | None = None) -> None:
    """Run the three ways and print the table."""
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
