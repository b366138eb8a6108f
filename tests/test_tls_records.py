"""Our TLS 1.3 record layer after the handshake (`sidecar.transport.tls_records`) and the hand-over
of a resumed connection from OpenSSL to it (`tls_handoff`, `TlsTransport.detach`).

- Against OpenSSL itself, in memory: the ssl module's client keeps OpenSSL; the server's side
  of the same connection is our record layer from the moment OpenSSL's handshake ended (the
  traffic secrets from OpenSSL's own key log file). Data both ways, the NewSessionTickets a
  client gets after a full handshake, OpenSSL's KeyUpdate asking for ours (`SSL_key_update`
  through ctypes), ours past the write limit, close_notify.
- Two record layers: padding, empty records, alerts, and every record the peer may not send.
- Real sockets on 127.0.0.1 with the mesh contexts: a full handshake stays OpenSSL's (the
  client needs the tickets), a resumed one is handed over at both ends, the server sends no
  ticket, and data, half-close and a reset cross as before; OpenSSL's objects are freed
  without marking the shared session.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import socket
import ssl
from pathlib import Path

import pytest

from sidecar.transport import tls_handoff, tls_records
from sidecar.transport.tls_records import RecordError, RecordLayer
from sidecar.transport.tls_transport import _LIBSSL, shares_session
from tests.pki import Pki
from tests.test_tls_idle_memory import _listener, _pair

pytestmark = pytest.mark.skipif(
    not tls_records.supported() or not tls_handoff._LIB.ok,
    reason="no AEAD decrypting into a buffer, or OpenSSL's objects cannot be reached",
)
SUITE = "TLS_AES_128_GCM_SHA256"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "certs")


# --- against OpenSSL, in memory ------------------------------------------------------------------


def _secrets(keylog: Path) -> tuple[bytes, bytes]:
    found = {}
    for line in keylog.read_text().splitlines():
        if line.startswith("#"):
            continue
        label, _random, secret = line.split()
        found[label] = bytes.fromhex(secret)
    return found["CLIENT_TRAFFIC_SECRET_0"], found["SERVER_TRAFFIC_SECRET_0"]


class _OpenSslClient:
    """An ssl-module client in memory, its server's side of the wire left to the test."""

    def __init__(self, pki: Pki, keylog: Path) -> None:
        from sidecar.identity.tls import MeshCredentials, client_context, server_context

        self.server_ctx = server_context(
            MeshCredentials.load(pki.ca_path, *pki.issue("backend-1", "backend"))
        )
        self.server_ctx.keylog_filename = str(keylog)
        client_ctx = client_context(MeshCredentials.load(pki.ca_path, *pki.issue("web-1", "web")))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="backend")
        s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = self.server_ctx.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):  # the handshake, both OpenSSL's
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            s_in.write(self.outgoing.read())
            try:
                server.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.incoming.write(s_out.read())
        self.incoming.write(s_out.read())  # the server's Finished... and its two tickets
        self.client.do_handshake()
        assert self.client.version() == "TLSv1.3"
        # what the server wrote after its handshake: NewSessionTickets, under its first keys
        self.tickets = 2

    def read(self) -> bytes:
        try:
            return self.client.read(1 << 20)
        except ssl.SSLWantReadError:
            return b""


def _open_all(layer: RecordLayer, wire: bytes) -> bytes:
    out = bytearray()
    start = 0
    spare = memoryview(bytearray(tls_records.MAX_RECORD))
    while start < len(wire):
        stop = RecordLayer.frame(wire, start, len(wire))
        assert stop > 0, "a whole number of records"
        got = layer.open(memoryview(wire)[start:stop], spare)
        out += spare[:got]
        start = stop
    return bytes(out)


def _our_server(pki: Pki, tmp_path: Path) -> tuple[_OpenSslClient, RecordLayer]:
    """An OpenSSL client, and its server's records ours from the end of the handshake."""
    keylog = tmp_path / "keys.log"
    peer = _OpenSslClient(pki, keylog)
    client_secret, server_secret = _secrets(keylog)
    ours = RecordLayer(SUITE, client_secret, server_secret, client=False)
    # The server's two tickets went under its first write keys: ours go on from there.
    for _ in range(peer.tickets):
        ours._write.next_nonce()
    assert peer.read() == b""  # the tickets, taken by OpenSSL
    return peer, ours


