"""`pysidecar stat --once`: one table of per-listener traffic, read through the admin API."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading

from tests.observe_support import exchange, start_all
from tests.support import LOOPBACK, REPO, echo, free_port


def test_stat_once_shows_live_traffic(mesh_uvloop):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "tcp"})
    web, outbound = mesh.client("web-1")
    start_all(mesh, backend, web)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            assert exchange(outbound, b"x" * 1000) == b"x" * 1000

    held = [socket.create_connection((LOOPBACK, outbound), timeout=10) for _ in range(2)]
    for c in held:  # both are relayed end to end before the table is taken
        c.sendall(b"hi")
        assert c.recv(2) == b"hi"
    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "stat", "--dataplane", str(web), "--once",
             "--interval", "0.5"],
            capture_output=True, text=True, timeout=30, cwd=REPO,
        )  # fmt: skip
    finally:
        stop.set()
        thread.join(10)
        for c in held:
            c.close()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "LISTENER", "PROTOCOL", "CLUSTER", "RATE", "SUCCESS", "P50", "P99", "ACTIVE", "BYTES",
    ]  # fmt: skip
    row = next(line for line in lines if line.startswith(f"outbound:127.0.0.1:{outbound} "))
    match = re.match(
        r"outbound:\S+\s+tcp\s+backend\s+(\S+) cx/s\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\S+)/s$",
        row,
    )
    assert match, row
    rate, success, p50, p99, active, moved = match.groups()
    assert float(rate) > 0
    assert success == "100.00%"
    assert p50.endswith("ms") and p99.endswith("ms")
    assert int(active) >= 2
    assert not moved.startswith("0B")
    inbound_row = next(line for line in lines if line.startswith("inbound:"))
    assert " auto " in inbound_row and "0.0 cx/s" in inbound_row, "web's own inbound: undeclared"


def test_stat_without_a_sidecar_says_so():
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "stat", "--admin", f"127.0.0.1:{port}", "--once",
         "--interval", "0"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot read the admin API at 127.0.0.1:{port}" in result.stderr
