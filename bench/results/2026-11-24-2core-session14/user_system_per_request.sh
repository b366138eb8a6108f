#!/bin/bash
# Each sidecar's user and system CPU per request (µs, from /proc/PID/stat utime and stime: 10 ms
# ticks, so use ≥ 10,000 requests) around one h2load run through a held pair:
#   python bench/results/2026-11-23-2core-session4/pair_http.py --mtls --hold 600 > HOLD &
#   bench/results/2026-11-24-2core-session14/user_system_per_request.sh HOLD N H2LOAD-ARGS...
# e.g. `... HOLD 200000 -c 16` (saturation, the http1 scenario) or `... HOLD 10000 -c 10 --rps 100
# -r 1 --rate-period 1ms` (http1-paced's load).
HOLD=$1; N=$2; shift 2
P=$(grep -o 'outbound=[0-9]*' "$HOLD" | cut -d= -f2)
A=$(grep -o ' a=[0-9]*' "$HOLD" | cut -d= -f2); B=$(grep -o ' b=[0-9]*' "$HOLD" | cut -d= -f2)
st(){ awk '{print $14, $15}' /proc/$1/stat; }
read au0 as0 < <(st $A); read bu0 bs0 < <(st $B)
out=$(h2load --h1 -n "$N" "$@" "http://127.0.0.1:$P/")
read au1 as1 < <(st $A); read bu1 bs1 < <(st $B)
echo "$out" | grep -E "finished in|time for request"
python3 - <<PY
N=$N
for n,u0,u1,s0,s1 in (("A",$au0,$au1,$as0,$as1),("B",$bu0,$bu1,$bs0,$bs1)):
    print(n, "user %.1f us/req  sys %.1f us/req" % ((u1-u0)*1e4/N, (s1-s0)*1e4/N))
PY
