#!/usr/bin/env bash
# Smoke test of the Docker dev mesh: build the image, bring docker/compose.yaml up, run every
# active check of docker/checks.yaml through the sidecars, tear everything down and verify that no
# container, network or volume of the run is left. Exit 0 only if all of that passed.
#
#   docker/smoke.sh                       # every service, with the `prometheus` profile
#   COMPOSE_PROFILES= docker/smoke.sh     # without Prometheus
#
# Environment:
#   SMOKE_TIMEOUT         whole run bound, seconds (default 900); every step has its own bound too
#   PYSIDECAR_BASE_IMAGE  base image; default: python:3.11-slim when present or pullable, else
#                         pysidecar-base:bookworm made offline by docker/build-base.sh
#   SMOKE_OFFLINE=1       do not try to pull; go straight to the offline base and host wheels
#   COMPOSE_PROFILES      compose profiles to bring up and check (default: prometheus)
#   PYSIDECAR_PROMETHEUS_IMAGE  Prometheus image of that profile; default: prom/prometheus:v2.53.0
#                         when present or pullable, else pysidecar-prometheus:local (the base plus
#                         this host's prometheus binary, docker/build-base.sh prometheus)
#   PYSIDECAR_CA_CERTS    extra CA certificate files (PEM, space-separated) that the image build
#                         trusts for the package index (only when it downloads); never committed
#   PYSIDECAR_BUILD_NETWORK  network of the build's RUN steps, e.g. `host` where only the host
#                         resolves and reaches the package index (only when it downloads)
#   SMOKE_KEEP=1          leave the mesh up on failure, for a look (teardown is then yours)
set -euo pipefail

if [ -z "${_SMOKE_BOUNDED:-}" ]; then
    export _SMOKE_BOUNDED=1
    exec timeout --kill-after=60 "${SMOKE_TIMEOUT:-900}" bash "$0" "$@"
fi

cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE=${PYSIDECAR_IMAGE:-pysidecar:smoke}
APPS_IMAGE=${PYSIDECAR_APPS_IMAGE:-pysidecar-apps:smoke}
PROMETHEUS_UPSTREAM=prom/prometheus:v2.53.0
export COMPOSE_PROFILES=${COMPOSE_PROFILES-prometheus}
PROJECT=pysidecar-smoke-$$
COMPOSE_FILE=docker/compose.yaml
UP=0

