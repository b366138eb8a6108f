"""/ready on the dataplane address (Kuma's admin listener on networking.address:admin port), and
/drain_listeners with Envoy's `graceful` and `skip_exit`."""

from __future__ import annotations

import socket

import pytest

from tests.observe_support import admin_port, post, request, start_all
from tests.support import LOOPBACK, echo

DATAPLANE_ADDRESS = "127.0.0.2"  # loopback, but not where the admin listens


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ready_on_the_dataplane_address_at_the_admin_port(mesh_uvloop):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port, address=DATAPLANE_ADDRESS)
    (sidecar,) = start_all(mesh, backend)
    port = admin_port(backend)

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
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port, address=LOOPBACK)
    (sidecar,) = start_all(mesh, backend)
    port = admin_port(backend)
    assert request(port, "/ready")[:2] == (200, "LIVE\n")
    assert request(port, "/stats")[0] == 200
    assert f"admin=127.0.0.1:{port} ready=- " in sidecar.log


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("address", ["::1", "localhost"])
def test_ready_on_an_ipv6_or_named_dataplane_address(mesh_uvloop, address):
    """An IPv6 address is bound as such; a host name as what it resolves to, less 127.0.0.1
    (`localhost`: ::1 where the system resolves it so, else nothing more to bind)."""
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port, address=address)
    (sidecar,) = start_all(mesh, backend)
    port = admin_port(backend)
    resolved = {info[4][0] for info in socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)}
    assert request(port, "/ready")[:2] == (200, "LIVE\n")
    if "::1" in resolved:
        assert request(port, "/ready", host="::1")[:2] == (200, "LIVE\n")
        assert request(port, "/stats", host="::1")[0] == 404
    else:
        assert "ready=- " in sidecar.log
