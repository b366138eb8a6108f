"""Sidecars over time: failover, mesh changes, reloads, drain, start-up errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TCP_RELAYS, Mesh, tcp_mesh
from tests.support import LOOPBACK, REPO, echo, free_port, port_open, recv_all, wait_for, wait_ready


@pytest.fixture(params=TCP_RELAYS)
def mesh(request: pytest.FixtureRequest, tmp_path: Path, loop_kind: str) -> Iterator[Mesh]:
    """Every test here twice per loop: through the splice relay and the sniffed Protocol relay."""
    yield from tcp_mesh(tmp_path, loop_kind, request.param)


def whoami(name: bytes):
    """An app that answers every connection with its name, then echoes."""

    def handler(conn):
        conn.sendall(name + b"\n")
        echo(conn)

    return handler


def ask(port: int) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as c:
        c.shutdown(socket.SHUT_WR)
        return recv_all(c)


def test_failover_when_one_of_two_endpoints_dies(mesh):
    a = mesh.server(whoami(b"a"))
    b = mesh.server(whoami(b"b"))
    backend_a, _ = mesh.backend("backend-a", a.port)
    backend_b, _ = mesh.backend("backend-b", b.port)
    web, port = mesh.client("web-1")
    sidecar_a, _, _ = wait_ready(
        mesh.start(backend_a, ready=False),
        mesh.start(backend_b, ready=False),
        mesh.start(web, ready=False),
    )
    assert {ask(port) for _ in range(6)} == {b"a\n", b"b\n"}, "round robin over both"
    sidecar_a.kill()  # endpoint a dies: its inbound refuses connections
    answers = [ask(port) for _ in range(20)]
    assert answers == [b"b\n"] * 20, "every connection fails over to b"


def test_member_added_while_traffic_flows(mesh):
    a = mesh.server(whoami(b"a"))
    b = mesh.server(whoami(b"b"))
    backend_a, _ = mesh.backend("backend-a", a.port)
    web, port = mesh.client("web-1")
    wait_ready(
        mesh.start(backend_a, ready=False),
        mesh.start(web, ready=False),
    )
    with socket.create_connection((LOOPBACK, port), timeout=10) as long_lived:
        assert long_lived.recv(2) == b"a\n"
        assert {ask(port) for _ in range(5)} == {b"a\n"}
        backend_b, _ = mesh.backend("backend-b", b.port)
        mesh.start(backend_b)
        # Within 2 s the new member takes traffic; nothing in flight is dropped meanwhile.
        wait_for(lambda: ask(port) == b"b\n", timeout=2.5, what="the new member to get traffic")
        long_lived.sendall(b"still here")
        assert long_lived.recv(100) == b"still here"


def test_member_removed_stops_getting_traffic(mesh):
    a = mesh.server(whoami(b"a"))
    b = mesh.server(whoami(b"b"))
    backend_a, _ = mesh.backend("backend-a", a.port)
    backend_b, _ = mesh.backend("backend-b", b.port)
    web, port = mesh.client("web-1")
    wait_ready(
        mesh.start(backend_a, ready=False),
        mesh.start(backend_b, ready=False),
        mesh.start(web, ready=False),
    )
    backend_b.unlink()
    wait_for(lambda: {ask(port) for _ in range(4)} == {b"a\n"}, timeout=2.5)


def test_dataplane_edit_adds_listener_without_dropping_connections(mesh):
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, port = mesh.client("web-1")
    _, sidecar = wait_ready(
        mesh.start(backend, ready=False),
        mesh.start(web, ready=False),
    )
    import yaml

    with socket.create_connection((LOOPBACK, port), timeout=10) as c:
        c.sendall(b"before")
        assert c.recv(100) == b"before"
        doc = yaml.safe_load(web.read_text())
        new_port = free_port()
        doc["networking"]["outbound"].append(
            {"port": new_port, "tags": {"kuma.io/service": "backend"}}
        )
        from tests.support import write_yaml

        write_yaml(web, doc)
        wait_for(lambda: port_open(new_port), timeout=3, what="the added listener")
        c.sendall(b"after")
        assert c.recv(100) == b"after"
    with socket.create_connection((LOOPBACK, new_port), timeout=10) as c2:
        c2.sendall(b"via new")
        assert c2.recv(100) == b"via new"
    assert f"event=listener_bound listener=outbound:127.0.0.1:{new_port}" in sidecar.log


def test_sighup_reload_rejects_a_broken_file_and_keeps_serving(mesh):
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, port = mesh.client("web-1")
    _, sidecar = wait_ready(
        mesh.start(backend, ready=False),
        mesh.start(web, ready=False),
    )
    original = web.read_text()
    web.write_text("type: Dataplane\nname: web-1\nnetworking: {}\n")
    sidecar.signal(signal.SIGHUP)
    sidecar.wait_log("event=reload_rejected")
    with socket.create_connection((LOOPBACK, port), timeout=10) as c:
        c.sendall(b"ok")
        assert c.recv(10) == b"ok"
    web.write_text(original)


def test_sigterm_drains_open_connections_then_exits_0(mesh):
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, port = mesh.client("web-1")
    _, sidecar = wait_ready(
        mesh.start(backend, ready=False),
        mesh.start(web, drain_timeout=20, ready=False),
    )
    with socket.create_connection((LOOPBACK, port), timeout=10) as c:
        c.sendall(b"one")
        assert c.recv(10) == b"one"
        sidecar.signal(signal.SIGTERM)
        sidecar.wait_log("event=draining")
        assert not port_open(port), "a draining sidecar accepts no new connections"
        c.sendall(b"two")
        assert c.recv(10) == b"two", "open connections keep working during the drain"
        assert sidecar.proc.poll() is None
    assert sidecar.proc.wait(10) == 0
    assert "closed_at_deadline=0" in sidecar.log


def test_drain_timeout_closes_what_is_left(mesh):
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, port = mesh.client("web-1")
    _, sidecar = wait_ready(
        mesh.start(backend, ready=False),
        mesh.start(web, drain_timeout=0.5, ready=False),
    )
    with socket.create_connection((LOOPBACK, port), timeout=10) as c:
        c.sendall(b"one")
        assert c.recv(10) == b"one"
        sidecar.signal(signal.SIGTERM)
        assert sidecar.proc.wait(10) == 0
        assert recv_all(c) == b""
    assert "closed_at_deadline=1" in sidecar.log


def test_bind_failure_names_listener_and_address(mesh):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        path = mesh.write(
            "web-1",
            [{"port": busy, "servicePort": free_port(), "tags": {"kuma.io/service": "web"}}],
        )
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "--dataplane", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
    assert result.returncode == 1
    assert f"listener inbound:127.0.0.1:{busy}: cannot bind 127.0.0.1:{busy}" in result.stderr


def test_invalid_dataplane_stops_start_up_with_file_and_field(mesh):
    path = mesh.dir / "bad.yaml"
    path.write_text("type: Dataplane\nmesh: default\nname: bad\n")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--dataplane", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert f"{path}: networking: must be defined" in result.stderr
