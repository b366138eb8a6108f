"""Bytes of HTTP upstream connections in the cluster's upstream_cx_rx/tx_bytes_total.

Envoy counts them on every upstream connection, whatever its protocol: at the outbound on the
HTTP/2 connection to the peer sidecar (cluster = the service), at the inbound on the connection
to the app (cluster localhost_<port>: HTTP/1.1 for `http`, h2c for `http2`), which Kuma's
dashboards read as `rate(envoy_cluster_upstream_cx_rx_bytes_total{envoy_cluster_name=~
"localhost_.*"}[1m])`. They show while the connections are open (as the TCP relay's do) and are
kept after they close.
"""

from __future__ import annotations

import http.client
import json

import pytest

from tests.apps import Hypercorn
from tests.observe_support import admin_port, get, series, stats
from tests.pki import Pki
from tests.support import LOOPBACK, wait_for, wait_ready

UPLOAD, DOWNLOAD = 200_000, 50_000  # request and response bodies: unequal, to tell directions


@pytest.mark.parametrize("mtls", [False, True], ids=["plaintext", "mtls"])
@pytest.mark.parametrize("protocol", ["http", "http2"])
def test_http_upstream_bytes_counted_live_and_after_close(mesh, tmp_path, protocol, mtls):
    app = Hypercorn()
    app_open = True
    try:
        backend, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": protocol})
        web, outbound = mesh.client("web-1")
        backend_args: tuple[str, ...] = ()
        web_args: tuple[str, ...] = ()
        if mtls:
            pki = Pki(tmp_path / "certs")
            pki.issue("backend-1", "backend")
            pki.issue("web-1", "web")
            backend_args, web_args = tuple(pki.args("backend-1")), tuple(pki.args("web-1"))
        backend_sidecar, web_sidecar = wait_ready(
            mesh.start(backend, *backend_args, ready=False),
            mesh.start(web, *web_args, ready=False),
        )
        web_admin, backend_admin = admin_port(web), admin_port(backend)
        conn = http.client.HTTPConnection(LOOPBACK, outbound, timeout=10)
        conn.request("POST", f"/bytes/{DOWNLOAD}", body=b"u" * UPLOAD)
        response = conn.getresponse()
        assert response.status == 200
        assert len(response.read()) == DOWNLOAD

        mesh_cluster, app_cluster = "cluster.backend", f"cluster.localhost_{app.port}"

        def counted(admin: int, cluster: str) -> tuple[int, int]:
            s = stats(admin)
            return s[f"{cluster}.upstream_cx_rx_bytes_total"], s[
                f"{cluster}.upstream_cx_tx_bytes_total"
            ]

        def check(rx: int, tx: int) -> None:
            # Sent: the upload (and headers, framing); received: the download, not the upload.
            assert tx >= UPLOAD, (rx, tx)
            assert DOWNLOAD <= rx < UPLOAD, (rx, tx)

        # Live, every connection still open (the mesh one and the app one are pooled).
        s = stats(web_admin)
        assert s[f"{mesh_cluster}.upstream_cx_active"] == 1
        check(*counted(web_admin, mesh_cluster))
        s = stats(backend_admin)
        assert s[f"{app_cluster}.upstream_cx_active"] == 1
        app_rx, app_tx = counted(backend_admin, app_cluster)
        check(app_rx, app_tx)
        # As the dashboards read it.
        prom = series(get(backend_admin, "/stats/prometheus"))
        label = f'envoy_cluster_name="localhost_{app.port}"'
        assert prom[f"envoy_cluster_upstream_cx_rx_bytes_total{{{label}}}"] == app_rx
        assert prom[f"envoy_cluster_upstream_cx_tx_bytes_total{{{label}}}"] == app_tx

        # The app goes away: the inbound's connection to it closes, its bytes stay counted.
        conn.close()
        app.close()
        app_open = False
        wait_for(lambda: stats(backend_admin)[f"{app_cluster}.upstream_cx_active"] == 0)
        assert counted(backend_admin, app_cluster) == (app_rx, app_tx)

        # The backend sidecar goes away: the outbound's mesh connection closes, bytes stay.
        live_rx, live_tx = counted(web_admin, mesh_cluster)
        backend_sidecar.stop()
        wait_for(lambda: stats(web_admin)[f"{mesh_cluster}.upstream_cx_active"] == 0)
        rx, tx = counted(web_admin, mesh_cluster)
        assert rx >= live_rx and tx >= live_tx  # (a GOAWAY may have come meanwhile)
        check(rx, tx)
        assert web_sidecar.proc.poll() is None
    finally:
        if app_open:
            app.close()


def test_clusters_shows_each_hosts_http_connections_and_requests(mesh):
    """/clusters' host lines (Envoy's cx_active, cx_total, rq_active, rq_total) count the HTTP
    pools' connections and requests, as they count relayed TCP connections: at the outbound per
    peer inbound (the mesh's HTTP/2 connection), at the inbound per app endpoint; what ended is
    kept."""
    app = Hypercorn()
    app_open = True
    try:
        backend, inbound = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        web, outbound = mesh.client("web-1")
        wait_ready(mesh.start(backend, ready=False), mesh.start(web, ready=False))
        web_admin, backend_admin = admin_port(web), admin_port(backend)
        conn = http.client.HTTPConnection(LOOPBACK, outbound, timeout=10)
        for _ in range(3):
            conn.request("GET", "/x")
            assert conn.getresponse().read() is not None
        conn.close()
        peer = f"backend::{LOOPBACK}:{inbound}"
        to_app = f"localhost:{app.port}::{LOOPBACK}:{app.port}"

        def host(admin: int, prefix: str) -> dict[str, int]:
            lines = get(admin, "/clusters").splitlines()
            return {
                line.split("::")[-2]: int(line.split("::")[-1])
                for line in lines
                if line.startswith(prefix + "::") and line.split("::")[-2].startswith(("cx", "rq"))
            }

        counts = {"cx_active": 1, "cx_total": 1, "rq_active": 0, "rq_total": 3}
        assert host(web_admin, peer) == counts
        assert host(backend_admin, to_app) == counts
        app.close()
        app_open = False  # the inbound's kept-alive connection to the app ends: its counts stay
        wait_for(lambda: host(backend_admin, to_app)["cx_active"] == 0)
        assert host(backend_admin, to_app) == {**counts, "cx_active": 0}
        statuses = json.loads(get(web_admin, "/clusters?format=json"))["cluster_statuses"]
        backend_status = next(c for c in statuses if c["name"] == "backend")
        stats_of_host = {s["name"]: s["value"] for s in backend_status["host_statuses"][0]["stats"]}
        assert stats_of_host == counts
    finally:
        if app_open:
            app.close()
