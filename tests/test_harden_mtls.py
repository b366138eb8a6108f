"""Hardening on the mTLS hop: a client that stalls mid-handshake is cut off by the handshake
timeout while verified peers keep being served, and a certificate about to expire is announced
in the log and the metrics before it does."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

from tests.attack import LegitEcho, refused
from tests.observe_support import admin_port, get, series, stats
from tests.pki import Pki
from tests.support import LOOPBACK, echo, wait_for, wait_ready

# A TLS record header announcing a 512-byte ClientHello, and the first bytes of it: then nothing.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + b"\x00" * 16


def test_tls_clients_stalling_mid_handshake_are_cut_off_and_expiry_is_announced(mesh_uvloop, pki):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend_file, inbound = mesh.backend("backend-1", app.port)
    web_file, outbound = mesh.client("web-1")
    # The backend's certificate has 30 s left of its 200 s: less than a fifth, so its sidecar
    # says so at once (a rotation that did not come); it stays valid for the whole test.
    now = datetime.now(UTC)
    pki.issue("backend-1", "backend", now=now - timedelta(seconds=170), valid_for=timedelta(
        seconds=200))  # fmt: skip
    pki.issue("web-1", "web")
    backend, _ = wait_ready(
        mesh.start(
            backend_file,
            *pki.args("backend-1"),
            "--limit", "tls_handshake_timeout=1",
            "--limit", "max_connections=40",
            ready=False,
        ),
        mesh.start(web_file, *pki.args("web-1"), ready=False),
    )  # fmt: skip
    admin = admin_port(backend_file)
    listener = f"listener.127.0.0.1_{inbound}"

    with LegitEcho(outbound):
        started = time.monotonic()
        stalled = []
        for _ in range(25):
            conn = socket.create_connection((LOOPBACK, inbound), timeout=5)
            conn.sendall(PARTIAL_CLIENT_HELLO)
            stalled.append(conn)
        for conn in stalled:
            try:
                assert conn.recv(1024) == b""  # closed by the server, nothing said
            except ConnectionResetError:
                pass
            conn.close()
        assert time.monotonic() - started < 4, "cut off by the 1 s handshake timeout"
        wait_for(
            lambda: stats(admin)[f"{listener}.ssl.connection_error"] >= 25,
            what="every stalled handshake refused and counted",
        )
    assert "TLS handshake timeout" in backend.log
    # Handshakes in progress counted toward the listener's connections, and are gone again.
    wait_for(lambda: stats(admin)[f"{listener}.downstream_cx_active"] == 0, what="none pending")

    backend.wait_log("event=certificate_expiring")
    assert backend.log.count("event=certificate_expiring") == 1
    metrics = series(get(admin, "/stats/prometheus"))
    left = metrics["pysidecar_server_seconds_until_first_cert_expiring"]
    assert 0 < left <= 30
    assert metrics["envoy_server_days_until_first_cert_expiring"] == 0


def test_a_flood_of_tls_connections_is_refused_at_the_limit(mesh_uvloop, tmp_path):
    """Connections still in their handshake count toward the listener's limit: a flood of
    silent TLS clients past it is refused (downstream_cx_overflow), a verified peer's own
    connection goes on."""
    mesh = mesh_uvloop
    pki = Pki(tmp_path / "certs")
    app = mesh.server(echo)
    backend_file, inbound = mesh.backend("backend-1", app.port)
    web_file, outbound = mesh.client("web-1")
    pki.issue("backend-1", "backend")
    pki.issue("web-1", "web")
    wait_ready(
        mesh.start(backend_file, *pki.args("backend-1"), "--limit", "max_connections=20",
                   ready=False),
        mesh.start(web_file, *pki.args("web-1"), ready=False),
    )  # fmt: skip
    admin = admin_port(backend_file)
    with socket.create_connection((LOOPBACK, outbound), timeout=5) as kept:
        kept.sendall(b"before\n")
        assert kept.recv(64) == b"before\n"  # its mTLS connection is open before the flood
        flood = [socket.create_connection((LOOPBACK, inbound), timeout=5) for _ in range(60)]
        assert refused(flood) >= 35  # the admitted 20 wait for a ClientHello meanwhile
        assert stats(admin)[f"listener.127.0.0.1_{inbound}.downstream_cx_overflow"] >= 35
        kept.sendall(b"during\n")
        assert kept.recv(64) == b"during\n"
        for conn in flood:
            conn.close()
