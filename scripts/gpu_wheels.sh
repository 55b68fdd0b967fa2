#!/usr/bin/env bash
# Fill wheelhouse/ (git-ignored) with what scripts/gpu_check.sh installs on a machine that has
# torch but not Flower, Hydra or Ray, and no network. Run it where PyPI is reachable, for the
# target machine's Python (PYVER, default: this one's), then carry wheelhouse/ along.
# To fit the 64 MiB a device run may carry, what a Ray simulation never loads is left out:
# Ray's Java worker (ray/jars, 30 MiB), dashboard front end and libraries (rllib, data, serve,
# tune, train, llm), Flower's uv (used by `flwr build`/`flwr run` only), uvicorn's optional
# accelerators, greenlet and prompt_toolkit (62.3 MiB left for Python 3.11). gpu_check.sh
# therefore installs the folder with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-$(python -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')}
OUT=${WHEELHOUSE:-wheelhouse}
mkdir -p "$OUT"
pip download -q -d "$OUT" --only-binary=:all: --python-version "$PYVER" --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  "flwr[simulation]>=1.42,<1.43" "rich>=13" "pyyaml>=5.1"
# Hydra's parser runtime ships as an sdist only: build pure-Python wheels of Hydra here.
pip wheel -q --no-deps -w "$OUT" "hydra-core>=1.3" "omegaconf>=2.2,<2.4" "antlr4-python3-runtime==4.9.*"
# Already on the GPU machine with torch (and much larger than everything else together).
rm -f "$OUT"/numpy-*.whl "$OUT"/torch-*.whl "$OUT"/nvidia_*.whl "$OUT"/triton-*.whl
rm -f "$OUT"/uv-*.whl "$OUT"/uvloop-*.whl "$OUT"/httptools-*.whl "$OUT"/watchfiles-*.whl "$OUT"/websockets-*.whl
# Not imported by a Ray simulation either (SQLAlchemy's asyncio extension, the interactive CLI).
rm -f "$OUT"/greenlet-*.whl "$OUT"/prompt_toolkit-*.whl "$OUT"/wcwidth-*.whl
python - "$OUT" <<'PY'
import base64, hashlib, sys, zipfile
from pathlib import Path

DROP = tuple(f"ray/{d}/" for d in ("jars", "dashboard/client", "rllib", "data", "serve", "tune", "train", "llm"))
for wheel in Path(sys.argv[1]).glob("ray-*.whl"):
    with zipfile.ZipFile(wheel) as src:
        if not any(i.filename.startswith(DROP) for i in src.infolist()):
            continue
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if info.filename.startswith(DROP):
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    drop = tuple(d.encode() for d in DROP)
                    data = b"".join(line + b"\n" for line in data.splitlines() if not line.startswith(drop))
                dst.writestr(info, data)
    slim.replace(wheel)
    print(f"{wheel.name}: dropped {', '.join(DROP)}")
PY
du -sh --apparent-size "$OUT"
