#!/bin/bash
# Bytecodes per HTTP/1.1 request through an mTLS pair, per function, for sidecars A and B.
#   bench/results/2026-11-23-2core-session9/ops.sh TREE [REQUESTS] [TOP]
# Runs from TREE (a checkout's root); $PYTHON is the interpreter (default python3), $C h2load's
# connections (4). Work files in /tmp/ops-$(basename TREE).
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$1" || exit 1
N=${2:-500}; TOP=${3:-40}; PY=${PYTHON:-python3}; W=/tmp/ops-$(basename "$1"); rm -rf "$W"
PAIR_HTTP_WRAP=$HERE/opwrap.py PAIR_HTTP_WORK=$W timeout 600 "$PY" \
  "$HERE/../2026-11-23-2core-session4/pair_http.py" --mtls --profile "$N" \
  --profile-connections "${C:-4}" --opcodes
for role in a b; do "$PY" - "$W/$role.ops" "$N" "$role" "$TOP" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1])); n = int(sys.argv[2])
print(sys.argv[3], "bytecodes per request %.0f" % (sum(r[3] for r in rows) / n))
for file, line, name, count, calls in sorted(rows, key=lambda r: -r[3])[: int(sys.argv[4])]:
    short = file.split("/sidecar/")[-1] if "/sidecar/" in file else file.split("/")[-1]
    print("%7.1f %5.2f  %s:%d %s" % (count / n, calls / n, short, line, name))
PY
done
