#!/bin/bash
# Bytecodes per gRPC unary call through an mTLS pair, per function, for sidecars A and B:
#   bench/results/2026-11-24-2core-session10/grpc_ops.sh TREE [TOP]
# Runs session 4's pair_http.py --grpc (16 calls in flight for 4 s) from TREE under session 9's
# opwrap.py; the calls counted are RequestAccounting.__init__'s (one per call). $PYTHON is the
# interpreter (default python3). Work files in /tmp/grpc-ops-$(basename TREE).
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$1" || exit 1
PY=${PYTHON:-python3}; W=/tmp/grpc-ops-$(basename "$1"); rm -rf "$W"
PAIR_HTTP_WORK=$W timeout 600 "$PY" "$HERE/../2026-11-23-2core-session4/pair_http.py" --mtls \
  --grpc --profile 4 --opcodes > /dev/null
for role in a b; do "$PY" - "$W/$role.ops" "${2:-15}" "$role" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
calls = next(r[4] for r in rows if r[2] == "RequestAccounting.__init__")
print(sys.argv[3], "calls", calls, "bytecodes per call %.0f" % (sum(r[3] for r in rows) / calls))
for file, line, name, count, n in sorted(rows, key=lambda r: -r[3])[: int(sys.argv[2])]:
    short = file.split("/sidecar/")[-1] if "/sidecar/" in file else file.split("/")[-1]
    print("%7.1f %5.2f  %s:%d %s" % (count / calls, n / calls, short, line, name))
PY
done
