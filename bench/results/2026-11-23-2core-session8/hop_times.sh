#!/bin/bash
# Read-to-write time inside each process of the pair (session 8), from `perf trace`:
#   bench/results/2026-11-23-2core-session8/hop_times.sh TREE [RATE] [REQUESTS]
# brings up session 4's pair (pair_http.py --mtls --hold) from TREE, paces `h2load --h1 -c 1
# --rps RATE` through it under `perf trace` (read, write, epoll_pwait of every process), and
# prints, per process and socket, the median time from a read to the process's next write:
# A's request path (app socket -> mesh), B's (mesh -> app), B's response path, A's response
# path, and the app's own. perf trace adds its own cost to each system call: compare trees run
# one after the other, not these figures with the harness's.
TREE=$1; RATE=${2:-200}; N=${3:-400}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
cd "$TREE" || exit 1
WORK=$(mktemp -d); HOLD=$WORK/hold.txt
( PAIR_HTTP_WORK=$WORK/pair timeout 200 $PY bench/results/2026-11-23-2core-session4/pair_http.py --mtls --hold 100 > $HOLD 2>&1 & )
for i in $(seq 80); do grep -q outbound= $HOLD 2>/dev/null && break; sleep 0.5; done
PORT=$(grep -o 'outbound=[0-9]*' $HOLD | cut -d= -f2)
A=$(grep -o ' a=[0-9]*' $HOLD | cut -d= -f2); B=$(grep -o ' b=[0-9]*' $HOLD | cut -d= -f2)
PAIR=$(ps -o ppid= -p "$A" | tr -d ' '); APP=$(pgrep -P "$PAIR" -f "bench.tools http-server")
h2load --h1 -c 4 -n 2000 http://127.0.0.1:$PORT/ > /dev/null  # warm-up
timeout $((N / RATE + 6)) perf trace -a -e 'read,write,epoll_pwait' -o $WORK/trace.txt &
sleep 2
h2load --h1 -c 1 -n $N --rps $RATE http://127.0.0.1:$PORT/ | grep -E "time for request"
wait
kill "$A" "$B" "$APP" "$PAIR" 2>/dev/null
$PY "$HERE/hop_times.py" $WORK/trace.txt A=$A B=$B APP=$APP
rm -rf "$WORK"
