#!/bin/bash
# Instructions per gRPC unary call (callgrind), trees taking turns:
#   bench/results/2026-11-24-2core-session12/callgrind_grpc_ab.sh SECONDS ROUNDS TREE...
# Each round runs session 4's pair_http.py --mtls --grpc --callgrind SECONDS from each TREE (a
# checkout's root): 16 calls in flight for SECONDS, both sidecars under callgrind. $PYTHON is the
# interpreter (default python3). Work files in /tmp/callgrind-grpc-$(basename TREE).
HERE=$(cd "$(dirname "$0")" && pwd)
S=$1; R=$2; shift 2
for _ in $(seq "$R"); do for tree in "$@"; do
  out=$(cd "$tree" && PAIR_HTTP_WORK=/tmp/callgrind-grpc-$(basename "$tree") timeout 900 \
    "${PYTHON:-python3}" "$HERE/../2026-11-23-2core-session4/pair_http.py" --mtls --grpc \
    --callgrind "$S" | grep instructions | awk '{print $1, $5, $7}')
  echo "grpc $(basename "$tree")" $out
done; done
