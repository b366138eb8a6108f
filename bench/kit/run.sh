#!/bin/bash
# Run the bench with a kit made by bench/kit/make.sh, from the repository's root:
#   KIT/run.sh NAME [python -m bench arguments…]
# The wheels go to /tmp/site, the kit's tools first on PATH; the report lands in /tmp/NAME and,
# where $OUT is set, report.md and results.json are copied there as NAME.md and NAME.json.
kit=$(dirname "$(readlink -f "$0")")
name=${1:?usage: run.sh NAME [bench arguments]}; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$kit"/whl/*.whl || exit 1
# Byte-code up front: a sidecar that compiles its modules as it imports them peaks ~1.5 MB higher
# (VmHWM; measured with Python 3.11 and 3.12 on the 2-core machine), and --upgrade drops the
# wheels' __pycache__ on every run.
python3 -m compileall -q /tmp/site sidecar bench > /dev/null
export PYTHONPATH=/tmp/site:$PWD PATH=$kit/bin:$PATH PYTHONUNBUFFERED=1
ulimit -n 65536 2>/dev/null
python3 -m bench --out "/tmp/$name" "$@" > "/tmp/$name.log" 2>&1
rc=$?
if [ -n "${OUT:-}" ]; then
    cp "/tmp/$name.log" "$OUT/$name.log"
    cp "/tmp/$name/report.md" "$OUT/$name.md" 2>/dev/null
    cp "/tmp/$name/results.json" "$OUT/$name.json" 2>/dev/null
fi
tail -5 "/tmp/$name.log"
exit $rc
