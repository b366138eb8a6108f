#!/bin/bash
# Each sidecar's run time and run-queue wait per request, from /proc/PID/schedstat (nanoseconds,
# exact: not the 10 ms ticks of /proc/PID/stat), around one h2load run through a held pair:
#   python bench/results/2026-11-23-2core-session4/pair_http.py --mtls --hold 300 > HOLD &
#   bench/results/2026-11-24-2core-session13/schedstat_per_request.sh HOLD N H2LOAD-ARGS...
# e.g. `... HOLD 5000 -c 1` (one at a time) or `... HOLD 5000 -c 10 --rps 100 -r 1
# --rate-period 1ms` (the harness's http1-paced load). Prints h2load's request times and, per
# request, each sidecar's run time, its wait on a run queue, and its time slices (wake-ups).
HOLD=$1; N=$2; shift 2
P=$(grep -o 'outbound=[0-9]*' "$HOLD" | cut -d= -f2)
A=$(grep -o ' a=[0-9]*' "$HOLD" | cut -d= -f2); B=$(grep -o ' b=[0-9]*' "$HOLD" | cut -d= -f2)
read -r a0 ad0 as0 < /proc/"$A"/schedstat; read -r b0 bd0 bs0 < /proc/"$B"/schedstat
out=$(h2load --h1 -n "$N" "$@" "http://127.0.0.1:$P/")
read -r a1 ad1 as1 < /proc/"$A"/schedstat; read -r b1 bd1 bs1 < /proc/"$B"/schedstat
echo "$out" | grep -E "time for request"
echo "run a $(( (a1-a0)/N/1000 )) b $(( (b1-b0)/N/1000 )) us/req;" \
  "runq-wait a $(( (ad1-ad0)/N/1000 )) b $(( (bd1-bd0)/N/1000 )) us/req;" \
  "slices a $(( (as1-as0)*100/N ))% b $(( (bs1-bs0)*100/N ))%"
