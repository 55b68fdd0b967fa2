#!/usr/bin/env bash
# GPU check (issue 16, item 6): ResNet-18 on synthetic CIFAR-shaped data, 8 virtual clients
# sharing one GPU (backend.num_gpus=0.125), 3 rounds of FedAvg on Ray. Prints the seconds of
# every round and the GPU's utilisation over each round, sampled by nvidia-smi every 0.2 s.
#
#   scripts/gpu_check.sh                # on the GPU machine (installs from wheelhouse/ if needed)
#   GPU_CHECK_CPU=1 scripts/gpu_check.sh   # tiny CPU run (2 of 50 clients, 2 rounds): the script end to end
#
# The machine needs torch; Flower, Hydra and Ray are installed from wheelhouse/ (no network,
# see scripts/gpu_wheels.sh) when they are missing. Extra overrides are passed on, e.g.
# `scripts/gpu_check.sh local_epochs=5`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${GPU_CHECK_OUT:-/tmp/fedlean-gpu-check}
rm -rf "$OUT" && mkdir -p "$OUT"
T0=$(date +%s.%N)

if ! python -c "import flwr, hydra, ray, rich" 2>/dev/null; then
  [ -d wheelhouse ] || { echo "gpu_check: flwr/hydra/ray missing and no wheelhouse/ (run scripts/gpu_wheels.sh)"; exit 3; }
  # --no-deps: the folder holds exactly what a Ray simulation needs (see scripts/gpu_wheels.sh).
  pip install -q --no-index --no-deps wheelhouse/*.whl
fi
echo "gpu_check: installs done in $(python -c "print(round($(date +%s.%N)-$T0,1))") s"

if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then
  # 2 of 50 clients a round (100 images each): the same code path, small enough for a CPU.
  ARGS=(num_clients=50 fraction_train=0.04 backend.num_gpus=0 backend.num_cpus=1 backend.total_cpus=2 device=cpu num_rounds=2)
else
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  ARGS=(num_clients=8 fraction_train=1.0 backend.num_gpus=0.125 backend.num_cpus=1 device=cuda num_rounds=3)
  # Utilisation samples with wall-clock stamps, joined with the rounds below.
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
    > "$OUT/gpu.csv" &
  SMI=$!
  trap 'kill $SMI 2>/dev/null || true' EXIT
fi

START=$(date +%s.%N)
python -m simulations.run "hydra.run.dir=$OUT/run" dataset=synthetic_cifar10 model=resnet18 backend=ray \
  fraction_evaluate=0 local_epochs=1 batch_size=64 "${ARGS[@]}" "$@"

python - "$OUT" "$START" <<'PY'
import csv, json, sys
from datetime import datetime
from pathlib import Path

out, start = Path(sys.argv[1]), float(sys.argv[2])
rounds = [json.loads(line) for line in (out / "run" / "rounds.jsonl").read_text().splitlines()]
samples = []
if (out / "gpu.csv").exists():
    for row in csv.reader((out / "gpu.csv").read_text().splitlines()):
        if len(row) >= 3:
            stamp = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((stamp, float(row[1]), float(row[2])))
# rounds.jsonl is rewritten at the end of every round: its mtime is the last round's end.
run_start = (out / "run" / "rounds.jsonl").stat().st_mtime - rounds[-1]["wall_seconds"]
previous = 0.0
print("round  seconds  gpu_util_mean%  gpu_util_busy>=80%  gpu_mem_max_MiB  accuracy")
for record in rounds[1:]:
    begin, end = run_start + previous, run_start + record["wall_seconds"]
    inside = [s for s in samples if begin <= s[0] <= end]
    util = sum(s[1] for s in inside) / len(inside) if inside else float("nan")
    busy = sum(s[1] >= 80 for s in inside) / len(inside) if inside else float("nan")
    mem = max((s[2] for s in inside), default=float("nan"))
    acc = record.get("central_accuracy")
    print(f"{record['round']:5d}  {record['wall_seconds'] - previous:7.2f}  {util:14.1f}  {busy:18.0%}  {mem:15.0f}  {acc}")
    previous = record["wall_seconds"]
PY
echo "gpu_check: done in $(python -c "print(round($(date +%s.%N)-$T0,1))") s (results in $OUT/run)"
