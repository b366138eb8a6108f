#!/bin/bash
# Each sidecar's CPU per request (µs; /proc/PID/schedstat run time, exact, where /proc/PID/stat
# counts 10 ms ticks) around one h2load run through a held pair:
#   python bench/results/2026-11-23-2core-session4/pair_http.py --mtls --hold 900 > HOLD &
#   bench/results/2026-11-25-2core-session27/cpu_per_request.sh HOLD N H2LOAD-ARGS...
# e.g. `... HOLD 10000 -c 1` (one request at a time), `... HOLD 30000 -c 16` (saturation),
# `... HOLD 10000 -c 10 --rps 100 -r 1 --rate-period 1ms` (http1-paced's load).
HOLD=$1; N=$2; shift 2
P=$(grep -o 'outbound=[0-9]*' "$HOLD" | cut -d= -f2)
A=$(grep -o ' a=[0-9]*' "$HOLD" | cut -d= -f2); B=$(grep -o ' b=[0-9]*' "$HOLD" | cut -d= -f2)
run(){ awk '{print $1}' /proc/$1/schedstat; }
a0=$(run $A); b0=$(run $B)
h2load --h1 -n "$N" "$@" "http://127.0.0.1:$P/" | grep -E "finished in|time for request"
a1=$(run $A); b1=$(run $B)
echo "A $(( (a1 - a0) / N / 1000 )) us/req  B $(( (b1 - b0) / N / 1000 )) us/req"
