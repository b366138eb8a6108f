r"""A sidecar's start, exec to `event=ready`, for a Dataplane with one HTTP inbound, four times;
with `-X importtime` (the first argument, passed to the sidecar's interpreter) it also sums the
import time and prints the slowest modules by their own time.

    PYTHONPYCACHEPREFIX=/tmp/pyc-probe .venv/bin/python \
        bench/results/2026-11-25-2core-session29/startup_imports.py [-X importtime]

Run it once first with the same PYTHONPYCACHEPREFIX (the bytecode cache warm, as in the suite).
"""

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from tests.support import dataplane, free_port, write_yaml  # noqa: E402

work = Path(tempfile.mkdtemp())
extra = sys.argv[1:]
for run in range(4):
    inbound = {
        "port": free_port(),
        "servicePort": free_port(),
        "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"},
    }
    path = write_yaml(work / f"web{run}.yaml", dataplane("web", [inbound], []))
    err = work / f"web{run}.err"
    started = time.perf_counter()
    with open(err, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *extra, "-m", "sidecar", "--log-level", "debug", "run",
             "--dataplane", str(path), "--loop", "uvloop"],
            stdout=log, stderr=log, cwd=ROOT,
        )  # fmt: skip
        deadline = started + 30
        while "event=ready" not in err.read_text(errors="replace"):
            if time.perf_counter() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"not ready: {err}")
            time.sleep(0.005)  # polling a log file, as tests.support.Sidecar does
        ready = time.perf_counter() - started
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    rows = []
    for line in err.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            own, _, name = line[len("import time:") :].split("|")
            if own.strip().isdigit():
                rows.append((int(own), name.strip()))
    print(f"ready {1000 * ready:.0f} ms", end="")
    if rows:
        print(f"; imports {sum(r[0] for r in rows) / 1000:.0f} ms", end="")
    print()
    if rows and run == 3:
        for own, name in sorted(rows, reverse=True)[:15]:
            print(f"  {own / 1000:6.1f} ms  {name}")
