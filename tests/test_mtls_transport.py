"""The relay's own TLS transport in-process (`sidecar.transport.tls_transport`), for what needs a
short timeout or a look inside: the idle timeout over TLS, back-pressure counted in bytes, the
TLS 1.2 fallback (no half-close). Real sockets on loopback, real OpenSSL on both ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from pathlib import Path

import pytest

from sidecar.identity.tls import MeshCredentials, client_context, server_context
from sidecar.runner import loop_factory
from sidecar.transport import tls_transport
from sidecar.transport.relay import Relay
from sidecar.transport.tls_transport import TlsTransport
from tests.pki import Pki
from tests.support import start_echo_server

MiB = 1024 * 1024


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = Pki(tmp_path / "certs")
    cert, key = pki.issue("backend-1", "backend")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pki.ca_path)
    client.check_hostname = False
    return server, client


async def _accept_tls(listener: socket.socket, context: ssl.SSLContext):
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(listener)
    sslobj = tls_transport.wrap(context, conn, server_side=True)
    await asyncio.wait_for(tls_transport.handshake(loop, conn, sslobj), 5)
    return conn, sslobj


async def _connect_tls(port: int, context: ssl.SSLContext):
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    sslobj = tls_transport.wrap(context, sock, server_side=False)
    await asyncio.wait_for(tls_transport.handshake(loop, sock, sslobj), 5)
    return sock, sslobj


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    return listener


class Collector(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.digest = hashlib.sha256()
        self.received = 0
        self.paused = 0
        self.eof = asyncio.Event()
        self.lost = asyncio.Event()
        self.error: BaseException | None = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.digest.update(data)
        self.received += len(data)

    def eof_received(self):
        self.eof.set()
        return True

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        pass

    def connection_lost(self, exc):
        self.error = exc
        self.lost.set()


def _run(coro_fn, *args) -> None:
    for kind in ("uvloop", "asyncio"):
        with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
            runner.run(coro_fn(*args))


def test_half_close_both_ways_and_back_pressure_between_two_tls_transports(contexts):
    _run(half_close_and_back_pressure, *contexts)


async def half_close_and_back_pressure(server_ctx, client_ctx):
    loop = asyncio.get_running_loop()
    listener = _listener()
    port = listener.getsockname()[1]
    accepted = loop.create_task(_accept_tls(listener, server_ctx))
    client_sock, client_ssl = await _connect_tls(port, client_ctx)
    server_sock, server_ssl = await accepted
    listener.close()
    server, client = Collector(), Collector()
    server_t = TlsTransport.start(loop, server_sock, server_ssl, server)
    client_t = TlsTransport.start(loop, client_sock, client_ssl, client)
    assert client_t.can_write_eof() and server_t.can_write_eof()  # TLS 1.3
    assert client_t.get_extra_info("ssl_object").version() == "TLSv1.3"

    # The server stops reading: the client's writes pile up to its high-water mark, then
    # it is told to pause; what it buffers stays bounded by what it was asked to write.
    server_t.pause_reading()
    client_t.set_write_buffer_limits(256 * 1024, 64 * 1024)
    block = hashlib.sha256(b"x").digest() * (MiB // 32)
    sent = hashlib.sha256()
    total = 0
    while not client.paused:
        client_t.write(block)
        sent.update(block)
        total += len(block)
        await asyncio.sleep(0)
        assert total < 256 * MiB, "never paused"
    assert client_t.get_write_buffer_size() <= 256 * 1024 + len(block)
    client_t.write_eof()  # close_notify after the buffered bytes, then FIN
    server_t.resume_reading()
    await asyncio.wait_for(server.eof.wait(), 10)
    assert server.received == total and server.digest.hexdigest() == sent.hexdigest()
    # Half-closed: the server still writes, the client still reads.
    server_t.write(b"reply after your EOF")
    server_t.write_eof()
    await asyncio.wait_for(client.eof.wait(), 10)
    assert client.received == len(b"reply after your EOF")
    await asyncio.wait_for(asyncio.gather(client.lost.wait(), server.lost.wait()), 10)
    assert client.error is None and server.error is None
    assert client_sock.fileno() == -1 and server_sock.fileno() == -1


def test_a_peer_half_closing_before_the_hand_over_leaves_our_half_open(contexts):
    _run(half_closed_before_hand_over, *contexts)


async def half_closed_before_hand_over(server_ctx, client_ctx):
    """The outbound mTLS connector holds a new connection in `_ClientGate` while it waits for
    the peer's verdict. When the app behind the peer spoke first and half-closed at once, its
    bytes and close_notify can arrive in that time (a loaded machine): the relay must still get
    a connection it can write to, as when they come after the hand-over."""
    from sidecar.identity.mesh import _ClientGate

    loop = asyncio.get_running_loop()
    listener = _listener()
    accepted = loop.create_task(_accept_tls(listener, server_ctx))
    client_sock, client_ssl = await _connect_tls(listener.getsockname()[1], client_ctx)
    server_sock, server_ssl = await accepted
    listener.close()
    server = Collector()
    server_t = TlsTransport.start(loop, server_sock, server_ssl, server)
    gate = _ClientGate()
    client_t = TlsTransport.start(loop, client_sock, client_ssl, gate)
    server_t.write(b"banner")
    server_t.write_eof()  # the app's half-close, as the peer sidecar passes it on
    deadline = loop.time() + 5
    while not gate.eof:  # read while the gate still holds the connection
        assert loop.time() < deadline, "the peer's close_notify never came"
        await asyncio.sleep(0.005)
    relay_side = Collector()
    gate.hand_over(relay_side)
    assert relay_side.received == len(b"banner") and relay_side.eof.is_set()
    client_t.write(b"after your EOF")
    client_t.write_eof()
    await asyncio.wait_for(server.eof.wait(), 5)
    assert server.received == len(b"after your EOF"), "our half was closed with the peer's"
    await asyncio.wait_for(asyncio.gather(relay_side.lost.wait(), server.lost.wait()), 10)


def test_idle_tls_relay_connection_is_closed(contexts):
    _run(idle_tls_relay, *contexts)


async def idle_tls_relay(server_ctx, client_ctx):
    """client ⇒ TLS ⇒ [TlsTransport ⇄ Relay ⇄ plain] → echo server; the relay idles out."""
    loop = asyncio.get_running_loop()

    upstream, up_port = await start_echo_server()
    listener = _listener()
    closed = asyncio.Event()
    relay = Relay(loop, 0.2, lambda r: closed.set())

    async def connect_upstream():
        await loop.create_connection(lambda: relay.upstream, "127.0.0.1", up_port)
        relay.link()

    relay.downstream.on_made = lambda side: loop.create_task(connect_upstream())

    async def serve():
        conn, sslobj = await _accept_tls(listener, server_ctx)
        TlsTransport.start(loop, conn, sslobj, relay.downstream)

    serving = loop.create_task(serve())
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1],
                                                   ssl=client_ctx)  # fmt: skip
    await serving
    # Timed from before the last bytes: the relay sees the echo go by before we read it, and
    # the timeout counts from there (timing from our read was short by a few ms now and then).
    started = loop.time()
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the idle timeout
    assert loop.time() - started >= 0.2
    await asyncio.wait_for(closed.wait(), 5)
    assert relay.idle_timed_out
    writer.close()
    listener.close()
    upstream.close()
    await upstream.wait_closed()


def test_tls_1_2_relays_without_half_close(contexts):
    server_ctx, client_ctx = contexts
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    _run(tls_1_2, server_ctx, client_ctx)


async def tls_1_2(server_ctx, client_ctx):
    """TLS 1.2 forbids reading after close_notify: no write_eof; data and close still work."""
    loop = asyncio.get_running_loop()
    listener = _listener()
    accepted = loop.create_task(_accept_tls(listener, server_ctx))
    client_sock, client_ssl = await _connect_tls(listener.getsockname()[1], client_ctx)
    server_sock, server_ssl = await accepted
    listener.close()
    server, client = Collector(), Collector()
    server_t = TlsTransport.start(loop, server_sock, server_ssl, server)
    client_t = TlsTransport.start(loop, client_sock, client_ssl, client)
    assert server_ssl.version() == "TLSv1.2"
    assert not server_t.can_write_eof()
    with pytest.raises(NotImplementedError):
        server_t.write_eof()
    client_t.write(b"over TLS 1.2")
    client_t.close()
    await asyncio.wait_for(server.lost.wait(), 10)
    assert server.received == len(b"over TLS 1.2")
    await asyncio.wait_for(client.lost.wait(), 10)


# --- the bulk path: relay read buffer, write buffer, cipher -------------------------------------


def test_mesh_contexts_negotiate_aes_128_gcm(tmp_path: Path):
    """Mesh hops prefer TLS_AES_128_GCM_SHA256 (OpenSSL's default order starts with AES-256):
    between two sidecars, against a client offering AES-256 first (our server's order wins),
    and against a server that follows the client's order (we offer AES-128 first)."""
    pki = Pki(tmp_path / "certs")
    server_creds = MeshCredentials.load(pki.ca_path, *pki.issue("backend-1", "backend"))
    client_creds = MeshCredentials.load(pki.ca_path, *pki.issue("web-1", "web"))
    ours_server, ours_client = server_context(server_creds), client_context(client_creds)
    assert [c["name"] for c in ours_client.get_ciphers()][0] == "TLS_AES_128_GCM_SHA256"

    foreign_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # OpenSSL's order: AES-256 first
    foreign_client.load_verify_locations(pki.ca_path)
    foreign_client.load_cert_chain(*pki.issue("web-2", "web"))
    foreign_client.check_hostname = False
    assert [c["name"] for c in foreign_client.get_ciphers()][0] == "TLS_AES_256_GCM_SHA384"
    client_order_server = server_context(server_creds)
    client_order_server.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    client_order_server.set_ciphers("DEFAULT")  # TLS 1.2 only; 1.3 keeps our suites
    plain_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # OpenSSL's order, client's wins
    plain_server.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    plain_server.load_cert_chain(*pki.issue("backend-2", "backend"))

    async def negotiated(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> list[str]:
        loop = asyncio.get_running_loop()
        listener = _listener()
        accepted = loop.create_task(_accept_tls(listener, server_ctx))
        client_sock, client_ssl = await _connect_tls(listener.getsockname()[1], client_ctx)
        server_sock, server_ssl = await accepted
        listener.close()
        names = [client_ssl.cipher()[0], server_ssl.cipher()[0], client_ssl.version()]
        client_sock.close()
        server_sock.close()
        return names

    async def check() -> None:
        aes128 = "TLS_AES_128_GCM_SHA256"
        assert await negotiated(ours_server, ours_client) == [aes128, aes128, "TLSv1.3"]
        assert await negotiated(ours_server, foreign_client) == [aes128, aes128, "TLSv1.3"]
        assert await negotiated(plain_server, ours_client) == [aes128, aes128, "TLSv1.3"]
        # the control: two OpenSSL defaults agree on AES-256
        aes256 = "TLS_AES_256_GCM_SHA384"
        assert await negotiated(plain_server, foreign_client) == [aes256, aes256, "TLSv1.3"]

    asyncio.run(check())


def test_bulk_both_ways_through_two_relays_and_a_tls_hop(contexts):
    """app client → [plain ⇄ Relay ⇄ TlsTransport] ⇒ TLS ⇒ [TlsTransport ⇄ Relay ⇄ plain] →
    app server, in-process: 24 MiB each way checked by SHA-256, half-close crossing both ways
    (the server answers after the client's EOF), through the relay's shared read buffer and the
    TLS transport's write buffer, with a slow reader (small reads, a small receive buffer) on
    each plain end so that writes are partial and the buffers get held (and replaced)."""
    _run(bulk_through_relays, *contexts)


def _pattern(size: int, seed: bytes) -> bytes:
    block = b"".join(hashlib.sha256(seed + bytes([i])).digest() for i in range(256))  # 8 KiB
    return (block * (size // len(block) + 1))[:size]


async def bulk_through_relays(server_ctx, client_ctx):
    loop = asyncio.get_running_loop()
    upload, download = _pattern(24 * MiB, b"up"), _pattern(24 * MiB, b"down")

    app = socket.socket()
    app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    app.bind(("127.0.0.1", 0))
    app.listen()
    app_port = app.getsockname()[1]

    def app_server() -> str:
        conn, _ = app.accept()
        with conn:
            digest = hashlib.sha256()
            while chunk := conn.recv(4096):  # slow: many small reads
                digest.update(chunk)
            conn.sendall(download)  # after the client's EOF came through the hop
            return digest.hexdigest()

    relays: list[Relay] = []
    # Sidecar B: TLS in, plain out to the app
    tls_listener = _listener()

    async def serve_b() -> None:
        conn, sslobj = await _accept_tls(tls_listener, server_ctx)
        relay = Relay(loop, 60)
        relays.append(relay)

        async def connect_app() -> None:
            await loop.create_connection(lambda: relay.upstream, "127.0.0.1", app_port)
            relay.link()

        relay.downstream.on_made = lambda side: loop.create_task(connect_app())
        TlsTransport.start(loop, conn, sslobj, relay.downstream)

    # Sidecar A: plain in from the app client, TLS out to B
    def relay_a() -> asyncio.Protocol:
        relay = Relay(loop, 60)
        relays.append(relay)

        async def connect_b() -> None:
            sock, sslobj = await _connect_tls(tls_listener.getsockname()[1], client_ctx)
            TlsTransport.start(loop, sock, sslobj, relay.upstream)
            relay.link()

        relay.downstream.on_made = lambda side: loop.create_task(connect_b())
        return relay.downstream

    serving_b = loop.create_task(serve_b())
    server_a = await loop.create_server(relay_a, "127.0.0.1", 0)
    a_port = server_a.sockets[0].getsockname()[1]

    def app_client() -> str:
        with socket.create_connection(("127.0.0.1", a_port), timeout=30) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            conn.sendall(upload)
            conn.shutdown(socket.SHUT_WR)  # half-close: the answer still comes back
            digest = hashlib.sha256()
            while chunk := conn.recv(4096):
                digest.update(chunk)
            return digest.hexdigest()

    server_done = asyncio.ensure_future(asyncio.to_thread(app_server))
    client_digest = await asyncio.wait_for(asyncio.to_thread(app_client), 120)
    server_digest = await asyncio.wait_for(server_done, 10)
    await serving_b
    assert server_digest == hashlib.sha256(upload).hexdigest()
    assert client_digest == hashlib.sha256(download).hexdigest()
    for relay in relays:
        assert relay.downstream.rx_bytes + relay.upstream.rx_bytes == 48 * MiB
    if tls_transport._LIBSSL.buffers_ok:
        assert tls_transport._LIBSSL.spare_buffers  # write buffers were put on and taken off
    server_a.close()
    tls_listener.close()
    app.close()
