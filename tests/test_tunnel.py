"""Tunnels over an http-tagged service (HTTP/1.1 upgrade at both apps, RFC 8441 extended
CONNECT on the mesh hop) where the sidecars forward bytes from `data_received` (the relay of
sidecar.http.tunnel) and fall back to the router's tasks when the other side cannot take them.

Raw sockets at both ends, so that a side can stop reading at will: what is checked is that a
stalled reader stops the sender (no unbounded buffering in the sidecars), that the bytes arrive
whole and in order across the switches between the two paths, that half-close still travels,
and that a busy tunnel is not cut by the stream idle timeout (the relay counts as activity).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

from tests.support import (
    LOOPBACK,
    PatternCheck,
    digest_of,
    pattern,
    wait_for,
    wait_for_stall,
    wait_ready,
)

MiB = 1024 * 1024

UPGRADE = (
    b"GET /tunnel HTTP/1.1\r\nHost: tunnel\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP head (up to its blank line) and what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"closed before the end of the head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def accept_upgrade(conn: socket.socket) -> bytes:
    """The app's side of the handshake; returns tunnel bytes that came with the head."""
    head, rest = read_head(conn)
    assert head.lower().startswith(b"get /tunnel "), head
    conn.sendall(SWITCHED)
    return rest


def open_tunnel(port: int, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    conn = socket.socket()
    if rcvbuf is not None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    conn.connect((LOOPBACK, port))
    conn.settimeout(60)
    conn.sendall(UPGRADE)
    head, rest = read_head(conn)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return conn, rest


def http_tunnel(mesh, app) -> int:
    """An http-tagged service whose app runs `app(conn)` per connection; the client's outbound."""
    server = mesh.server(app)
    backend, _ = mesh.backend("tunnel-1", server.port, tags={"kuma.io/protocol": "http"})
    web, port = mesh.client("web-1")
    wait_ready(mesh.start(backend, ready=False), mesh.start(web, ready=False))
    return port


def test_app_sending_to_a_stalled_client_is_held_back(mesh):
    """The app sends 256 MiB into the tunnel; the client first reads nothing. The relays write
    until the client's socket pushes back, then the bodies fill and both hops stop (HTTP/2
    credit withheld at B, reading paused): the app is stalled with a bounded amount in flight,
    and the sidecars' memory stays bounded. Then everything arrives, in order."""
    size = 256 * MiB
    sent = {"bytes": 0}

    def app(conn: socket.socket) -> None:
        accept_upgrade(conn)
        for block in pattern(size, seed=5):
            conn.sendall(block)
            sent["bytes"] += len(block)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):  # until the client half-closes too
            pass

    port = http_tunnel(mesh, app)
    for sidecar in mesh.sidecars:
        sidecar.reset_peak()
    baseline = [s.memory("VmRSS") for s in mesh.sidecars]
    client, rest = open_tunnel(port, rcvbuf=64 * 1024)
    with client:
        wait_for_stall(sent)
        assert sent["bytes"] < 64 * MiB, "the path buffered far more than its bounds"
        check = PatternCheck(seed=5)
        check.update(rest)
        while data := client.recv(256 * 1024):
            check.update(data)
        client.shutdown(socket.SHUT_WR)
    assert check.verdict() == (size, None), "(bytes, offset of the first wrong byte)"
    for sidecar, base in zip(mesh.sidecars, baseline, strict=True):
        growth = sidecar.memory("VmHWM") - base
        assert growth < 32 * MiB, f"{sidecar.dataplane_file.name} grew by {growth / MiB:.1f} MiB"


def test_client_sending_to_a_stalled_app_is_held_back_then_half_closes(mesh):
    """The other way: the client sends 128 MiB while the app reads nothing until told. The
    sender is stalled with a bounded amount in flight; once the app reads, the bytes arrive
    whole and in order, the client's half-close reaches the app as EOF, and the app's answer
    still travels back on the open half."""
    size = 128 * MiB
    sent = {"bytes": 0}
    go = threading.Event()
    outcome: dict[str, object] = {}

    def app(conn: socket.socket) -> None:
        rest = accept_upgrade(conn)
        go.wait(60)
        digest = hashlib.sha256(rest)
        total = len(rest)
        while data := conn.recv(256 * 1024):
            digest.update(data)
            total += len(data)
        outcome["total"] = total
        conn.sendall(digest.hexdigest().encode())
        conn.shutdown(socket.SHUT_WR)

    port = http_tunnel(mesh, app)
    for sidecar in mesh.sidecars:
        sidecar.reset_peak()
    baseline = [s.memory("VmRSS") for s in mesh.sidecars]
    client, rest = open_tunnel(port)
    assert rest == b""

    def send() -> None:
        for block in pattern(size, seed=6):
            client.sendall(block)
            sent["bytes"] += len(block)
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    with client:
        wait_for_stall(sent)
        assert sent["bytes"] < 64 * MiB, "the path buffered far more than its bounds"
        go.set()
        sender.join(120)
        assert not sender.is_alive()
        answer = b""
        while data := client.recv(65536):
            answer += data
    assert outcome["total"] == size
    assert answer.decode() == digest_of(size, seed=6)
    for sidecar, base in zip(mesh.sidecars, baseline, strict=True):
        growth = sidecar.memory("VmHWM") - base
        assert growth < 32 * MiB, f"{sidecar.dataplane_file.name} grew by {growth / MiB:.1f} MiB"


