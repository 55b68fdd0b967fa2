"""``python -m simulations.bench --quick``: the three sections run and print their figures."""

from __future__ import annotations

import re

from simulations import bench


def test_combined_bench_prints_overheads_inline_ratio_and_start_up(capsys):
    bench.main(["--quick"])
    out = capsys.readouterr().out
    sections = re.split(r"^## \d\. ", out, flags=re.M)[1:]
    assert [s.splitlines()[0] for s in sections] == [
        "Method overheads: CPU per round × FedAvg",
        "backend=inline vs a plain PyTorch loop",
        "Start-up: the default run, seconds to round 0",
    ]
    overheads = dict(re.findall(r"^\| (\w+) \| [\d.]+ \| ([\d.]+) \|", sections[0], flags=re.M))
    assert overheads["fedavg"] == "1.00" and float(overheads["gwpf"]) > 0
    floor = re.search(r"^\| plain loop, sliced tensors \|.*\| 1\.00 \| 1\.00 \|", sections[1], flags=re.M)
    inline = re.search(
        r"^\| backend=inline \| [\d.]+ \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|", sections[1], flags=re.M
    )
    assert floor and inline and float(inline.group(1)) > 0
    # One tree row: process, imports, round0, round0_cpu, round1 as "median (min-max)", then cold.
    row = [line for line in sections[2].splitlines() if line.split() and line.split()[0].startswith("/")]
    assert len(row) == 1 and len(re.findall(r"[\d.]+ \([\d.]+-[\d.]+\)", row[0])) == 5
