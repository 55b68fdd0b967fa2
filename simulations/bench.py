"""fedlean's cost figures in one run: method overheads, inline vs a plain loop, start-up.

``python -m simulations.bench [--repeats 3] [--ray] [--quick]``

Prints, one after the other (each section is described in its module):

1. CPU per round of every method as a multiple of FedAvg's
   (:func:`simulations.tools.bench.methods_main`: inline, digits, MLP, 10 clients);
2. per-round time of ``backend=inline`` (and ``backend=ray`` with ``--ray``) against a
   plain PyTorch loop over the same partitions, batches sliced from in-memory tensors,
   and the same loop with a per-example ``DataLoader`` (:func:`simulations.tools.bench.main`,
   20 rounds x 5 local epochs);
3. seconds from after the imports to round 0 of the default run
   (:mod:`simulations.tools.start_bench`).

Every figure is a median over ``--repeats`` interleaved repeats, printed with its
spread; ratios are taken within this run, so a noisy machine moves both sides.
``--quick`` shortens every section (fewer rounds, one repeat) to check the command
works; its figures are not for reporting. The memory benchmark of the node state
store takes minutes and gigabytes and runs on its own:
``python -m simulations.tools.state_bench``.
"""

from __future__ import annotations

import argparse
import sys

from simulations.tools import bench, start_bench


def main(argv: list[str] | None = None) -> None:
    """Run the three sections and print their tables."""
    parser = argparse.ArgumentParser(prog="python -m simulations.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per figure (medians)")
    parser.add_argument("--ray", action="store_true", help="also time backend=ray against the plain loop")
    parser.add_argument(
        "--quick", action="store_true", help="short runs, one repeat: checks the command only"
    )
    args = parser.parse_args(argv)
    repeats = ["--repeats", "1" if args.quick else str(args.repeats)]
    rounds = ["--rounds", "3" if args.quick else "6"]

    print("## 1. Method overheads: CPU per round × FedAvg", flush=True)
    bench.methods_main([*rounds, *repeats, *(["--methods", "fedavg", "gwpf"] if args.quick else [])])
    print("\n## 2. backend=inline vs a plain PyTorch loop", flush=True)
    # The way benchmark's own defaults (20 rounds x 5 local epochs) unless --quick.
    short = ["--rounds", "3", "--epochs", "1"] if args.quick else []
    bench.main([*short, *repeats, *([] if args.ray else ["--skip-ray"])])
    print("\n## 3. Start-up: the default run, seconds to round 0", flush=True)
    start_bench.main(repeats)


if __name__ == "__main__":
    main(sys.argv[1:])
