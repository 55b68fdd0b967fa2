#!/usr/bin/env bash
# SuperNode authentication keys (EC P-384, OpenSSH format) with ssh-keygen (README.md (section Deploy on devices)).
#
#   scripts/generate_supernode_keys.sh [OUT_DIR] NAME [NAME ...]
#
# For each NAME: OUT_DIR/NAME (private: stays on that device, passed to
# flower-supernode --auth-supernode-private-key) and OUT_DIR/NAME.pub (registered on
# the SuperLink with `flwr supernode register OUT_DIR/NAME.pub <connection>`).
# Without ssh-keygen: python -m simulations.deploy keys --out OUT_DIR NAME ...
set -euo pipefail

OUT="${1:-keys}"
shift || true
[[ $# -gt 0 ]] || { echo "usage: $0 [OUT_DIR] NAME [NAME ...]" >&2; exit 2; }
command -v ssh-keygen >/dev/null || {
  echo "ssh-keygen not found; use: python -m simulations.deploy keys --out $OUT $*" >&2; exit 1; }
mkdir -p "$OUT"
for name in "$@"; do
  rm -f "$OUT/$name" "$OUT/$name.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "" -f "$OUT/$name"
  echo "$OUT/$name  $OUT/$name.pub"
done