def test_our_server_records_talk_with_an_openssl_client(pki: Pki, tmp_path: Path, monkeypatch):
    peer, ours = _our_server(pki, tmp_path)

    # Data both ways, a record of 16 KiB and more.
    peer.client.write(b"hello " * 5000)
    assert _open_all(ours, peer.outgoing.read()) == b"hello " * 5000
    out = bytearray()
    ours.seal(b"world " * 5000, out)
    peer.incoming.write(bytes(out))
    assert peer.read() + peer.read() + peer.read() == b"world " * 5000

    # OpenSSL asks for a KeyUpdate: its next record is under new keys, and so is ours after
    # the KeyUpdate we send back before any more data.
    pointer = _LIBSSL.pointer(peer.client._sslobj, -1)
    assert pointer is not None
    lib = ctypes.CDLL(__import__("_ssl").__file__)
    lib.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    assert lib.SSL_key_update(pointer, 1) == 1  # SSL_KEY_UPDATE_REQUESTED
    peer.client.write(b"after the update")
    assert _open_all(ours, peer.outgoing.read()) == b"after the update"
    assert ours.reply is not None and ours.read_sequence == 1
    reply = bytes(ours.reply)
    ours.reply = None
    out = bytearray()
    ours.seal(b"answered", out)
    peer.incoming.write(reply + bytes(out))
    assert peer.read() == b"answered"

    # Ours, unasked, past the write limit: OpenSSL follows.
    monkeypatch.setattr(tls_records, "KEY_UPDATE_AFTER", ours.write_sequence + 1)
    out = bytearray()
    ours.seal(b"one", out)
    ours.seal(b"two", out)
    assert ours.write_sequence == 1  # the update, then "two" under the new keys
    peer.incoming.write(bytes(out))
    assert peer.read() + peer.read() == b"onetwo"

    # close_notify each way
    peer.incoming.write(ours.alert(tls_records.CLOSE_NOTIFY))
    assert peer.client.read(10) == b""  # the ssl module's clean EOF
    lib.SSL_shutdown.argtypes = [ctypes.c_void_p]
    lib.SSL_shutdown(pointer)
    with pytest.raises(ssl.SSLZeroReturnError):
        _open_all(ours, peer.outgoing.read())


