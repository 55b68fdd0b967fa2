"""The comparison report on hand-written results: statistics, ratios, warnings, errors, README."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from simulations.tools import report as rep

SETUP = {
    "dataset": "digits",
    "model": "mlp",
    "backend": "inline",
    "partition": "dirichlet",
    "num_clients": 10,
    "model_params": 85_002,
    "model_flops_train": 474_112,
}


def fake_run(
    run_dir: Path,
    method: str,
    seed: int,
    accs: list[float],
    mb_up: float,
    mb_down: float,
    label: str | None = None,
    sweep: tuple[str, object] | None = None,
    **summary,
) -> Path:
    """A run directory with rounds.jsonl (round 0..n), summary.json and, for suites, job.json."""
    run_dir.mkdir(parents=True)
    n = len(accs) - 1
    records = [
        {
            "round": r,
            "central_accuracy": a,
            "cum_bytes_up": int(mb_up * 1e6 * r / n),
            "cum_bytes_down": int(mb_down * 1e6 * r / n),
        }
        for r, a in enumerate(accs)
    ]
    (run_dir / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    full = {
        **SETUP,
        "method": method,
        "seed": seed,
        "rounds": n,
        "final_accuracy": accs[-1],
        "total_bytes_up": int(mb_up * 1e6),
        "total_bytes_down": int(mb_down * 1e6),
        "total_bytes": int(mb_up * 1e6) + int(mb_down * 1e6),
        **summary,
    }
    (run_dir / "summary.json").write_text(json.dumps(full))
    if label is not None:
        job = {
            "name": f"{run_dir.parent.name}/{run_dir.name}",
            "label": label,
            "method": method,
            "seed": seed,
            "sweep_key": sweep[0] if sweep else None,
            "sweep_value": sweep[1] if sweep else None,
        }
        (run_dir / "job.json").write_text(json.dumps(job))
    return run_dir


def fake_suite(root: Path, name: str, **spec) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "suite.json").write_text(json.dumps({"name": name, "methods": {}, **spec}))
    return root


def row_of(markdown: str, label: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in\n{markdown}")


def column(markdown: str, name: str) -> int:
    first = next(line for line in markdown.splitlines() if line.startswith("| method |"))
    header = [c.strip() for c in first.strip().strip("|").split("|")]
    return header.index(name)


@pytest.fixture
def suite_dir(tmp_path):
    """FedAvg and a method over 3 seeds, one method with other rounds, one failed job."""
    root = fake_suite(tmp_path / "s", "demo", omitted={"fedgkt": "too slow here"})
    for seed, acc, best in ((0, 0.90, 0.91), (1, 0.92, 0.93), (2, 0.94, 0.96)):
        fake_run(
            root / "fedavg" / f"seed{seed}", "fedavg", seed, [0.1, best, acc], 50.0, 50.0, label="fedavg"
        )
    for seed, acc, mb in ((0, 0.91, 15.0), (1, 0.93, 20.0), (2, 0.95, 25.0)):
        fake_run(
            root / "fs" / f"seed{seed}",
            "fedsparsify_global",
            seed,
            [0.1, 0.5, acc],
            mb,
            mb + 10,
            label="fs",
            final_sparsity=0.9,
            final_nonzero_params=8_000 + seed,
        )
    for seed in (0, 1):  # 5 rounds instead of 2: not comparable with FedAvg
        fake_run(
            root / "long" / f"seed{seed}",
            "gwpf",
            seed,
            [0.1, 0.6, 0.7, 0.8, 0.85, 0.97],
            5.0,
            5.0,
            label="long",
        )
    (root / "status.json").write_text(
        json.dumps(
            {"bad/seed0": {"status": "failed", "error": "invalid config: method.s_f=1.5: must be in [0, 1)"}}
        )
    )
    return root


def test_means_stds_ratios_and_noise_match_hand_computed_values(suite_dir):
    text = rep.report([suite_dir])
    avg, fs, long = row_of(text, "fedavg"), row_of(text, "fs"), row_of(text, "long")
    col = {
        name: column(text, name)
        for name in (
            "final acc",
            "best acc",
            "MB up",
            "MB down",
            "MB total",
            "× FedAvg MB",
            "Δ acc vs FedAvg",
            "nonzero params",
            "density / frozen",
            "rounds",
            "seeds",
            "Params",
        )
    }
    # fedavg final 0.90/0.92/0.94: mean 0.92, sample std 0.02; best 0.91/0.93/0.96: 0.9333 ± 0.0252
    assert avg[col["final acc"]] == "0.9200 ± 0.0200"
    assert avg[col["best acc"]] == "0.9333 ± 0.0252"
    assert avg[col["MB total"]] == "100.00 ± 0.00" and avg[col["× FedAvg MB"]] == "1.000"
    assert avg[col["Δ acc vs FedAvg"]] == "—" and avg[col["seeds"]] == "3" and avg[col["Params"]] == "85,002"
    # fs: up 15/20/25 -> 20 ± 5, down 25/30/35 -> 30 ± 5, total 50 ± 10, ratio 50/100
    assert fs[col["MB up"]] == "20.00 ± 5.00" and fs[col["MB down"]] == "30.00 ± 5.00"
    assert fs[col["MB total"]] == "50.00 ± 10.00" and fs[col["× FedAvg MB"]] == "0.500"
    # +1 point, smaller than both stds (2 points): within noise
    assert fs[col["Δ acc vs FedAvg"]] == "+1.00 pt (within noise)"
    assert fs[col["nonzero params"]] == "8,001" and fs[col["density / frozen"]] == "density 0.100"
    assert fs[col["rounds"]] == "2"
    # other rounds: never compared with the 2-round FedAvg
    assert long[col["× FedAvg MB"]] == "n/a" and long[col["Δ acc vs FedAvg"]] == "n/a"
    assert long[col["rounds"]] == "5" and long[col["seeds"]] == "2"
    assert "**warning:** the runs differ in rounds (2, 5)" in text
    assert "no comparable FedAvg row for: long" in text
    assert "**failed:** bad/seed0: invalid config: method.s_f=1.5" in text
    assert "**not run:** fedgkt: too slow here" in text
    with (suite_dir / "report.csv").open() as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert float(rows["fs"]["mb_total_mean"]) == pytest.approx(50.0)
    assert float(rows["fs"]["mb_total_std"]) == pytest.approx(10.0)
    assert float(rows["fs"]["ratio_total_mb_vs_fedavg"]) == pytest.approx(0.5)
    assert float(rows["fedavg"]["final_acc_std"]) == pytest.approx(0.02)
    assert rows["long"]["ratio_total_mb_vs_fedavg"] == ""
    for name in ("accuracy_vs_mb.png", "accuracy_vs_round.png", "report.md"):
        assert (suite_dir / name).stat().st_size > 0


def test_difference_larger_than_the_spread_is_not_noise(tmp_path):
    root = fake_suite(tmp_path / "s", "gap")
    for seed, acc in enumerate((0.90, 0.91)):
        fake_run(root / f"a{seed}", "fedavg", seed, [0.1, acc], 1.0, 1.0, label="fedavg")
        fake_run(root / f"b{seed}", "fedprox", seed, [0.1, acc + 0.05], 1.0, 1.0, label="fedprox")
    text = rep.report([root])
    assert row_of(text, "fedprox")[column(text, "Δ acc vs FedAvg")] == "+5.00 pt"


def test_ratios_are_never_taken_across_suites_or_setups(tmp_path):
    a = fake_suite(tmp_path / "a", "suite-a")
    b = fake_suite(tmp_path / "b", "suite-b")
    fake_run(a / "fedavg" / "seed0", "fedavg", 0, [0.1, 0.9], 10.0, 10.0, label="fedavg")
    fake_run(b / "gwpf" / "seed0", "gwpf", 0, [0.1, 0.9], 5.0, 5.0, label="gwpf")
    # same suite, same method label, but another backend: its own row, no ratio
    fake_run(
        b / "fedavg_ray" / "seed0", "fedavg", 0, [0.1, 0.9], 10.0, 10.0, label="fedavg_ray", backend="ray"
    )
    text = rep.report([a, b], out=tmp_path / "out")
    suite_b = text.split("## suite-b")[1]
    assert row_of(suite_b, "gwpf")[column(suite_b, "× FedAvg MB")] == "n/a"
    assert "the runs differ in backend (inline, ray)" in suite_b
    assert (tmp_path / "out" / "suite-a_accuracy_vs_mb.png").exists()
    assert (tmp_path / "out" / "suite-b_accuracy_vs_round.png").exists()


def test_swept_values_compare_with_fedavg_of_the_same_value_only(tmp_path):
    root = fake_suite(tmp_path / "s", "sweep")
    for value, mb in ((1, 10.0), (2, 20.0)):
        fake_run(
            root / f"fedavg{value}",
            "fedavg",
            0,
            [0.1, 0.9],
            mb,
            mb,
            label="fedavg",
            sweep=("local_epochs", value),
        )
    fake_run(root / "x1", "gwpf", 0, [0.1, 0.9], 5.0, 5.0, label="gwpf", sweep=("local_epochs", 1))
    fake_run(root / "x2", "gwpf", 0, [0.1, 0.9], 5.0, 5.0, label="gwpf", sweep=("local_epochs", 2))
    fake_run(root / "x3", "gwpf", 0, [0.1, 0.9], 5.0, 5.0, label="gwpf", sweep=("local_epochs", 3))
    rows, comps = rep.table_rows(rep.load_tables([root])[0])
    ratios = {(r.label, r.sweep_value): comps[id(r)].ratio for r in rows}
    assert ratios[("gwpf", 1)] == pytest.approx(0.5)
    assert ratios[("gwpf", 2)] == pytest.approx(0.25)
    assert ratios[("gwpf", 3)] is None  # FedAvg has no run at value 3: no ratio


def test_an_unswept_fedavg_serves_every_swept_value(tmp_path):
    root = fake_suite(tmp_path / "s", "sweep")
    fake_run(root / "fedavg", "fedavg", 0, [0.1, 0.9], 10.0, 10.0, label="fedavg")
    for value in (0.9, 0.95):
        fake_run(
            root / f"z{value}",
            "zerofl",
            0,
            [0.1, 0.9],
            2.0,
            10.0,
            label="zerofl",
            sweep=("method.sparsity", value),
            sparsity=value,
            uplink_density_target=1 - value,
        )
    text = rep.report([root])
    assert column(text, "method.sparsity") == 1
    ratio = column(text, "× FedAvg MB")
    assert [ln.split("|")[ratio + 1].strip() for ln in text.splitlines() if ln.startswith("| zerofl")] == [
        "0.600",
        "0.600",
    ]
    assert "uplink density 0.050" in text


def test_suite_may_allow_ratios_across_models(tmp_path):
    root = fake_suite(tmp_path / "s", "gkt", comparable_across=["model"])
    fake_run(root / "fedavg", "fedavg", 0, [0.1, 0.9], 10.0, 10.0, label="fedavg", model="resnet56")
    fake_run(root / "fedgkt", "fedgkt", 0, [0.1, 0.9], 8.0, 4.0, label="fedgkt", model="resnet8_56")
    text = rep.report([root])
    assert row_of(text, "fedgkt")[column(text, "× FedAvg MB")] == "0.600"
    assert "differ in model (resnet56, resnet8_56) (allowed by the suite's comparable_across)" in text


def test_loose_run_dirs_keep_working_and_repeated_seeds_are_not_averaged(tmp_path):
    fake_run(tmp_path / "m" / "0_fedavg", "fedavg", 0, [0.1, 0.90], 10.0, 10.0)
    fake_run(tmp_path / "m" / "1_fedavg", "fedavg", 0, [0.1, 0.80], 10.0, 10.0)
    fake_run(tmp_path / "m" / "2_fedprox", "fedprox", 0, [0.1, 0.85], 10.0, 10.0)
    text = rep.main([str(tmp_path / "m")])
    assert "## runs" in text and "| fedprox |" in text
    assert row_of(text, "fedavg (0_fedavg)")[column(text, "final acc")] == "0.9000"
    assert row_of(text, "fedavg (1_fedavg)")[column(text, "final acc")] == "0.8000"
    assert row_of(text, "fedprox")[column(text, "× FedAvg MB")] == "n/a"  # two FedAvg runs: ambiguous


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/missing"], "fedlean report: /missing: no such directory"),
    ],
)
def test_errors_are_one_line_with_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        rep.main(args)
    assert exc.value.code == 2
    assert capsys.readouterr().err == message + "\n"


def test_dir_without_results_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        rep.main([str(tmp_path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"fedlean report: {tmp_path}: no summary.json below it\n"


def test_readme_headline_is_replaced_between_the_markers(suite_dir, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nintro\n{rep.START}\nold table\n{rep.END}\n\nrest\n")
    rep.main([str(suite_dir), "--readme", str(readme)])
    content = readme.read_text()
    assert content.startswith("# title\n\nintro\n" + rep.START + "\n| method |")
    assert "old table" not in content and content.endswith(rep.END + "\n\nrest\n")
    assert "![demo](docs/img/demo.png)" in content
    assert (tmp_path / "docs" / "img" / "demo.png").stat().st_size > 0
    rep.main([str(suite_dir), "--readme", str(readme)])  # again: same content, markers kept
    assert readme.read_text() == content

    readme.write_text("# no markers\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        rep.main([str(suite_dir), "--readme", str(readme)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedlean report: {readme}: markers") and err.count("\n") == 1
    assert readme.read_text() == "# no markers\n"


def test_y_range_shows_the_differences():
    points = [[0.90, 0.93, 0.95], [0.94, 0.96, 0.98]]
    low, high = rep.y_range([np.array(p) for p in points], [np.array([0.98])])
    # below the 5th percentile of the points, far above 0 and 0.1; the top of the band shown
    assert 0.85 < low < np.percentile(np.concatenate(points), 5) and 0.98 < high <= 1.0


def test_sixteen_curves_have_distinct_colours_and_markers(tmp_path):
    assert len({rep.style(i)[0] for i in range(16)}) == 16
    assert len({rep.style(i)[1] for i in range(15)}) == 15
    series = {
        f"run{i}": [
            [
                {"round": r, "central_accuracy": 0.9 + 0.001 * i * r, "cum_bytes_up": r, "cum_bytes_down": r}
                for r in range(4)
            ]
        ]
        for i in range(16)
    }
    rep.plot_accuracy(series, tmp_path / "p.png", title="sixteen")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_rows_follow_the_suite_order(tmp_path):
    root = fake_suite(tmp_path / "s", "order", jobs=["zz/seed0", "fedavg/seed0", "aa/seed0"])
    for label in ("aa", "fedavg", "zz"):
        fake_run(
            root / label / "seed0",
            "fedavg" if label == "fedavg" else "gwpf",
            0,
            [0.1, 0.9],
            1.0,
            1.0,
            label=label,
        )
    labels = [r.label for r in rep.table_rows(rep.load_tables([root])[0])[0]]
    assert labels == ["zz", "fedavg", "aa"]
