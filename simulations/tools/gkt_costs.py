"""Edge costs of FedGKT next to FedAvg's: ``python -m simulations.tools.gkt_costs``.

Prints parameters and per-sample FLOPs (``torch.utils.flop_counter``, forward and
forward+backward) of the FedGKT edge model and of the FedAvg models it replaces on
the edge, the ratios, and the upload each needs. The FedGKT paper's claims are
54-105x fewer edge parameters and 9-17x fewer edge FLOPs than FedAvg with
ResNet-56/110; the command checks the lower bounds (exit status 1 if not met).

Per sample is not the whole edge bill. Each round a FedGKT client also runs its edge
model in eval mode over **all** its train and test images, to upload their features;
FedAvg has no such pass. The second table gives the edge FLOPs of one client's round
(``--train-images``, ``--test-images``, ``--epochs``) with that extraction included;
runs report the same figures (``edge_flops_train``/``edge_flops_extract`` per round,
``edge_flops_*_per_round`` and ``edge_flops_train_per_sample`` in ``summary.json``).

Initialisation differs too: FedML copies the stem (``conv1``, ``bn1``, ``layer1``) of a
ResNet-56 pretrained on the dataset into every edge model; fedlean starts from random
weights unless ``method.edge_stem_checkpoint`` names a state-dict file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from clients.flops import count_flops
from clients.models import build_model, count_params

EDGE_MODEL = "resnet8_56"
FEDAVG_MODELS = ("resnet56", "resnet110")
SERVER_MODELS = ("resnet56_server", "resnet110_server")
PAPER_PARAMS_RATIO = 54.0
PAPER_FLOPS_RATIO = 9.0


def model_costs(name: str, in_channels: int, num_classes: int, image_size: int) -> dict[str, Any]:
    """Parameters, forward and training FLOPs per sample, and output features of a model."""
    model = build_model(name, in_channels, num_classes, image_size)
    sample = torch.zeros(1, in_channels, image_size, image_size)
    with torch.no_grad():
        out = model.eval()(sample)
    return {
        "model": name,
        "params": count_params(model),
        "flops_forward": count_flops(model, sample, training=False),
        "flops_train": count_flops(model, sample, training=True),
        "feature_elements": out[1][0].numel() if isinstance(out, tuple) else 0,
    }


def edge_cost_table(
    in_channels: int = 3, num_classes: int = 10, image_size: int = 32
) -> list[dict[str, Any]]:
    """Costs of the edge model (first row) and the FedAvg models, with ratios to the edge."""
    edge = model_costs(EDGE_MODEL, in_channels, num_classes, image_size)
    rows = [edge]
    for name in FEDAVG_MODELS:
        row = model_costs(name, in_channels, num_classes, image_size)
        row["params_ratio"] = row["params"] / edge["params"]
        row["flops_ratio"] = row["flops_train"] / edge["flops_train"]
        rows.append(row)
    return rows


def edge_round_flops(
    rows: list[dict[str, Any]], train_images: int, test_images: int, epochs: int = 1
) -> list[dict[str, Any]]:
    """Edge FLOPs of one client's round: FedGKT (training + eval-mode extraction) vs FedAvg.

    Parameters
    ----------
    rows : list[dict]
        :func:`edge_cost_table`'s rows (the edge model first).
    train_images, test_images : int
        The client's split sizes; FedGKT extracts features of both every round.
    epochs : int (default: 1)
        Local epochs (FedGKT ``epochs_client``, FedAvg ``local_epochs``).

    Returns
    -------
    list[dict]
        Per row: ``train_flops``, ``extract_flops`` (0 for FedAvg), ``round_flops`` and,
        for FedAvg rows, ``round_ratio`` = FedAvg's round over FedGKT's.
    """
    edge = rows[0]
    out = []
    for row in rows:
        train = row["flops_train"] * train_images * epochs
        extract = row["flops_forward"] * (train_images + test_images) if row is edge else 0
        out.append(
            {
                "model": row["model"],
                "train_flops": train,
                "extract_flops": extract,
                "round_flops": train + extract,
            }
        )
    for entry in out[1:]:
        entry["round_ratio"] = entry["round_flops"] / out[0]["round_flops"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit status 1 if a paper lower bound is not met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--train-images",
        type=int,
        default=3125,
        help="one client's training images (default: CIFAR-10's 50,000 over 16 clients)",
    )
    parser.add_argument(
        "--test-images",
        type=int,
        default=625,
        help="one client's test images (default: 10,000 over 16 clients)",
    )
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    args = parser.parse_args(argv)
    rows = edge_cost_table(args.in_channels, args.num_classes, args.image_size)
    edge = rows[0]
    print(
        f"Edge training cost per client, {args.in_channels}x{args.image_size}x{args.image_size} "
        f"inputs, {args.num_classes} classes (FLOPs per sample, torch.utils.flop_counter)\n"
    )
    print("| edge model | method | params | fwd FLOPs | train FLOPs | params vs edge | train FLOPs vs edge |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        method = "FedGKT" if row is edge else "FedAvg"
        ratios = (
            ("1x", "1x") if row is edge else (f"{row['params_ratio']:.1f}x", f"{row['flops_ratio']:.1f}x")
        )
        print(
            f"| {row['model']} | {method} | {row['params']:,} | {row['flops_forward'] / 1e6:.1f} M "
            f"| {row['flops_train'] / 1e6:.1f} M | {ratios[0]} | {ratios[1]} |"
        )
    per_round = edge_round_flops(rows, args.train_images, args.test_images, args.epochs)
    print(
        f"\nEdge FLOPs of one client's round: {args.train_images:,} train + {args.test_images:,} test "
        f"images, {args.epochs} epoch(s); FedGKT also extracts features of every image (eval mode)\n"
    )
    print("| edge model | method | training | feature extraction | round | round vs FedGKT |")
    print("|---|---|---:|---:|---:|---:|")
    for entry in per_round:
        method = "FedGKT" if entry is per_round[0] else "FedAvg"
        ratio = f"{entry['round_ratio']:.1f}x" if "round_ratio" in entry else "1x"
        print(
            f"| {entry['model']} | {method} | {entry['train_flops'] / 1e9:.2f} G | "
            f"{entry['extract_flops'] / 1e9:.2f} G | {entry['round_flops'] / 1e9:.2f} G | {ratio} |"
        )
    print(
        "\nFedML initialises the edge stem (conv1, bn1, layer1) from a pretrained ResNet-56; "
        "fedlean from random weights (method.edge_stem_checkpoint to load one)."
    )
    servers = [
        f"{name} {count_params(build_model(name, 16, args.num_classes, args.image_size)):,} params"
        for name in SERVER_MODELS
    ]
    print(f"\nFedGKT server models (trained at the server): {'; '.join(servers)}.")
    f32, f16 = 4 * edge["feature_elements"], 2 * edge["feature_elements"]
    print(
        f"\nFedGKT upload per training image: {edge['feature_elements']:,} feature values = "
        f"{f32 / 1e3:.1f} kB float32, {f16 / 1e3:.1f} kB float16 (before sparse coding), "
        f"plus {args.num_classes} logits."
    )
    for row in rows[1:]:
        print(
            f"FedAvg {row['model']} upload per round: {row['params'] * 4 / 1e6:.2f} MB float32 "
            f"= the features of {row['params'] * 4 / f16:.0f} images at float16."
        )
    ok = all(
        r["params_ratio"] >= PAPER_PARAMS_RATIO and r["flops_ratio"] >= PAPER_FLOPS_RATIO for r in rows[1:]
    )
    print(
        f"\nPaper's lower bounds (>= {PAPER_PARAMS_RATIO:.0f}x params, >= {PAPER_FLOPS_RATIO:.0f}x "
        f"FLOPs): {'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
