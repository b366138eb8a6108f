r"""A sidecar's start: exec to `event=ready`, and its stop, six times, for a Dataplane with one
HTTP inbound, started as the test suite starts its ~700 (tests.support.Sidecar).

    PYTHONPYCACHEPREFIX=/tmp/pyc-probe .venv/bin/python \
        bench/results/2026-11-25-2core-session28/startup_probe.py
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.support import Sidecar, dataplane, free_port, write_yaml  # noqa: E402

directory = Path(tempfile.mkdtemp())
for i in range(6):
    inbound = {
        "port": free_port(),
        "servicePort": free_port(),
        "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"},
    }
    path = write_yaml(directory / f"web{i}.yaml", dataplane("web", [inbound], []))
    started = time.perf_counter()
    sidecar = Sidecar(path, loop="uvloop").wait_ready()
    ready = time.perf_counter()
    sidecar.stop()
    stopped = time.perf_counter()
    print(f"ready {1000 * (ready - started):.0f} ms  stop {1000 * (stopped - ready):.0f} ms")
