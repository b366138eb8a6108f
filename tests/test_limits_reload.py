"""The limits file is read again on SIGHUP and when it changes: new connections take the new
values, the `--limit` flags still win over the file, and a bad file changes nothing."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.apps import Hypercorn
from tests.conftest import Mesh
from tests.observe_support import admin_port, get
from tests.support import LOOPBACK, recv_all, wait_for, write_yaml


def status_with_header(port: int, size: int) -> int:
    """The status of one request, on a connection of its own, with a header of `size` bytes."""
    request = (
        f"GET /echo HTTP/1.1\r\nHost: backend\r\nX-Big: {'a' * size}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((LOOPBACK, port), timeout=10) as conn:
        conn.sendall(request)
        head = recv_all(conn)
    return int(head.split(b" ", 2)[1])


def breakers(admin: int) -> dict[str, str]:
    """The outbound cluster's default-priority circuit breakers, as /clusters shows them."""
    found = {}
    for line in get(admin, "/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[1] == "default_priority" and "backend" in parts[0]:
            found[parts[2]] = parts[3]
    return found


def test_limits_are_read_again_and_a_bad_file_changes_nothing(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, "uvloop")
    app = Hypercorn()
    limits = write_yaml(tmp_path / "limits.yaml", {"max_request_headers_kb": 1, "max_retries": 9})
    try:
        backend, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        web_file, port = mesh.client("web-1")
        mesh.start(backend)
        web = mesh.start(web_file, "--limits", str(limits), "--limit", "max_requests=77")
        admin = admin_port(web_file)
        assert status_with_header(port, 2048) == 431
        assert breakers(admin)["max_requests"] == "77"

        # SIGHUP: the file's new values reach new connections and the circuit breakers; the
        # flag still wins over the file.
        write_yaml(limits, {"max_request_headers_kb": 8, "max_retries": 5, "max_requests": 3})
        web.signal(signal.SIGHUP)
        web.wait_log("event=limits_reloaded max_request_headers_kb=8 max_retries=5")
        assert status_with_header(port, 2048) == 200
        assert status_with_header(port, 10 * 1024) == 431
        assert breakers(admin) == {
            "max_connections": "1024",
            "max_pending_requests": "1024",
            "max_requests": "77",
            "max_retries": "5",
        }

        # An edit alone is noticed too; a bad value names the file and the field, and the
        # limits in force stay.
        write_yaml(limits, {"max_request_headers_kb": 1, "max_retries": "many"})
        web.wait_log("event=limits_rejected")
        rejected = next(line for line in web.log.splitlines() if "limits_rejected" in line)
        assert str(limits) in rejected and "max_retries" in rejected, rejected
        assert status_with_header(port, 2048) == 200
        assert breakers(admin)["max_retries"] == "5"

        write_yaml(limits, {"max_request_headers_kb": 1})
        web.wait_log("event=limits_reloaded max_request_headers_kb=1 max_retries=3")
        assert status_with_header(port, 2048) == 431
    finally:
        mesh.close()
        app.close()


def test_every_worker_reads_the_limits_again(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, "uvloop")
    app = Hypercorn()
    limits = write_yaml(tmp_path / "limits.yaml", {"max_request_headers_kb": 1})
    try:
        backend, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        web_file, port = mesh.client("web-1")
        mesh.start(backend)
        web = mesh.start(web_file, "--workers", "2", "--limits", str(limits))
        write_yaml(limits, {"max_request_headers_kb": 8})
        web.signal(signal.SIGHUP)
        wait_for(lambda: web.log.count("event=limits_reloaded") == 2, what="both workers")
        # Each connection lands on either worker (SO_REUSEPORT): every one has the new limit.
        assert [status_with_header(port, 2048) for _ in range(12)] == [200] * 12
    finally:
        mesh.close()
        app.close()