say() { echo "smoke: [${SECONDS}s] $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

# --- prerequisites ---------------------------------------------------------------------------
timeout 20 docker info >/dev/null 2>&1 || fail "no Docker daemon reachable (docker info failed)"
if timeout 20 docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
say "compose: $("${COMPOSE[@]}" version 2>/dev/null | head -n1)"
# compose SECONDS ARGS...: every compose call is bounded.
compose() { local limit=$1; shift; timeout "$limit" "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }

leftovers() {
    local label=com.docker.compose.project=$PROJECT
    {
        docker ps -aq --filter "label=$label" | sed 's/^/container /'
        docker ps -aq --filter "name=^${PROJECT}[_-]" | sed 's/^/container /'
        docker network ls -q --filter "label=$label" | sed 's/^/network /'
        docker network ls -q --filter "name=^${PROJECT}_" | sed 's/^/network /'
        docker volume ls -q --filter "label=$label" | sed 's/^/volume /'
        docker volume ls -q --filter "name=^${PROJECT}_" | sed 's/^/volume /'
    } | sort -u
}

teardown() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$UP" = 1 ]; then
        if [ "$status" != 0 ]; then
            say "--- state and logs on failure ---"
            compose 30 ps >&2 || true
            compose 60 logs --no-color --tail=40 >&2 || true
            if [ -n "${SMOKE_KEEP:-}" ]; then
                say "SMOKE_KEEP: left up; tear down with: ${COMPOSE[*]} -p $PROJECT -f $COMPOSE_FILE down -v"
                exit "$status"
            fi
        fi
        say "teardown"
        compose 120 down -v --remove-orphans --timeout 10 >/dev/null 2>&1 \
            || say "compose down failed"
        local left
        left=$(leftovers)
        if [ -n "$left" ]; then
            say "FAIL: left behind after teardown:"
            echo "$left" >&2
            status=1
        else
            say "teardown verified: no container, network or volume of $PROJECT left"
        fi
    fi
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'say "interrupted (SMOKE_TIMEOUT?)"; exit 124' TERM

# --- base image ------------------------------------------------------------------------------
have_image() { timeout 20 docker image inspect "$1" >/dev/null 2>&1; }
OFFLINE=0
if [ -n "${PYSIDECAR_BASE_IMAGE:-}" ]; then
    BASE=$PYSIDECAR_BASE_IMAGE
    if ! have_image "$BASE" && [[ "$BASE" == pysidecar-base:* ]]; then OFFLINE=1; fi
elif have_image python:3.11-slim; then
    BASE=python:3.11-slim
elif have_image pysidecar-base:bookworm; then
    BASE=pysidecar-base:bookworm OFFLINE=1
elif [ -z "${SMOKE_OFFLINE:-}" ] && timeout 180 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE=python:3.11-slim
else
    BASE=pysidecar-base:bookworm OFFLINE=1
fi
if [[ "$BASE" == pysidecar-base:* ]]; then OFFLINE=1; fi
if [ "$OFFLINE" = 1 ]; then
    say "offline base $BASE and wheels built on this host (docker/build-base.sh)"
    BASE_TAG=$BASE timeout 1200 docker/build-base.sh all >&2
else
    say "base image $BASE"
fi
if [[ ",$COMPOSE_PROFILES," == *,prometheus,* ]]; then
    if [ -n "${PYSIDECAR_PROMETHEUS_IMAGE:-}" ]; then
        :
    elif have_image "$PROMETHEUS_UPSTREAM" || { [ "$OFFLINE" = 0 ] \
            && timeout 180 docker pull -q "$PROMETHEUS_UPSTREAM" >/dev/null 2>&1; }; then
        PYSIDECAR_PROMETHEUS_IMAGE=$PROMETHEUS_UPSTREAM
    else
        PYSIDECAR_PROMETHEUS_IMAGE=pysidecar-prometheus:local
        say "Prometheus: $PYSIDECAR_PROMETHEUS_IMAGE from this host's binary (docker/build-base.sh prometheus)"
        BASE_TAG=$BASE PROMETHEUS_TAG=$PYSIDECAR_PROMETHEUS_IMAGE timeout 300 \
            docker/build-base.sh prometheus >&2
    fi
    export PYSIDECAR_PROMETHEUS_IMAGE
    say "Prometheus image $PYSIDECAR_PROMETHEUS_IMAGE"
fi

# --- images ----------------------------------------------------------------------------------
# From a minimal context staged outside the repository (see build-images.sh); with the offline
# base, the host's wheels are used, so nothing is downloaded.
say "images $APPS_IMAGE and $IMAGE (docker/build-images.sh)"
if [ "$OFFLINE" = 0 ]; then export PYSIDECAR_SKIP_WHEELS=1; fi
PYSIDECAR_IMAGE=$IMAGE PYSIDECAR_APPS_IMAGE=$APPS_IMAGE PYSIDECAR_BASE_IMAGE=$BASE \
    timeout 900 docker/build-images.sh || fail "docker/build-images.sh"

# --- the mesh --------------------------------------------------------------------------------
export PYSIDECAR_IMAGE=$IMAGE PYSIDECAR_APPS_IMAGE=$APPS_IMAGE PYSIDECAR_BASE_IMAGE=$BASE
export PYSIDECAR_PROMETHEUS_PORT=""   # Prometheus on an ephemeral host port: none to collide with
say "up: project $PROJECT${COMPOSE_PROFILES:+, profiles $COMPOSE_PROFILES}"
UP=1
compose 300 up -d --no-build >&2 || fail "compose up"

# Container states: "ok" when every app runs and every sidecar's health check says healthy.
states() {
    local id name state
    # By label, not `compose ps`: Compose v2 lists only running containers there.
    for id in $(timeout 30 docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
        name=$(timeout 20 docker inspect --format '{{.Name}}' "$id")
        state=$(timeout 20 docker inspect --format \
            '{{.State.Status}}{{if .State.Health}} {{.State.Health.Status}}{{end}}' "$id")
        case "$name" in
            *mesh-init*) [ "$state" = exited ] || echo "${name#/} $state" ;;
            *-sidecar*) [ "$state" = "running healthy" ] || echo "${name#/} $state" ;;
            *) [ "$state" = running ] || echo "${name#/} $state" ;;
        esac
    done
}
say "waiting for every sidecar to be healthy"
deadline=$((SECONDS + 120))
while not_ok=$(states) && [ -n "$not_ok" ]; do
    if [ "$SECONDS" -ge "$deadline" ] || grep -qE ' (exited|dead|unhealthy)$' <<<"$not_ok"; then
        fail "containers not ready: $not_ok"
    fi
    sleep 1
