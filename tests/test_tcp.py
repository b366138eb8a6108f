"""The TCP path end to end: app → outbound sidecar → inbound sidecar → app, over real sockets.

Every test here runs under uvloop and plain asyncio, through the splice relay and the sniffed
Protocol relay (the `mesh` and `pair` fixtures are parametrised).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import TCP_PROTOCOL, TCP_RELAYS, Mesh, tcp_mesh
from tests.support import LOOPBACK, PatternCheck, echo, pattern, recv_all, wait_for, wait_for_stall


@pytest.fixture(params=TCP_RELAYS)
def mesh(request: pytest.FixtureRequest, tmp_path: Path, loop_kind: str) -> Iterator[Mesh]:
    """Every test here twice per loop: through the splice relay and the sniffed Protocol relay."""
    yield from tcp_mesh(tmp_path, loop_kind, request.param)


class SharedPair:
    """app ← backend sidecar ← web sidecar, for every test of one relay and loop: each test
    says what the app does with the connections it makes (`serve`). The app takes the handler
    set when it accepts a connection, which the sidecars open when the test's client connects;
    a test's connections are its own. Starting the pair for each test was most of the time."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.handler: Callable[[socket.socket], None] = echo
        self.port = mesh.pair(lambda conn: self.handler(conn))

    def serve(self, handler: Callable[[socket.socket], None]) -> int:
        """From now on the app runs `handler` per connection; returns web's outbound port."""
        self.handler = handler
        return self.port


@pytest.fixture(
    scope="module",
    params=[(relay, loop) for relay in TCP_RELAYS for loop in ("uvloop", "asyncio")],
    ids=[f"{relay}-{loop}" for relay in TCP_RELAYS for loop in ("uvloop", "asyncio")],
)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedPair]:
    relay, loop = request.param
    mesh = Mesh(tmp_path_factory.mktemp(f"tcp-{relay}-{loop}"), loop, TCP_PROTOCOL[relay])
    try:
        yield SharedPair(mesh)
    finally:
        mesh.close()


MiB = 1024 * 1024


def test_round_trip(pair):
    port = pair.serve(echo)
    with socket.create_connection((LOOPBACK, port)) as c:
        c.sendall(b"hello mesh")
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b"hello mesh"
    # Declared tcp: both sidecars accept raw sockets for the splice relay; sniffed: transports.
    for sidecar in pair.mesh.sidecars:
        assert ("accept=raw" in sidecar.log) == (pair.mesh.protocol == "tcp")


def test_256_mib_each_way_with_checksums(pair):
    """Both directions at once: the client uploads 256 MiB while the app sends 256 MiB back."""
    size = 256 * MiB
    received_by_app: dict[str, tuple[int, int | None]] = {}

    def app(conn):
        def reader():
            check = PatternCheck(seed=1)
            while data := conn.recv(MiB):
                check.update(data)
            received_by_app["verdict"] = check.verdict()

        t = threading.Thread(target=reader)
        t.start()
        for block in pattern(size, seed=2):
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)
        t.join()

    port = pair.serve(app)
    with socket.create_connection((LOOPBACK, port)) as c:
        got = {}

        def reader():
            check = PatternCheck(seed=2)
            while data := c.recv(MiB):
                check.update(data)
            got["verdict"] = check.verdict()

        t = threading.Thread(target=reader)
        t.start()
        for block in pattern(size, seed=1):
            c.sendall(block)
        c.shutdown(socket.SHUT_WR)
        t.join(timeout=120)
    assert got["verdict"] == (size, None), "(bytes, offset of the first wrong byte)"
    wait_for(lambda: "verdict" in received_by_app, what="app to finish reading")
    assert received_by_app["verdict"] == (size, None), "(bytes, offset of the first wrong byte)"


def test_half_close_client_still_reads_reply(pair):
    """The client shuts its write side; the app replies only after EOF, and the reply arrives."""

    def app(conn):
        request = recv_all(conn)
        conn.sendall(b"got " + str(len(request)).encode() + b" bytes: " + request[-5:] * 1000)

    port = pair.serve(app)
    with socket.create_connection((LOOPBACK, port)) as c:
        c.sendall(b"x" * 100_000 + b"hello")
        c.shutdown(socket.SHUT_WR)
        reply = recv_all(c)
    assert reply == b"got 100005 bytes: " + b"hello" * 1000


def test_server_speaks_first(pair):
    def app(conn):
        conn.sendall(b"220 welcome\r\n")
        assert conn.recv(100) == b"QUIT\r\n"
        conn.sendall(b"221 bye\r\n")

    port = pair.serve(app)
    with socket.create_connection((LOOPBACK, port)) as c:
        c.settimeout(10)
        assert c.recv(100) == b"220 welcome\r\n"
        c.sendall(b"QUIT\r\n")
        assert recv_all(c) == b"221 bye\r\n"


def test_reset_is_propagated(pair):
    def app(conn):
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    port = pair.serve(app)
    with socket.create_connection((LOOPBACK, port)) as c:
        c.settimeout(10)
        c.sendall(b"boom")
        try:
            data = c.recv(10)
        except ConnectionResetError:
            data = None
    assert data is None, "the app's reset must reach the client as a reset, not a clean close"


def test_slow_reader_of_1_gib_keeps_memory_bounded(pair):
    """The app sends 1 GiB to a client that first stops reading, then reads slowly-ish.

    While the client does not read, the sidecars must pause the app rather than buffer: their
    peak RSS grows by at most a few MiB whatever the volume.
    """
    size = 1024 * MiB
    sent = {"bytes": 0}

    def app(conn):
        for block in pattern(size, seed=3):
            conn.sendall(block)
            sent["bytes"] += len(block)
        conn.shutdown(socket.SHUT_WR)

    port = pair.serve(app)
    sidecars = pair.mesh.sidecars
    for sidecar in sidecars:
        sidecar.reset_peak()
    baseline = [s.memory("VmRSS") for s in sidecars]
    with socket.create_connection((LOOPBACK, port)) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)

        # Stalled reader: the app gets blocked once the socket buffers and the relay's bounded
        # buffers along the path are full.
        wait_for_stall(sent)
        assert sent["bytes"] < 64 * MiB, "the path buffered far more than its bounds"
        check = PatternCheck(seed=3)
        while data := c.recv(64 * 1024):
            check.update(data)
    assert check.verdict() == (size, None), "(bytes, offset of the first wrong byte)"
    for sidecar, base in zip(sidecars, baseline, strict=True):
        growth = sidecar.memory("VmHWM") - base
        assert growth < 32 * MiB, f"{sidecar.dataplane_file.name} grew by {growth / MiB:.1f} MiB"


def test_1000_concurrent_connections(pair):
    port = pair.serve(echo)

    async def one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        message = f"connection {i}\n".encode()
        writer.write(message)
        await writer.drain()
        return message, reader, writer

    async def main() -> None:
        opened = await asyncio.gather(*(one(i) for i in range(1000)))
        # All 1,000 are open at the same time; now every one gets its own echo back.
        for message, reader, _ in opened:
            assert await asyncio.wait_for(reader.readexactly(len(message)), 30) == message
        for _, _, writer in opened:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, _, w in opened), return_exceptions=True)

    asyncio.run(main())


def test_no_endpoint_closes_the_connection_at_once(mesh):
    web, port = mesh.client("web-1", service="nobody")
    sidecar = mesh.start(web)
    with socket.create_connection((LOOPBACK, port)) as c:
        c.settimeout(5)
        assert recv_all(c) == b""
    sidecar.wait_log("event=no_healthy_upstream")
