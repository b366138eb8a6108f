"""What an idle mTLS connection of the relay's own TLS transport keeps (issue 8: 10,000 idle
connections through one sidecar). Real sockets on 127.0.0.1, real OpenSSL at both ends, mesh
contexts as the sidecars make them (TLS 1.3, two NewSessionTickets per handshake).

- OpenSSL's record buffers go back once a connection is idle: the write buffer that reading
  the server's NewSessionTickets sets up on every client connection (16.5 KiB, which
  SSL_MODE_RELEASE_BUFFERS never frees), and the read buffer (32 KiB of read-ahead) of a
  connection that got the peer's close_notify and stays half-open. Measured as glibc sees it
  (bytes in use), against the same connections with the release turned off.
- A connection's I/O callbacks do not keep what the code that opened it had set in its context.
- A client resumes from the session it is offered without the ssl module's copy of it, and
  still resumes (through the copy) from a session OpenSSL marked not resumable.
- The mesh connector keeps the session it offers to an endpoint for every later connection,
  and takes another only when that one expired, was marked, or was not taken by the peer.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import gc
import socket
import ssl
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from sidecar.identity import mesh
from sidecar.identity.mesh import _EndpointState
from sidecar.identity.tls import MeshCredentials, client_context, server_context
from sidecar.runner import loop_factory
from sidecar.transport import tls_transport
from sidecar.transport.tls_transport import _LIBSSL, TlsTransport
from tests.pki import Pki

CONNECTIONS = 32
RECORD_BUFFER = 16 * 1024  # an OpenSSL record buffer is a little more


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "certs")


@pytest.fixture
def contexts(pki: Pki) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = server_context(MeshCredentials.load(pki.ca_path, *pki.issue("backend-1", "backend")))
    client = client_context(MeshCredentials.load(pki.ca_path, *pki.issue("web-1", "web")))
    return server, client


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _malloc_in_use() -> int | None:
    """Bytes glibc has handed out (heap and mmap), or None without glibc's mallinfo2."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    gc.collect()
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class Peer(asyncio.Protocol):
    """Echoes (the server's side) or remembers (the client's) what it reads."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.transport: asyncio.Transport | None = None
        self.got = asyncio.Event()
        self.eof = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)
        self.got.set()

    def eof_received(self) -> bool:
        self.eof.set()
        return True  # stay half-open: the other direction may go on

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof.set()


async def _pair(
    listener: socket.socket,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
    bounded: bool = True,
) -> tuple[TlsTransport, Peer, TlsTransport, Peer, ssl.SSLObject]:
    """A handshaken pair of transports, one byte echoed (the client has read the server's
    tickets by then: they come before the echo). `bounded`: each step within 5 s (a timer,
    whose handle keeps the context it was made in until it is due)."""
    loop = asyncio.get_running_loop()

    def within(aw: Any) -> Any:
        return asyncio.wait_for(aw, 5) if bounded else aw

    async def accept() -> tuple[socket.socket, ssl.SSLObject]:
        conn, _ = await loop.sock_accept(listener)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the sidecars do
        sslobj = tls_transport.wrap(server_ctx, conn, server_side=True)
        await within(tls_transport.handshake(loop, conn, sslobj))
        return conn, sslobj

    accepted = loop.create_task(accept())
    sock = socket.socket()
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await loop.sock_connect(sock, listener.getsockname())
    client_ssl = tls_transport.wrap(
        client_ctx, sock, server_side=False, server_hostname="backend", session=session
    )
    await within(tls_transport.handshake(loop, sock, client_ssl))
    conn, server_ssl = await accepted
    server, client = Peer(echo=True), Peer(echo=False)
    server_t = TlsTransport.start(loop, conn, server_ssl, server)
    client_t = TlsTransport.start(loop, sock, client_ssl, client)
    client_t.write(b"i")
    await within(client.got.wait())
    return server_t, server, client_t, client, client_ssl


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(CONNECTIONS)
    listener.setblocking(False)
    return listener


async def _idle_and_half_closed(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, count: int = CONNECTIONS
) -> tuple[float, float]:
    """Bytes in use per connection (client and server) once `count` are idle, and what a
    close_notify from every client added."""
    listener = _listener()
    before = _malloc_in_use()
    assert before is not None
    pairs = [await _pair(listener, server_ctx, client_ctx) for _ in range(count)]
    await asyncio.sleep(0.01)
    idle = _malloc_in_use()
    assert idle is not None
    for _server_t, server, client_t, _client, _ in pairs:
        client_t.write_eof()
        await asyncio.wait_for(server.eof.wait(), 5)
    half_closed = _malloc_in_use()
    assert half_closed is not None
    for server_t, _, client_t, _, _ in pairs:
        client_t.abort()
        server_t.abort()
    listener.close()
    return (idle - before) / count, (half_closed - idle) / count


@pytest.mark.skipif(_LIBSSL.free_buffers is None, reason="no SSL_free_buffers safe to call")
@pytest.mark.skipif(_malloc_in_use() is None, reason="needs glibc's mallinfo2")
def test_idle_connections_give_back_openssl_record_buffers(contexts, monkeypatch):
    server_ctx, client_ctx = contexts
    asyncio.run(_idle_and_half_closed(server_ctx, client_ctx, 4))  # what is made once
    per_conn, per_close = asyncio.run(_idle_and_half_closed(server_ctx, client_ctx))
    monkeypatch.setattr(_LIBSSL, "free_buffers", None)  # OpenSSL's own RELEASE_BUFFERS only
    kept_conn, kept_close = asyncio.run(_idle_and_half_closed(server_ctx, client_ctx))
    # Without the release every client keeps the write buffer its tickets set up...
    assert kept_conn - per_conn > 0.75 * RECORD_BUFFER, (per_conn, kept_conn)
    # ... and every server that read a close_notify keeps its read buffer while half-open.
    assert kept_close - per_close > 1.5 * RECORD_BUFFER, (per_close, kept_close)
    assert per_close < RECORD_BUFFER / 4, per_close
    # What an idle pair keeps (client, server, this test's objects): OpenSSL's connection
    # state (8.6 KB SSL object, 2 KB of AES-GCM contexts, the session with the peer's
    # certificate, ... at each end) and no record buffer.
    assert per_conn < 4 * RECORD_BUFFER, per_conn


class _Marker:
    """Something the opener of a connection keeps in a context variable."""


_OPENER_STATE: contextvars.ContextVar[_Marker | None] = contextvars.ContextVar(
    "test_opener_state", default=None
)


async def _context_not_kept(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    listener = _listener()
    marker = _Marker()
    gone = weakref.ref(marker)
    token = _OPENER_STATE.set(marker)  # as the mesh connector sets its session to offer
    try:
        server_t, _, client_t, client, _ = await _pair(
            listener, server_ctx, client_ctx, bounded=False
        )
    finally:
        _OPENER_STATE.reset(token)
    del marker
    gc.collect()
    assert gone() is None, gc.get_referrers(gone())
    # ... and the connection still works: reading, and writing when the socket is full
    client.got.clear()
    client_t.write(b"again")
    await asyncio.wait_for(client.got.wait(), 5)
    client_t.abort()
    server_t.abort()
    listener.close()


def test_connection_callbacks_do_not_keep_the_openers_context(contexts):
    for kind in ("uvloop", "asyncio"):
        with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
            runner.run(_context_not_kept(*contexts))


async def _resumptions(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, rotated: ssl.SSLContext
) -> None:
    listener = _listener()
    first = await _pair(listener, server_ctx, client_ctx)
    session = first[4].session
    assert session is not None and session.has_ticket
    assert not first[4].session_reused
    assert _LIBSSL.session_pointer(session, client_ctx) is not None  # shared, not copied
    resumed = [await _pair(listener, server_ctx, client_ctx, session) for _ in range(3)]
    assert [pair[4].session_reused for pair in resumed] == [True, True, True]
    # A session of another context (before a rotation) is not offered: a full handshake.
    other = await _pair(listener, server_ctx, rotated, session)
    assert not other[4].session_reused
    # The connection whose session it is ends without a close_notify: OpenSSL marks the
    # session not resumable; offered through the ssl module's copy, it still resumes.
    latest = resumed[-1][4].session
    for server_t, _, client_t, _, _ in (*resumed, other):
        client_t.abort()
        server_t.abort()
    del resumed, other, server_t, client_t  # the last references to their SSL objects
    await asyncio.sleep(0.01)
    gc.collect()
    assert latest is not None and _LIBSSL.session_pointer(latest, client_ctx) is None
    again = await _pair(listener, server_ctx, client_ctx, latest)
    assert again[4].session_reused
    for server_t, _, client_t, _, _ in (first, again):
        client_t.abort()
        server_t.abort()
    listener.close()


@pytest.mark.skipif(not _LIBSSL.ok, reason="the ssl module's objects cannot be looked into")
def test_resumes_from_a_shared_session(contexts, pki: Pki):
    server_ctx, client_ctx = contexts
    # what a rotation makes: a new context (here from the same files)
    rotated = client_context(MeshCredentials.load(pki.ca_path, *pki.issue("web-1", "web")))
    asyncio.run(_resumptions(server_ctx, client_ctx, rotated))


# --- the mesh connector's session to offer (`_EndpointState`) ------------------------------------


async def _offers(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    restarted: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = _listener()
    state = _EndpointState(generation=1)
    pairs = []

    async def connect(server: ssl.SSLContext = server_ctx) -> tuple[Any, ...]:
        """One connection as the connector makes it: offer, connect, record."""
        session = state.session_to_offer(client_ctx)
        pair = await _pair(listener, server, client_ctx, session)
        state.connected(pair[4], session)
        pairs.append(pair)
        return (session, *pair)

    first = await connect()
    assert first[0] is None and not first[5].session_reused
    # Every later connection resumes from the one session kept, the same object each time:
    # not the latest connection's, taken anew after every connection (each connection then
    # resumed from another session: about 2 KB more per idle connection at sidecar A).
    later = [await connect() for _ in range(4)]
    kept = later[0][0]
    assert kept is not None and all(offer[0] is kept for offer in later)
    assert all(offer[5].session_reused for offer in later)
    assert tls_transport.shares_session(kept, client_ctx)
    # The peer no longer takes it (restarted: other ticket keys): a full handshake, and the
    # next connection offers that connection's session, which the peer takes.
    full = await connect(restarted)
    assert full[0] is kept and not full[5].session_reused
    after = await connect(restarted)
    assert after[0] is not None and after[0] is not kept and after[5].session_reused
    kept = after[0]
    # The connection whose session is kept ends without a close_notify: OpenSSL marks the
    # session not resumable. The next offer is none (not the marked one, which would go
    # through the ssl module's copy for every connection, and resumed connections get no new
    # ticket): a full handshake, whose session the one after it resumes from.
    owner = next(pair for pair in pairs if pair[4].session is not None and _same(pair, kept))
    owner[2].abort()
    owner[0].abort()
    pairs.remove(owner)
    del owner, full, after, later, first
    await asyncio.sleep(0.01)  # the aborts' connection_lost callbacks
    gc.collect()
    assert not tls_transport.shares_session(kept, client_ctx)
    renewed = await connect(restarted)
    assert renewed[0] is None and not renewed[5].session_reused
    fresh = await connect(restarted)
    assert fresh[0] is not None and fresh[0] is not kept and fresh[5].session_reused
    assert tls_transport.shares_session(fresh[0], client_ctx)
    del renewed
    # An expired session is not offered (the server would refuse it): a full handshake.
    later_time = time.time() + fresh[0].timeout + 1
    monkeypatch.setattr(mesh.time, "time", lambda: later_time)
    assert state.session_to_offer(client_ctx) is None
    monkeypatch.undo()
    # A failed connection: nothing is offered.
    again = await connect(restarted)
    assert again[0] is not None
    state.forget()
    assert state.session_to_offer(client_ctx) is None
    for server_t, _, client_t, _, _ in pairs:
        client_t.abort()
        server_t.abort()
    listener.close()


def _same(pair: tuple[Any, ...], session: ssl.SSLSession) -> bool:
    """`pair`'s client connection holds `session` itself (not another of the same ticket)."""
    current = pair[4].session
    base = object.__basicsize__
    return bool(
        ctypes.c_void_p.from_address(id(current) + base).value
        == ctypes.c_void_p.from_address(id(session) + base).value
    )


@pytest.mark.skipif(not _LIBSSL.ok, reason="the ssl module's objects cannot be looked into")
def test_the_connector_keeps_the_session_it_offers(contexts, pki: Pki, monkeypatch):
    server_ctx, client_ctx = contexts
    # a restarted peer: a new server context (new ticket keys), the same credentials
    restarted = server_context(
        MeshCredentials.load(pki.ca_path, *pki.issue("backend-1", "backend"))
    )
    asyncio.run(_offers(server_ctx, client_ctx, restarted, monkeypatch))