done

client=$(timeout 20 docker ps -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=demo-client")
[ -n "$client" ] || fail "no demo-client container"
# The client runs the checks once when it starts (what `compose up` shows): wait for its summary,
# which must say nothing failed, before running them again; two runs at once would each see the
# other's traffic in the sidecars' counters.
say "the client's own run at start-up"
client_log() { timeout 20 docker logs "$client" 2>&1; }
deadline=$((SECONDS + 240))
until client_log | grep -q '^summary:'; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the client printed no summary within 240 s"
    sleep 1
done
# One read of the log for both the lines shown and the verdict, and no `grep -q` at the end of
# a pipe: under pipefail, grep -q leaving at its match can fail the pipe (docker logs, still
# writing, gets SIGPIPE), and a run whose summary was just shown as passed was called failed.
results=$(client_log | grep -E '^(PASS|FAIL|SKIP|summary)' || true)
printf '%s\n' "$results" >&2
grep -qE '^summary: [0-9]+ passed, 0 failed' <<<"$results" \
    || fail "the client's run at start-up failed"

say "checks through the sidecars, again"
timeout 180 docker exec "$client" python3 /apps/demo_app.py client \
    --checks /config/checks.yaml --profiles "$COMPOSE_PROFILES" --once --deadline 60 \
    || fail "checks"

# The backend sidecars' own admin API (127.0.0.1:9901 in their namespace): their http inbound got
# requests over HTTP/2, i.e. web's sidecar upgraded HTTP/1.1 for the mTLS hop; and each keeps its
# health document in the mesh volume. `docker exec`, not `compose exec`: Compose v1 takes seconds
# to start.
say "backend sidecars' /stats: requests received over HTTP/2, inbound TLS handshakes; health documents"
for svc in backend-v1-sidecar backend-v2-sidecar; do
    id=$(timeout 20 docker ps -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$svc")
    [ -n "$id" ] || fail "$svc: no container"
    timeout 60 docker exec "$id" python3 -c '
import json, os, re, sys, urllib.request
doc = json.load(urllib.request.urlopen("http://127.0.0.1:9901/stats?format=json", timeout=5))
stats = doc.get("stats", doc)
pairs = {s["name"]: s.get("value", 0) for s in stats if "name" in s} if isinstance(stats, list) else dict(stats)
h2 = {k: v for k, v in pairs.items()
      if re.fullmatch(r"http\.inbound_.+_10000\.downstream_rq_http2_total", k)}
tls = {k: v for k, v in pairs.items() if re.fullmatch(r"listener\..+_10000\.ssl\.handshake", k)}
health = "/mesh/%s.health.yaml" % sys.argv[1].removesuffix("-sidecar")
print(sys.argv[1], h2, tls, health, os.path.getsize(health) if os.path.exists(health) else "missing")
ok = h2 and sum(h2.values()) > 0 and tls and sum(tls.values()) > 0
sys.exit(0 if ok and os.path.exists(health) and os.path.getsize(health) > 0 else 1)
' "$svc" >&2 || fail "$svc: no request over HTTP/2 or no TLS handshake on the inbound in /stats, or no health document"
done

# Every container still as it should be, and no error in any log.
not_ok=$(states)
[ -z "$not_ok" ] || fail "after the checks: $not_ok"
if compose 60 logs --no-color 2>/dev/null | grep -E '(ERROR|Traceback)' >&2; then
    fail "errors in the containers' logs (above)"
fi
say "PASS: every check went through the sidecars"