def test_small_messages_keep_their_order_across_both_paths(mesh):
    """A hundred thousand small numbered messages sent without waiting for their echoes, to an
    app that echoes in small pieces, while the client reads nothing until the sender is held
    back: the relays forward while the client's socket takes bytes, then the bodies queue and
    the router's tasks carry them, then the relays again once the client reads. None
    overtakes another, none is lost."""
    count = 100_000
    sent = {"bytes": 0}

    def app(conn: socket.socket) -> None:
        rest = accept_upgrade(conn)
        if rest:
            conn.sendall(rest)
        while data := conn.recv(7):  # small reads: many small frames each way
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    port = http_tunnel(mesh, app)
    client, rest = open_tunnel(port, rcvbuf=4096)

    def send() -> None:
        for i in range(count):
            client.sendall(b"message %06d;" % i)
            sent["bytes"] += 1
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    with client:
        wait_for_stall(sent, timeout=60)
        received = [rest]
        while data := client.recv(65536):
            received.append(data)
        sender.join(30)
    assert b"".join(received) == b"".join(b"message %06d;" % i for i in range(count))


def test_busy_tunnel_is_not_cut_by_the_stream_idle_timeout(mesh_uvloop):
    """Bytes moved by the relays count as activity: a tunnel exchanging a message every 0.1 s
    outlives several stream idle timeouts of 0.5 s, on both sidecars."""
    server = mesh_uvloop.server(lambda conn: (accept_upgrade(conn), _echo(conn)))
    backend, _ = mesh_uvloop.backend("tunnel-1", server.port, tags={"kuma.io/protocol": "http"})
    web, port = mesh_uvloop.client("web-1")
    wait_ready(
        mesh_uvloop.start(backend, "--stream-idle-timeout", "0.5", ready=False),
        mesh_uvloop.start(web, "--stream-idle-timeout", "0.5", ready=False),
    )
    client, _ = open_tunnel(port)
    with client:
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 2.0:
            message = b"ping %d" % i
            client.sendall(message)
            got = b""
            while len(got) < len(message):
                data = client.recv(65536)
                assert data, f"tunnel closed after {time.monotonic() - started:.2f} s"
                got += data
            assert got == message
            i += 1
            time.sleep(0.1)  # pacing: one message per 0.1 s, well inside the idle timeout
    for sidecar in mesh_uvloop.sidecars:
        assert "event=stream_idle_timeout" not in sidecar.log
    # Left silent, it is cut.
    client, _ = open_tunnel(port)
    with client:
        wait_for(
            lambda: any("event=stream_idle_timeout" in s.log for s in mesh_uvloop.sidecars),
            what="the idle tunnel to be cut",
        )


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def test_tunnel_bytes_are_counted_both_ways_on_both_sidecars(mesh_uvloop, tmp_path):
    """Bytes forwarded by the relays are counted as the router's reads counted them: the access
    log line of the tunnel has the exact byte counts each way, at both sidecars."""
    up, down = 12_345, 54_321  # client → app, app → client

    def app(conn: socket.socket) -> None:
        rest = accept_upgrade(conn)
        total = len(rest)
        while total < up:
            data = conn.recv(65536)
            assert data
            total += len(data)
        for i in range(0, down, 1000):  # many small writes: many relayed chunks
            conn.sendall(b"d" * min(1000, down - i))
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass

    server = mesh_uvloop.server(app)
    backend, _ = mesh_uvloop.backend("tunnel-1", server.port, tags={"kuma.io/protocol": "http"})
    logs = [tmp_path / "backend-access.log", tmp_path / "web-access.log"]
    web, port = mesh_uvloop.client("web-1")
    wait_ready(
        mesh_uvloop.start(backend, "--access-log", str(logs[0]), ready=False),
        mesh_uvloop.start(web, "--access-log", str(logs[1]), ready=False),
    )
    client, rest = open_tunnel(port)
    with client:
        for i in range(0, up, 100):
            client.sendall(b"u" * min(100, up - i))
        received = len(rest)
        while data := client.recv(65536):
            received += len(data)
        client.shutdown(socket.SHUT_WR)
    assert received == down
    for log in logs:
        wait_for(lambda log=log: log.exists() and log.read_text().strip(), what=f"{log.name}")
        line = log.read_text().splitlines()[0]
        assert f" 101 - {up} {down} " in line, line
