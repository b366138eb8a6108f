#!/bin/bash
# Each sidecar's minor page faults and context switches (voluntary + involuntary, all threads of
# the main one's /proc/PID/status) per request around one h2load run through a held pair; the
# arguments as user_system_per_request.sh's.
HOLD=$1; N=$2; shift 2
P=$(grep -o 'outbound=[0-9]*' "$HOLD" | cut -d= -f2)
A=$(grep -o ' a=[0-9]*' "$HOLD" | cut -d= -f2); B=$(grep -o ' b=[0-9]*' "$HOLD" | cut -d= -f2)
a0=$(awk '{print $10}' /proc/$A/stat); b0=$(awk '{print $10}' /proc/$B/stat)
ca0=$(grep ctxt /proc/$A/status | awk '{s+=$2} END {print s}'); cb0=$(grep ctxt /proc/$B/status | awk '{s+=$2} END {print s}')
h2load --h1 -n "$N" "$@" "http://127.0.0.1:$P/" | grep "time for request"
a1=$(awk '{print $10}' /proc/$A/stat); b1=$(awk '{print $10}' /proc/$B/stat)
ca1=$(grep ctxt /proc/$A/status | awk '{s+=$2} END {print s}'); cb1=$(grep ctxt /proc/$B/status | awk '{s+=$2} END {print s}')
echo "minflt/req a $(echo "scale=3; ($a1-$a0)/$N" | bc) b $(echo "scale=3; ($b1-$b0)/$N" | bc)  ctxsw/req a $(echo "scale=3; ($ca1-$ca0)/$N" | bc) b $(echo "scale=3; ($cb1-$cb0)/$N" | bc)"
