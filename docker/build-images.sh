#!/usr/bin/env bash
# Build the dev mesh's two images (docker/Dockerfile's `apps` and `sidecar` targets) from a
# minimal context staged outside the repository, then bring the mesh up without --build:
#
#   docker/build-images.sh && docker-compose -f docker/compose.yaml up --attach demo-client
#
# Why not `compose up --build`: Compose v1 and Debian's legacy builder send the whole repository
# (.venv included, hundreds of MB) as the context of every service that has a `build:` (about
# two dozen here), which takes minutes; BuildKit (Compose v2) reads docker/Dockerfile.dockerignore
# instead, so there `up --build` is fine. The staged context also keeps extra CA certificates out
# of the work tree.
#
# Environment: PYSIDECAR_BASE_IMAGE (default python:3.11-slim), PYSIDECAR_IMAGE (default
# pysidecar:dev), PYSIDECAR_APPS_IMAGE (default pysidecar-apps:dev), PYSIDECAR_CA_CERTS (PEM
# files the build trusts for the package index, space-separated), PYSIDECAR_BUILD_NETWORK.
# docker/wheels/*.whl, when there (docker/build-base.sh wheels), are used instead of the index,
# unless PYSIDECAR_SKIP_WHEELS=1 (they are built for the host's Python, which the base must match).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${PYSIDECAR_BASE_IMAGE:-python:3.11-slim}
IMAGE=${PYSIDECAR_IMAGE:-pysidecar:dev}
APPS_IMAGE=${PYSIDECAR_APPS_IMAGE:-pysidecar-apps:dev}

say() { echo "build-images: $*" >&2; }

STAGE=$(mktemp -d /tmp/pysidecar-build-ctx.XXXXXX)
LOG=$STAGE.log
trap 'rm -rf "$STAGE" "$LOG"' EXIT
mkdir -p "$STAGE/docker/wheels" "$STAGE/docker/ca-certs" "$STAGE/docker/apps"
cp pyproject.toml README.md "$STAGE/"
cp -r sidecar "$STAGE/sidecar"
find "$STAGE/sidecar" -name __pycache__ -prune -exec rm -rf {} +
cp docker/Dockerfile docker/healthcheck.py "$STAGE/docker/"
cp docker/apps/requirements.txt "$STAGE/docker/apps/"
if [ -z "${PYSIDECAR_SKIP_WHEELS:-}" ] && ls docker/wheels/*.whl >/dev/null 2>&1; then cp docker/wheels/*.whl "$STAGE/docker/wheels/"; fi
for cert in ${PYSIDECAR_CA_CERTS:-}; do cp "$cert" "$STAGE/docker/ca-certs/$(basename "$cert" .crt).crt"; done

# Two targets of one Dockerfile; the second build reuses the first's cached stages.
build() {
    local target=$1 tag=$2
    say "docker build --target $target -> $tag (base $BASE)"
    # shellcheck disable=SC2086
    if ! timeout 600 docker build -q -f "$STAGE/docker/Dockerfile" --target "$target" \
        --build-arg "BASE_IMAGE=$BASE" ${PYSIDECAR_BUILD_NETWORK:+--network "$PYSIDECAR_BUILD_NETWORK"} \
        -t "$tag" "$STAGE" >"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        say "FAIL: docker build --target $target"
        exit 1
    fi
}
build apps "$APPS_IMAGE"
build sidecar "$IMAGE"
# The legacy builder leaves each intermediate stage's result untagged ("dangling"), and pruning
# those would throw away the layer cache the next build needs: tag them (cache hits, a second),
# so that only the superseded ones are left dangling and pruned here, ours only, by label.
build venv-apps pysidecar-cache:venv-apps
build venv-sidecar pysidecar-cache:venv-sidecar
timeout 60 docker image prune -f --filter label=io.pysidecar.image >/dev/null || true
