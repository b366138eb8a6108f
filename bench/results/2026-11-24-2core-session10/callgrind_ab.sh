#!/bin/bash
# Instructions per HTTP/1.1 request (callgrind), trees taking turns:
#   bench/results/2026-11-24-2core-session10/callgrind_ab.sh CONNECTIONS ROUNDS TREE...
# Each TREE is a checkout's root; $PYTHON is the interpreter (default python3).
HERE=$(cd "$(dirname "$0")" && pwd)
C=$1; R=$2; shift 2
for _ in $(seq "$R"); do for tree in "$@"; do
  out=$(cd "$tree" && PAIR_HTTP_WORK=/tmp/callgrind-ab-$(basename "$tree") timeout 900 \
    "${PYTHON:-python3}" "$HERE/../2026-11-23-2core-session4/pair_http.py" --mtls \
    --callgrind 2000 --profile-connections "$C" | grep instructions | awk '{print $1, $5}')
  echo "c=$C $(basename "$tree")" $out
done; done
