#!/usr/bin/env bash
# Self-signed CA + SuperLink TLS certificate with openssl (README.md (section Deploy on devices)).
#
#   scripts/generate_certs.sh [OUT_DIR] [HOST ...]
#
# OUT_DIR (default: certs) receives ca.crt, ca.key, server.pem, server.key.
# HOSTs are the names/IPs SuperNodes and `flwr` use to reach the SuperLink, e.g.
#   scripts/generate_certs.sh certs superlink.lan 192.168.1.10
# localhost and 127.0.0.1 are always included (the SuperLink's own SuperExec uses them).
# Give ca.crt to every SuperNode (--root-certificates) and CLI user; keep ca.key and
# server.key secret. Without openssl: python -m simulations.deploy certs --out DIR --host H.
set -euo pipefail

OUT="${1:-certs}"
shift || true
HOSTS=("$@" localhost 127.0.0.1)
DAYS="${DAYS:-365}"

command -v openssl >/dev/null || {
  echo "openssl not found; use: python -m simulations.deploy certs --out $OUT" >&2; exit 1; }
mkdir -p "$OUT"

san=""
dns=0; ip=0
for host in "${HOSTS[@]}"; do
  if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
    ip=$((ip + 1)); san+="IP.${ip} = ${host}"$'\n'
  else
    dns=$((dns + 1)); san+="DNS.${dns} = ${host}"$'\n'
  fi
done

cat > "$OUT/server.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ${HOSTS[0]}
[ext]
basicConstraints = critical, CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = @alt
[alt]
${san}
EOF

# CA (EC P-384)
openssl ecparam -name secp384r1 -genkey -noout -out "$OUT/ca.key"
openssl req -x509 -new -key "$OUT/ca.key" -sha256 -days "$DAYS" \
  -subj "/CN=fedlean CA" -out "$OUT/ca.crt"

# SuperLink key + certificate signed by the CA
openssl ecparam -name secp384r1 -genkey -noout -out "$OUT/server.key"
openssl req -new -key "$OUT/server.key" -config "$OUT/server.cnf" -out "$OUT/server.csr"
openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" \
  -CAcreateserial -days "$DAYS" -sha256 -extfile "$OUT/server.cnf" -extensions ext \
  -out "$OUT/server.pem"

chmod 600 "$OUT/ca.key" "$OUT/server.key"
rm -f "$OUT/server.csr" "$OUT/ca.srl"
openssl verify -CAfile "$OUT/ca.crt" "$OUT/server.pem"
echo "CA: $OUT/ca.crt   SuperLink: $OUT/server.pem $OUT/server.key"
