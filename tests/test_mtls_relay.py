"""The L4 relay across an mTLS hop, end to end: client → web's sidecar ⇒ mTLS ⇒ backend's sidecar →
app, on the relay's own TLS transport (`sidecar.transport.tls_transport`).

What a plaintext hop guarantees (test_tcp) must hold over mTLS too: half-close both ways (TLS
1.3 close_notify one way, reading on), resets passed on, back-pressure from a slow reader with
bounded memory, large transfers intact. Every test runs under uvloop and asyncio.
"""

from __future__ import annotations

import hashlib
import socket
import threading

from tests.pki import mtls_pair
from tests.support import (
    LOOPBACK,
    PatternCheck,
    digest_of,
    pattern,
    recv_all,
    wait_for,
    wait_for_stall,
)

MiB = 1024 * 1024
_LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"


def _read_digest(conn: socket.socket, into: dict[str, object]) -> None:
    h = hashlib.sha256()
    total = 0
    while data := conn.recv(MiB):
        h.update(data)
        total += len(data)
    into["digest"], into["bytes"] = h.hexdigest(), total


def test_64_mib_each_way_with_checksums_and_half_close_both_ways(mesh, pki):
    """Both directions at once over the mTLS hop; each side's FIN crosses it (close_notify) and
    the other direction goes on until its own end."""
    size = 64 * MiB
    at_app: dict[str, object] = {}

    def app(conn: socket.socket) -> None:
        reader = threading.Thread(target=_read_digest, args=(conn, at_app))
        reader.start()
        for block in pattern(size, seed=2):
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)
        reader.join()

    pair = mtls_pair(mesh, pki, app)
    at_client: dict[str, object] = {}
    with socket.create_connection((LOOPBACK, pair.outbound), timeout=60) as conn:
        reader = threading.Thread(target=_read_digest, args=(conn, at_client))
        reader.start()
        for block in pattern(size, seed=1):
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)
        reader.join(timeout=120)
    assert at_client == {"digest": digest_of(size, seed=2), "bytes": size}
    wait_for(lambda: "digest" in at_app, what="the app to read to the client's EOF")
    assert at_app == {"digest": digest_of(size, seed=1), "bytes": size}


def test_the_app_half_closes_first_and_still_reads(mesh, pki):
    """The server finishes first (FIN toward the client, across the hop as close_notify); the
    client, having read to EOF, still sends, and the app receives it."""
    late: dict[str, bytes] = {}

    def app(conn: socket.socket) -> None:
        conn.sendall(b"banner " * 10_000)
        conn.shutdown(socket.SHUT_WR)
        late["data"] = recv_all(conn)

    pair = mtls_pair(mesh, pki, app)
    with socket.create_connection((LOOPBACK, pair.outbound), timeout=10) as conn:
        conn.sendall(b"hi")
        assert recv_all(conn) == b"banner " * 10_000
        conn.sendall(b"after your EOF: " + b"z" * 300_000)
        conn.shutdown(socket.SHUT_WR)
        wait_for(lambda: "data" in late, what="the app to read to the client's EOF")
    assert late["data"] == b"hi" + b"after your EOF: " + b"z" * 300_000


def test_the_apps_reset_reaches_the_client_as_a_reset(mesh, pki):
    def app(conn: socket.socket) -> None:
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        conn.close()

    pair = mtls_pair(mesh, pki, app)
    with socket.create_connection((LOOPBACK, pair.outbound), timeout=10) as conn:
        conn.sendall(b"boom")
        try:
            data = conn.recv(10)
        except ConnectionResetError:
            data = None
    assert data is None, "the app's reset must reach the client as a reset, not a clean close"


def test_the_clients_reset_reaches_the_app_as_a_reset(mesh, pki):
    seen: dict[str, object] = {}
    connected = threading.Event()

    def app(conn: socket.socket) -> None:
        conn.sendall(b"ready")
        connected.set()
        try:
            seen["data"] = recv_all(conn)
        except ConnectionResetError:
            seen["data"] = "reset"

    pair = mtls_pair(mesh, pki, app)
    conn = socket.create_connection((LOOPBACK, pair.outbound), timeout=10)
    assert conn.recv(5) == b"ready"
    assert connected.wait(10)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    conn.close()
    wait_for(lambda: "data" in seen, what="the app to see the end of the connection")
    assert seen["data"] == "reset", "the client's reset must reach the app as a reset"


def test_a_slow_reader_pauses_the_app_with_bounded_memory(mesh, pki):
    """The app sends 256 MiB to a client that stops reading: the sidecars pause it rather than
    buffer (the mTLS side's write buffer is bounded by the relay's high-water mark)."""
    size = 256 * MiB
    sent = {"bytes": 0}

    def app(conn: socket.socket) -> None:
        for block in pattern(size, seed=3):
            conn.sendall(block)
            sent["bytes"] += len(block)
        conn.shutdown(socket.SHUT_WR)

    pair = mtls_pair(mesh, pki, app)
    sidecars = (pair.web, pair.backend)
    for sidecar in sidecars:
        sidecar.reset_peak()
    baseline = [s.memory("VmRSS") for s in sidecars]
    with socket.create_connection((LOOPBACK, pair.outbound), timeout=60) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)

        wait_for_stall(sent)
        assert sent["bytes"] < 64 * MiB, "the path buffered far more than its bounds"
        check = PatternCheck(seed=3)
        while data := conn.recv(256 * 1024):
            check.update(data)
    assert check.verdict() == (size, None), "(bytes, offset of the first wrong byte)"
    for sidecar, base in zip(sidecars, baseline, strict=True):
        growth = sidecar.memory("VmHWM") - base
        assert growth < 32 * MiB, f"{sidecar.dataplane_file.name} grew by {growth / MiB:.1f} MiB"


def test_half_close_crosses_the_hop_into_an_undeclared_service_both_ways(mesh, pki):
    """backend declares no protocol: web's outbound sniffs the client's bytes (not HTTP: the
    relay), and backend's inbound tells HTTP/2 from bytes after the handshake. Its connection is
    on the relay's own TLS transport too, so each side's FIN crosses the hop while the other
    direction goes on: the client's (the app answers after it), then the app's (the client
    still sends after it)."""

    def upper_after_eof(conn: socket.socket) -> None:
        conn.sendall(recv_all(conn).upper())

    pair = mtls_pair(mesh, pki, upper_after_eof, protocol=None)
    with socket.create_connection((LOOPBACK, pair.outbound), timeout=10) as conn:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        assert recv_all(conn) == b"HELLO"

    late: dict[str, bytes] = {}

    def banner_first(conn: socket.socket) -> None:
        assert conn.recv(2) == b"hi"
        conn.sendall(b"banner " * 10_000)
        conn.shutdown(socket.SHUT_WR)
        late["data"] = recv_all(conn)

    pair.app.handler = banner_first
    with socket.create_connection((LOOPBACK, pair.outbound), timeout=10) as conn:
        conn.sendall(b"hi")
        assert recv_all(conn) == b"banner " * 10_000
        conn.sendall(b"after your EOF")
        conn.shutdown(socket.SHUT_WR)
    wait_for(lambda: "data" in late, what="the app to read to the client's EOF")
    assert late["data"] == b"after your EOF"
