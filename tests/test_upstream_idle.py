"""The pools' upstream idle timeout (Envoy's cluster `idle_timeout`, the `upstream_idle_timeout`
limit): a pooled connection that carries requests stays; one left without requests for the
timeout is closed and counted (`upstream_cx_idle_timeout`), at the outbound (the mesh's HTTP/2
connection to the peer) and at the inbound (the kept-alive HTTP/1.1 connection to the app)."""

from __future__ import annotations

import http.client
import time

from tests.apps import Hypercorn
from tests.observe_support import admin_port, stats
from tests.support import LOOPBACK, http_call, wait_for, wait_ready

TIMEOUT = 0.5
MAX_REQUESTS = 900


def test_busy_connections_stay_and_idle_ones_close(mesh_uvloop) -> None:
    mesh = mesh_uvloop
    app = Hypercorn()
    try:
        limit = ("--limit", f"upstream_idle_timeout={TIMEOUT}")
        backend, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        web, port = mesh.client("web-1")
        wait_ready(mesh.start(backend, *limit, ready=False), mesh.start(web, *limit, ready=False))
        at_web, at_backend = admin_port(web), admin_port(backend)
        to_peer, to_app = "cluster.backend.", f"cluster.localhost_{app.port}."

        # Requests one after another for three times the timeout: the same connections carry
        # them all (a connection closed and made again would count a second one). Fewer than
        # hypercorn's 1,000 a connection (keep_alive_max_requests), after which it closes.
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        deadline = time.monotonic() + 3 * TIMEOUT
        for _ in range(MAX_REQUESTS):
            if time.monotonic() > deadline:
                break
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        conn.close()
        assert stats(at_web)[to_peer + "upstream_cx_total"] == 1
        assert stats(at_backend)[to_app + "upstream_cx_total"] == 1

        # Then nothing: both pools close their connection.
        seen: dict[str, tuple[float, float]] = {}

        def closed(admin: int, prefix: str) -> bool:
            now = stats(admin)
            seen[prefix] = (
                now[prefix + "upstream_cx_idle_timeout"],
                now[prefix + "upstream_cx_active"],
            )
            return seen[prefix] == (1, 0)

        try:
            wait_for(
                lambda: closed(at_web, to_peer) & closed(at_backend, to_app),
                timeout=30,
                what="closes",
            )
        except AssertionError as exc:
            lines = [
                line
                for sidecar in mesh.sidecars
                for line in sidecar.log.splitlines()
                if "idle_timeout" in line or "sweep" in line or "h2_connected" in line
            ]
            raise AssertionError(
                f"{exc}; (idle timeouts, active) by cluster: {seen}; log: {lines[-20:]}"
            ) from None

        # The next request makes new ones.
        assert http_call(port)[0] == 200
        assert stats(at_web)[to_peer + "upstream_cx_total"] == 2
        assert stats(at_backend)[to_app + "upstream_cx_total"] == 2
    finally:
        app.close()