def test_a_key_update_due_inside_one_write_comes_between_its_records(
    pki: Pki, tmp_path: Path, monkeypatch
):
    """A write of five records whose third reaches the limit: our KeyUpdate goes between the
    second and the third, under the old keys, and OpenSSL reads all five."""
    peer, ours = _our_server(pki, tmp_path)
    monkeypatch.setattr(tls_records, "KEY_UPDATE_AFTER", ours.write_sequence + 2)
    data = bytes(range(256)) * (4 * tls_records.MAX_PLAINTEXT // 256) + b"tail"
    wire = bytearray()
    ours.seal(data, wire)
    assert len(wire) == len(data) + 5 * (5 + 1 + 16) + (5 + 5 + 1 + 16)
    assert ours.write_sequence == 3  # the last three records under the new keys
    peer.incoming.write(bytes(wire))
    got = b""
    while len(got) < len(data):
        chunk = peer.read()
        assert chunk, "OpenSSL read every record"
        got += chunk
    assert got == data


def test_a_client_record_layer_ignores_the_tickets_after_a_full_handshake(pki, tmp_path):
    keylog = tmp_path / "keys.log"
    _OpenSslClient(pki, keylog)
    client_secret, server_secret = _secrets(keylog)
    # Play the client now: the tickets the server would send are OpenSSL server records; make
    # two as OpenSSL would and read them as the client's record layer does.
    server = RecordLayer(SUITE, client_secret, server_secret, client=False)
    client = RecordLayer(SUITE, server_secret, client_secret, client=True)
    ticket = bytes((tls_records.NEW_SESSION_TICKET, 0, 0, 8)) + bytes(8)
    wire = bytearray()
    server._seal(tls_records.HANDSHAKE, ticket, wire)
    server._seal(tls_records.HANDSHAKE, ticket[:3], wire)  # one split across two records
    server._seal(tls_records.HANDSHAKE, ticket[3:], wire)
    server.seal(b"data", wire)
    assert _open_all(client, bytes(wire)) == b"data"
    # ...which a server may not receive
    wire = bytearray()
    client._seal(tls_records.HANDSHAKE, ticket, wire)
    with pytest.raises(RecordError) as caught:
        _open_all(server, bytes(wire))
    assert caught.value.alert == tls_records.UNEXPECTED_MESSAGE


# --- two record layers: what a peer may not send -------------------------------------------------


def _layers() -> tuple[RecordLayer, RecordLayer]:
    a, b = bytes(range(32)), bytes(range(32, 64))
    return RecordLayer(SUITE, b, a, client=True), RecordLayer(SUITE, a, b, client=False)


def _protect(layer: RecordLayer, inner: bytes) -> bytes:
    """A record whose inner plaintext (content, type, padding) is exactly `inner`."""
    keys = layer._write
    size = len(inner) + tls_records.TAG
    header = bytes((23, 3, 3, size >> 8, size & 0xFF))
    return header + keys.aead.encrypt(keys.next_nonce(), inner, header)


def test_padding_and_empty_records_are_read():
    client, server = _layers()
    wire = _protect(client, b"padded\x17" + bytes(300)) + _protect(client, b"\x17")
    wire += _protect(client, b"!\x17")
    assert _open_all(server, wire) == b"padded!"


@pytest.mark.parametrize(
    ("inner", "alert"),
    [
        (bytes(40), tls_records.UNEXPECTED_MESSAGE),  # no content type
        (b"x" * (tls_records.MAX_PLAINTEXT + 1) + b"\x17", tls_records.RECORD_OVERFLOW),
        (b"\x01\x00\x00\x00\x16", tls_records.UNEXPECTED_MESSAGE),  # ClientHello after it all
        (b"\x18\x00\x00\x01\x05\x16", tls_records.ILLEGAL_PARAMETER),  # KeyUpdate(5)
        (b"\x18\x00\x00\x01\x00\x18\x00\x16", tls_records.UNEXPECTED_MESSAGE),  # data after it
        (b"\x02\x00\x01\x15", tls_records.DECODE_ERROR),  # an alert of three bytes
        (b"x\x14", tls_records.UNEXPECTED_MESSAGE),  # change_cipher_spec inside
        (b"\x16", tls_records.UNEXPECTED_MESSAGE),  # an empty handshake record
    ],
)
def test_what_a_peer_may_not_send_is_refused_with_its_alert(inner: bytes, alert: int):
    client, server = _layers()
    with pytest.raises(RecordError) as caught:
        _open_all(server, _protect(client, inner))
    assert caught.value.alert == alert
    # the alert we would send is a record the peer can open
    with pytest.raises(tls_records.PeerAlert):
        _open_all(client, server.alert(alert))


def test_bad_records_and_alerts():
    client, server = _layers()
    record = bytearray(_protect(client, b"data\x17"))
    record[-1] ^= 1
    with pytest.raises(RecordError) as caught:
        _open_all(server, bytes(record))
    assert caught.value.alert == tls_records.BAD_RECORD_MAC
    with pytest.raises(RecordError) as caught:  # an unprotected alert, after the handshake
        RecordLayer.frame(b"\x15\x03\x03\x00\x02\x02\x28", 0, 7)
    assert caught.value.alert == tls_records.UNEXPECTED_MESSAGE
    with pytest.raises(RecordError) as caught:
        RecordLayer.frame(b"\x17\x03\x03\x41\x01", 0, 5)
    assert caught.value.alert == tls_records.RECORD_OVERFLOW
    assert RecordLayer.frame(b"\x17\x03\x03\x00\x20" + bytes(10), 0, 15) == -1
    client, server = _layers()
    wire = _protect(client, b"\x01\x5a\x15") + _protect(client, b"more\x17")  # user_canceled
    assert _open_all(server, wire) == b"more"
    with pytest.raises(tls_records.PeerAlert) as alerted:
        _open_all(server, _protect(client, b"\x02\x28\x15"))  # handshake_failure
    assert alerted.value.description == 40
    with pytest.raises(RecordError):  # data inside a handshake message
        _open_all(server, _protect(client, b"\x18\x00\x16") + _protect(client, b"x\x17"))


# --- the hand-over on real sockets ----------------------------------------------------------------


def test_a_resumed_connection_is_handed_over_at_both_ends(pki: Pki, monkeypatch):
    from sidecar.identity.tls import MeshCredentials, client_context, server_context

    monkeypatch.setattr(tls_handoff, "HANDOFF_AFTER", 0)
    server_ctx = server_context(
        MeshCredentials.load(pki.ca_path, *pki.issue("backend-1", "backend"))
    )
    client_ctx = client_context(MeshCredentials.load(pki.ca_path, *pki.issue("web-1", "web")))
    asyncio.run(_handed_over(server_ctx, client_ctx))


async def _handed_over(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    listener = _listener()
    first = await _pair(listener, server_ctx, client_ctx)
    session = first[4].session
    assert session is not None
    # A full handshake is not handed over: `_pair` has written and read on it already, and
    # its client needed OpenSSL for the tickets.
    assert not first[0].detach() and not first[2].detach()

    loop = asyncio.get_running_loop()

    async def resumed() -> tuple:
        from sidecar.transport import tls_transport
        from sidecar.transport.tls_transport import TlsTransport
        from tests.test_tls_idle_memory import Peer

        async def accept():
            conn, _ = await loop.sock_accept(listener)
            sslobj = tls_transport.wrap(server_ctx, conn, server_side=True)
            await tls_transport.handshake(loop, conn, sslobj)
            return conn, sslobj

        accepted = loop.create_task(accept())
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, listener.getsockname())
        client_ssl = tls_transport.wrap(
            client_ctx, sock, server_side=False, server_hostname="backend", session=session
        )
        await tls_transport.handshake(loop, sock, client_ssl)
        conn, server_ssl = await accepted
        assert client_ssl.session_reused
        server, client = Peer(echo=True), Peer(echo=False)
        server_t = TlsTransport.start(loop, conn, server_ssl, server)
        client_t = TlsTransport.start(loop, sock, client_ssl, client)
        return server_t, server, client_t, client

    server_t, server, client_t, client = await resumed()
    await asyncio.sleep(0)  # the accepting task's result, let go by the loop
    before = _openssl_objects()
    assert server_t.detach() and client_t.detach()
    assert server_t.get_extra_info("ssl_object") is None
    assert _openssl_objects() == before - 2  # OpenSSL's objects are gone
    assert shares_session(session, client_ctx)  # ...and the session is not marked

    received = bytearray()
    client.data_received = lambda data: (received.extend(data), client.got.set())  # type: ignore[method-assign]
    payload = bytes(range(256)) * 2048  # 512 KiB: many records, the socket full at times
    client_t.write(payload)
    while len(received) < len(payload):
        client.got.clear()
        await asyncio.wait_for(client.got.wait(), 5)
    assert bytes(received) == payload
    # Half-close crosses: the client's close_notify is the server's EOF, which stays open.
    client_t.write_eof()
    await asyncio.wait_for(server.eof.wait(), 5)
    assert not server_t.is_closing()
    server_t.write(b"late")
    client.got.clear()
    await asyncio.wait_for(client.got.wait(), 5)
    assert bytes(received[-4:]) == b"late"
    server_t.close()
    await asyncio.wait_for(client.eof.wait(), 5)

    # Bytes that are not a record: the transport ends with an error, the others go on.
    server_t, server, client_t, client = await resumed()
    assert server_t.detach() and client_t.detach()
    raw = client_t.get_extra_info("socket")
    lost: list[BaseException | None] = []
    server.connection_lost = lambda exc: (lost.append(exc), server.eof.set())  # type: ignore[method-assign]
    raw.send(b"\x16\x03\x01\x00\x05hello")
    await asyncio.wait_for(server.eof.wait(), 5)
    assert lost and isinstance(lost[0], RecordError)
    client_t.abort()
    for transport in (first[0], first[2]):
        transport.abort()
    listener.close()


def _openssl_objects() -> int:
    """The ssl module's connection objects alive in this process."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "_SSLSocket")
