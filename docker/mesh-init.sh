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
for src in /config/mesh/*.yaml; do
    dp=/mesh/$(basename "$src")
    pysidecar validate "$dp"
    pysidecar certs issue --dataplane "$dp" --dir /mesh/certs >/dev/null
done
# tls-echo speaks TLS itself (passed through by the sidecars): its own certificate, not the mesh's.
mkdir -p /mesh/tls-echo
if [ ! -f /mesh/tls-echo/server.crt ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=tls-echo \
        -addext subjectAltName=DNS:tls-echo \
        -keyout /mesh/tls-echo/server.key -out /mesh/tls-echo/server.crt 2>/dev/null
fi
ls /mesh /mesh/certs
echo "mesh-init: done"
