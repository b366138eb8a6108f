"""/ready on the dataplane address (Kuma's admin listener on networking.address:admin port), and
/drain_listeners with Envoy's `graceful` and `skip_exit`."""

from __future__ import annotations

import http.client
import socket

import pytest
import yaml

from tests.observe_support import admin_port, post, request, start_all
from tests.support import LOOPBACK, Sidecar, echo, free_port, port_open, recv_all

DATAPLANE_ADDRESS = "127.0.0.2"  # loopback, but not where the admin listens


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def echo_backend(mesh, address: str) -> tuple[Sidecar, int]:
    """A sidecar with networking.address `address` before an echo app: it and its admin port."""
    backend, _ = mesh.backend("backend-1", mesh.server(echo).port, address=address)
    (sidecar,) = start_all(mesh, backend)
    return sidecar, admin_port(backend)


def test_ready_on_the_dataplane_address_at_the_admin_port(mesh_uvloop):
    mesh = mesh_uvloop
    sidecar, port = echo_backend(mesh, DATAPLANE_ADDRESS)

    assert request(port, "/ready", host=DATAPLANE_ADDRESS)[:2] == (200, "LIVE\n")
    assert request(port, "/ready", "HEAD", host=DATAPLANE_ADDRESS)[0] == 200
    for path in ("/stats", "/config_dump", "/", "/ready/x"):
        assert request(port, path, host=DATAPLANE_ADDRESS)[0] == 404, path
    assert request(port, "/healthcheck/fail", "POST", host=DATAPLANE_ADDRESS)[0] == 404
    assert request(port, "/ready")[:2] == (200, "LIVE\n"), "not failed from the dataplane address"

    assert post(port, "/healthcheck/fail") == "OK\n"
    assert request(port, "/ready", host=DATAPLANE_ADDRESS)[:2] == (503, "DRAINING\n")
    assert post(port, "/healthcheck/ok") == "OK\n"
    assert request(port, "/ready", host=DATAPLANE_ADDRESS)[:2] == (200, "LIVE\n")
    assert f"ready={DATAPLANE_ADDRESS}:{port} " in sidecar.log


def test_no_ready_listener_of_its_own_on_127_0_0_1(mesh_uvloop):
    """networking.address 127.0.0.1: the admin there answers /ready (and everything else)."""
    mesh = mesh_uvloop
    sidecar, port = echo_backend(mesh, LOOPBACK)
    assert request(port, "/ready")[:2] == (200, "LIVE\n")
    assert request(port, "/stats")[0] == 200
    assert f"admin=127.0.0.1:{port} ready=- " in sidecar.log


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("address", ["::1", "localhost"])
def test_ready_on_an_ipv6_or_named_dataplane_address(mesh_uvloop, address):
    """An IPv6 address is bound as such; a host name as what it resolves to, less 127.0.0.1
    (`localhost`: ::1 where the system resolves it so, else nothing more to bind)."""
    mesh = mesh_uvloop
    sidecar, port = echo_backend(mesh, address)
    resolved = {info[4][0] for info in socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)}
    assert request(port, "/ready")[:2] == (200, "LIVE\n")
    if "::1" in resolved:
        assert request(port, "/ready", host="::1")[:2] == (200, "LIVE\n")
        assert request(port, "/stats", host="::1")[0] == 404
    else:
        assert "ready=- " in sidecar.log


# -- /drain_listeners ------------------------------------------------------------------------


def http_app(conn: socket.socket) -> None:
    """A keep-alive HTTP/1.1 app: 200 `ok` to every request (no bodies expected)."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        _, _, data = data.partition(b"\r\n\r\n")
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def http_get(port: int) -> tuple[int, str | None]:
    """One request on a new connection: (status, its `Connection` header)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.read() == b"ok"
        return response.status, response.getheader("connection")
    finally:
        conn.close()


def http_backend(mesh, drain_timeout: float):
    """An HTTP inbound and a TCP outbound: (sidecar, dataplane file, inbound, outbound)."""
    app = mesh.server(http_app)
    outbound = free_port()
    backend, inbound = mesh.backend(
        "backend-1",
        app.port,
        tags={"kuma.io/protocol": "http"},
        outbounds=[{"port": outbound, "tags": {"kuma.io/service": "backend"}}],
    )
    (sidecar,) = start_all(mesh, (backend, {"drain_timeout": drain_timeout}))
    assert http_get(inbound) == (200, None)
    return sidecar, backend, inbound, outbound


def health(mesh) -> list[bool]:
    doc = yaml.safe_load((mesh.dir / "backend-1.health.yaml").read_text())
    return [i["ready"] for i in doc["inbound"]]


def test_graceful_drain_accepts_through_the_drain_time_then_closes(mesh_uvloop):
    """Envoy's `graceful`: the inbound still accepts for the drain time, each HTTP/1.1 answer
    then saying `Connection: close`; it stops accepting when the period ends. The outbound
    (`inboundonly`) is left alone, and /ready does not change (Envoy's depends only on
    /healthcheck/fail)."""
    mesh = mesh_uvloop
    sidecar, backend, inbound, outbound = http_backend(mesh, drain_timeout=4)
    port = admin_port(backend)
    with socket.create_connection((LOOPBACK, inbound), timeout=10) as before:
        assert post(port, "/drain_listeners?inboundonly&graceful") == "OK\n"
        assert port_open(inbound), "still accepting during the drain period"
        assert http_get(inbound) == (200, "close")
        assert request(port, "/ready")[:2] == (200, "LIVE\n")
        assert health(mesh) == [False], "peers stop choosing the draining inbound"
        before.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = recv_all(before)  # told to close: the connection ends after its answer
        assert reply.startswith(b"HTTP/1.1 200") and b"connection: close\r\n" in reply.lower()
        sidecar.wait_log("event=drain_period_ended listeners=1 closed=True", timeout=15)
    assert not port_open(inbound), "closed when the drain period ended"
    assert port_open(outbound), "inboundonly"
    assert request(port, "/ready")[:2] == (200, "LIVE\n")


def test_graceful_drain_with_skip_exit_keeps_accepting(mesh_uvloop):
    """Kuma's SIGTERM sequence: /healthcheck/fail, then ?inboundonly&graceful&skip_exit. The
    inbound accepts after the drain period too, still closing each HTTP/1.1 connection."""
    mesh = mesh_uvloop
    sidecar, backend, inbound, _ = http_backend(mesh, drain_timeout=0.5)
    port = admin_port(backend)
    assert post(port, "/healthcheck/fail") == "OK\n"
    assert post(port, "/drain_listeners?inboundonly&graceful&skip_exit") == "OK\n"
    assert request(port, "/ready")[:2] == (503, "DRAINING\n")
    sidecar.wait_log("event=drain_period_ended listeners=1 closed=False", timeout=15)
    assert port_open(inbound)
    assert http_get(inbound) == (200, "close")


def test_drain_listeners_without_graceful_closes_at_once(mesh_uvloop):
    mesh = mesh_uvloop
    _, backend, inbound, outbound = http_backend(mesh, drain_timeout=30)
    port = admin_port(backend)
    assert post(port, "/drain_listeners") == "OK\n"
    assert not port_open(inbound) and not port_open(outbound)
    assert request(port, "/ready")[:2] == (200, "LIVE\n"), "as Envoy's: only init and health"
    assert health(mesh) == [False]
