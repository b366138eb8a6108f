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
for dp in /mesh/*.yaml; do
    pysidecar validate "$dp"
    pysidecar certs issue --dataplane "$dp" --dir /mesh/certs >/dev/null
done
ls /mesh /mesh/certs
echo "mesh-init: done"
