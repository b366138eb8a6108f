#!/bin/bash
# CPU µs per request of sidecars A and B (task-clock): $1 = tree, $2 = h2load -c, $3 = requests, $4 = reps
cd $1 || exit 1
H=/tmp/hold-$$.txt; rm -f $H
( timeout 300 ${PYTHON:-python3} bench/results/2026-11-23-2core-session4/pair_http.py --mtls --hold 250 > $H 2>&1 & )
for i in $(seq 80); do grep -q outbound= $H 2>/dev/null && break; sleep 0.5; done
P=$(grep -o 'outbound=[0-9]*' $H | cut -d= -f2); A=$(grep -o ' a=[0-9]*' $H | cut -d= -f2); B=$(grep -o ' b=[0-9]*' $H | cut -d= -f2)
h2load --h1 -c $2 -n 3000 http://127.0.0.1:$P/ > /dev/null
for rep in $(seq $4); do
perf stat -e task-clock -p $A -o /tmp/pa-$$.txt 2>/dev/null & PA=$!
perf stat -e task-clock -p $B -o /tmp/pb-$$.txt 2>/dev/null & PB=$!
sleep 0.3
rps=$(h2load --h1 -c $2 -n $3 http://127.0.0.1:$P/ | grep "^finished" | awk '{print $4}')
kill -INT $PA $PB; wait $PA $PB 2>/dev/null
ta=$(grep "task-clock" /tmp/pa-$$.txt | awk '{gsub(",","",$1); print $1}'); tb=$(grep "task-clock" /tmp/pb-$$.txt | awk '{gsub(",","",$1); print $1}')
python3 -c "print('$1 c=$2 rps=$rps', 'A', round($ta*1000/$3,1), 'B', round($tb*1000/$3,1), 'us/req')"
done
pkill -f "pair_http.py --mtls --hold"
