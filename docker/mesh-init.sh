#!/bin/sh
# One-shot: fill the shared mesh volume (/mesh) with the Dataplane files (from /config/mesh), make
# the mesh CA once (kept across restarts in the volume) and issue each Dataplane's workload
# certificate into /mesh/certs. Sidecars start only after this exits 0.
set -eu
MESH_NAME=${MESH_NAME:-default}
mkdir -p /mesh/certs
cp /config/mesh/*.yaml /mesh/
if [ ! -f /mesh/certs/ca.crt ]; then
    pysidecar certs init --mesh "$MESH_NAME" --dir /mesh/certs
fi
# The Dataplanes only: the sidecars also keep <name>.health.yaml documents in /mesh.
set --
for src in /config/mesh/*.yaml; do
    set -- "$@" "/mesh/$(basename "$src")"
done
pysidecar validate "$@"
# Every workload certificate from one process: a `pysidecar` start costs about a second of CPU,
# and this one-shot holds up every sidecar.
python3 - "$@" >/dev/null <<'EOF'
import sys

from sidecar.cli import main

for dataplane in sys.argv[1:]:
    if main(["certs", "issue", "--dataplane", dataplane, "--dir", "/mesh/certs"]) != 0:
        sys.exit(f"mesh-init: certs issue failed for {dataplane}")
EOF
# tls-echo speaks TLS itself (passed through by the sidecars): its own certificate, not the mesh's.
mkdir -p /mesh/tls-echo
if [ ! -f /mesh/tls-echo/server.crt ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=tls-echo \
        -addext subjectAltName=DNS:tls-echo \
        -keyout /mesh/tls-echo/server.key -out /mesh/tls-echo/server.crt 2>/dev/null
fi
ls /mesh /mesh/certs
echo "mesh-init: done"
