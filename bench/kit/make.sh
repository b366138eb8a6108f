#!/bin/bash
# Build a kit for running the bench on another Linux x86-64 machine that has Python 3.12 but not
# the tools (the 16-core runs in bench/README.md were made this way): h2load, nghttpd, haproxy,
# iperf3 and wrk from this machine with the shared libraries they link (glibc and libstdc++
# excepted: the other machine's serve), each behind a wrapper that sets LD_LIBRARY_PATH for it
# alone, and the Python wheels the sidecar and the bench need that such a machine may lack.
#   bench/kit/make.sh DIR [PYTHON_VERSION]      (default 3.12)
# then, on the other machine, from a copy of the repository: DIR/run.sh NAME [bench args…]
set -euo pipefail
kit=${1:?usage: make.sh DIR [PYTHON_VERSION]}
pyver=${2:-3.12}
mkdir -p "$kit/bin" "$kit/lib" "$kit/whl"
for tool in h2load nghttpd haproxy iperf3 wrk; do
    path=$(command -v "$tool" || PATH=/usr/sbin:/sbin:$PATH command -v "$tool") || {
        echo "make.sh: $tool not installed here; skipped" >&2; continue; }
    cp "$path" "$kit/bin/$tool.real"
    printf '#!/bin/sh\nd=$(dirname "$(readlink -f "$0")")\nLD_LIBRARY_PATH="$d/../lib" exec "$d/%s.real" "$@"\n' \
        "$tool" > "$kit/bin/$tool"
    chmod +x "$kit/bin/$tool"
    ldd "$path" | awk '/=>/ {print $3}' \
        | grep -vE 'libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libstdc\+\+|libgcc_s' \
        | xargs -r -I{} cp -L {} "$kit/lib/"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$kit/whl" \
    h2 hpack hyperframe websockets cryptography cffi pycparser
cp "$(dirname "$0")/run.sh" "$kit/run.sh"
du -sh "$kit"
