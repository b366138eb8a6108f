#!/usr/bin/env bash
# A Docker engine for the smoke test on a Debian machine without one (CI):
#
#   docker/engine.sh start   install Debian's docker.io, docker-compose and debootstrap if missing,
#                            start dockerd in the background unless a daemon already answers, and
#                            wait (bounded) until it does
#   docker/engine.sh stop    stop the dockerd that `start` started (by its pid file), nothing else
#
# Needs root. No image registry is needed: docker/smoke.sh builds its base image offline.
set -euo pipefail

PIDFILE=/var/run/pysidecar-dockerd.pid
LOG=${DOCKERD_LOG:-/tmp/pysidecar-dockerd.log}
# The dev mesh needs containers to reach each other on their compose network only: no NAT to the
# outside, no forwarding, and the machine's iptables (FORWARD policy, nat table) left untouched.
DOCKERD_OPTS=${DOCKERD_OPTS---iptables=false --ip-forward=false}  # set but empty: none

log() { echo "engine: $*" >&2; }

start() {
    if timeout 10 docker info >/dev/null 2>&1; then
        log "a Docker daemon already answers"
        return 0
    fi
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || timeout 10 docker compose version >/dev/null 2>&1 \
        || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        timeout 300 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    log "starting dockerd (log: $LOG)"
    # setsid: the daemon outlives this script; its pid is kept so that `stop` ends only it.
    # shellcheck disable=SC2086
    setsid dockerd $DOCKERD_OPTS >"$LOG" 2>&1 < /dev/null &
    echo $! >"$PIDFILE"
    local i
    for i in $(seq 60); do
        if timeout 5 docker info >/dev/null 2>&1; then
            log "dockerd up ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
            return 0
        fi
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then break; fi
        sleep 1
    done
    log "dockerd did not come up; last lines of $LOG:"
    tail -n 20 "$LOG" >&2
    return 1
}

stop() {
    [ -f "$PIDFILE" ] || { log "no dockerd started by engine.sh"; return 0; }
    local pid
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        local i
        for i in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        log "dockerd $pid stopped"
    fi
    rm -f "$PIDFILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
