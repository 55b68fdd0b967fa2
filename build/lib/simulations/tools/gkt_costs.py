"""Edge costs of FedGKT next to FedAvg's: ``python -m simulations.tools.gkt_costs``.

Prints parameters and per-sample FLOPs (``torch.utils.flop_counter``, forward and
forward+backward) of the FedGKT edge model and of the FedAvg models it replaces on
the edge, the ratios, and the upload each needs. The FedGKT paper's claims are
54-105x fewer edge parameters and 9-17x fewer edge FLOPs than FedAvg with
ResNet-56/110; the command checks the lower bounds (exit status 1 if not met).
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


def edge_cost_table(in_channels: int = 3, num_classes: int = 10,
                    image_size: int = 32) -> list[dict[str, Any]]:
    """Costs of the edge model (first row) and the FedAvg models, with ratios to the edge."""
    edge = model_costs(EDGE_MODEL, in_channels, num_classes, image_size)
    rows = [edge]
    for name in FEDAVG_MODELS:
        row = model_costs(name, in_channels, num_classes, image_size)
        row["params_ratio"] = row["params"] / edge["params"]
        row["flops_ratio"] = row["flops_train"] / edge["flops_train"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit status 1 if a paper lower bound is not met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)
    rows = edge_cost_table(args.in_channels, args.num_classes, args.image_size)
    edge = rows[0]
    print(f"Edge training cost per client, {args.in_channels}x{args.image_size}x{args.image_size} "
          f"inputs, {args.num_classes} classes (FLOPs per sample, torch.utils.flop_counter)\n")
    print("| edge model | method | params | fwd FLOPs | train FLOPs | params vs edge | "
          "train FLOPs vs edge |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        method = "FedGKT" if row is edge else "FedAvg"
        ratios = ("1x", "1x") if row is edge else (f"{row['params_ratio']:.1f}x",
                                                   f"{row['flops_ratio']:.1f}x")
        print(f"| {row['model']} | {method} | {row['params']:,} | {row['flops_forward'] / 1e6:.1f} M "
              f"| {row['flops_train'] / 1e6:.1f} M | {ratios[0]} | {ratios[1]} |")
    servers = [f"{name} {count_params(build_model(name, 16, args.num_classes, args.image_size)):,} params"
               for name in SERVER_MODELS]
    print(f"\nFedGKT server models (trained at the server): {'; '.join(servers)}.")
    f32, f16 = 4 * edge["feature_elements"], 2 * edge["feature_elements"]
    print(f"\nFedGKT upload per training image: {edge['feature_elements']:,} feature values = "
          f"{f32 / 1e3:.1f} kB float32, {f16 / 1e3:.1f} kB float16 (before sparse coding), "
          f"plus {args.num_classes} logits.")
    for row in rows[1:]:
        print(f"FedAvg {row['model']} upload per round: {row['params'] * 4 / 1e6:.2f} MB float32 "
              f"= the features of {row['params'] * 4 / f16:.0f} images at float16.")
    ok = all(r["params_ratio"] >= PAPER_PARAMS_RATIO and r["flops_ratio"] >= PAPER_FLOPS_RATIO
             for r in rows[1:])
    print(f"\nPaper's lower bounds (>= {PAPER_PARAMS_RATIO:.0f}x params, >= {PAPER_FLOPS_RATIO:.0f}x "
          f"FLOPs): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
