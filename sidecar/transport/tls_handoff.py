"""Handing a resumed TLS 1.3 connection from OpenSSL to our record layer once its handshake ends.

Why: see `sidecar.transport.tls_records` (OpenSSL's ~18 KB per connection; issue 8's 10,000
idle mTLS connections in 200 MB). What it takes:

- The traffic secrets. OpenSSL gives them out through the key log callback only
  (`SSL_CTX_set_keylog_callback`, what `SSLKEYLOGFILE` uses); `prepare` installs ours on a
  mesh context, through ctypes as `tls_transport` reaches OpenSSL, and `watch` names the
  connections whose secrets are kept (the L4 relay's: asyncio's TLS transports on the same
  context are left alone). A context with a key log file of its own keeps it, and its
  connections stay OpenSSL's.
- Knowing what each side has sent and read under those secrets: nothing, at the moment the
  handshake ends, when the connection was resumed and the server sent no NewSessionTicket.
  `prepare` makes a server resume without a new ticket (`SSL_CTX_set_session_ticket_cb`: the
  ticket is used, not renewed; a client keeps offering the one it has, as it does today
  between connections), and the connection is handed over only if OpenSSL has neither read
  nor written a byte since the handshake and holds nothing read ahead (`SSL_has_pending`,
  and the socket BIO's byte counts). A full handshake stays OpenSSL's: its client needs the
  tickets that follow it, read by OpenSSL into a session to resume from.
- Letting go of OpenSSL's object without its marking the session not resumable (what it does
  to a connection freed without a close_notify): it is told the connection was shut down
  both ways (`SSL_set_shutdown`), which sends nothing.

`SocketRecords` is then the connection's `_sslobj` in `TlsTransport`: the same calls (`read`
into a buffer, `write`, `pending`) and the same exceptions, on the socket, with no buffer of
its own while nothing waits.
"""

from __future__ import annotations

import ctypes
import os
import socket
import ssl
import weakref
from collections.abc import Callable
from typing import Any

from sidecar import defaults
from sidecar.transport import tls_records
from sidecar.transport.libssl import libssl
from sidecar.transport.tls_records import HEADER, MAX_RECORD, TAG, RecordError, RecordLayer

_SSL_SENT_SHUTDOWN = 1
_SSL_RECEIVED_SHUTDOWN = 2
# SSL_TICKET_STATUS and SSL_TICKET_RETURN (ssl.h)
_TICKET_EMPTY = 3
_TICKET_NO_DECRYPT = 4
_TICKET_SUCCESS = 5
_TICKET_SUCCESS_RENEW = 6
_RETURN_IGNORE = 1
_RETURN_IGNORE_RENEW = 2
_RETURN_USE = 3
_CLIENT_SECRET = b"CLIENT_TRAFFIC_SECRET_0 "
_SERVER_SECRET = b"SERVER_TRAFFIC_SECRET_0 "
_NOTHING = b""
# Shared by every connection: ciphertext is received here and decrypted out of it within one
# call; only a record's unreceived rest is kept per connection
_RECEIVE = memoryview(bytearray(256 * 1024 + MAX_RECORD))
_SPARE = memoryview(bytearray(MAX_RECORD))  # a record that does not fit the caller's room


class Watched:
    """What is known of one watched connection during its handshake."""

    __slots__ = ("client_secret", "server_secret", "unrenewed", "bio_counts")

    def __init__(self) -> None:
        self.client_secret: bytes | None = None
        self.server_secret: bytes | None = None
        self.unrenewed = False  # a server that resumed it and sends no ticket
        self.bio_counts: tuple[int, int] | None = None  # socket bytes read, written at its end


class _Lib:
    """The OpenSSL calls, and the two callbacks (kept alive here for the process's life)."""

    def __init__(self) -> None:
        self.ok = False
        lib = libssl()
        if lib is None:
            return
        try:
            vp = ctypes.c_void_p
            self.set_keylog = lib.SSL_CTX_set_keylog_callback
            self.set_ticket_cb = lib.SSL_CTX_set_session_ticket_cb
            self.get_rbio = lib.SSL_get_rbio
            self.get_wbio = lib.SSL_get_wbio
            self.number_read = lib.BIO_number_read
            self.number_written = lib.BIO_number_written
            self.has_pending = lib.SSL_has_pending
            self.set_shutdown = lib.SSL_set_shutdown
            self.get_session = lib.SSL_get_session
            self.max_fragment = lib.SSL_SESSION_get_max_fragment_length
        except AttributeError:
            return
        self.set_keylog.argtypes, self.set_keylog.restype = [vp, vp], None
        self.set_ticket_cb.argtypes = [vp, vp, vp, vp]
        self.get_rbio.argtypes, self.get_rbio.restype = [vp], vp
        self.get_wbio.argtypes, self.get_wbio.restype = [vp], vp
        self.number_read.argtypes, self.number_read.restype = [vp], ctypes.c_uint64
        self.number_written.argtypes, self.number_written.restype = [vp], ctypes.c_uint64
        self.has_pending.argtypes = [vp]
        self.set_shutdown.argtypes, self.set_shutdown.restype = [vp, ctypes.c_int], None
        self.get_session.argtypes, self.get_session.restype = [vp], vp
        self.max_fragment.argtypes, self.max_fragment.restype = [vp], ctypes.c_uint8
        keylog_type = ctypes.CFUNCTYPE(None, vp, ctypes.c_char_p)
        ticket_type = ctypes.CFUNCTYPE(ctypes.c_int, vp, vp, vp, ctypes.c_size_t, ctypes.c_int, vp)
        self.keylog = keylog_type(_on_keylog)
        self.ticket = ticket_type(_on_ticket)
        self.ok = True

    def bio_counts(self, pointer: int) -> tuple[int, int]:
        return self.number_read(self.get_rbio(pointer)), self.number_written(self.get_wbio(pointer))


HANDOFF_AFTER = int(os.environ.get("PYSIDECAR_TLS_HANDOFF_AFTER", defaults.TLS_HANDOFF_AFTER))


class _Count:
    """The L4 relay's TLS connections open in this process (`TlsTransport`s), and whether
    records have been handed over yet (the AEADs loaded: from then on, every one that can)."""

    open = 0
    loaded = False


COUNT = _Count()
# The connections watched, by `SSL *`, from `watch` until the transport takes them
_WATCHED: dict[int, Watched] = {}
_PREPARED: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()


def _on_keylog(pointer: int | None, line: bytes | None) -> None:
    watched = _WATCHED.get(pointer or 0)
    if watched is None or not line:
        return
    if line.startswith(_CLIENT_SECRET):
        watched.client_secret = bytes.fromhex(line.rsplit(b" ", 1)[1].decode("ascii"))
    elif line.startswith(_SERVER_SECRET):
        watched.server_secret = bytes.fromhex(line.rsplit(b" ", 1)[1].decode("ascii"))


def _on_ticket(
    pointer: int | None, _session: Any, _name: Any, _length: int, status: int, _arg: Any
) -> int:
    """A server's ticket was decrypted: resume from it without a new one (OpenSSL would renew
    it in TLS 1.3). A ticket it cannot use: a full handshake and new tickets, as without us."""
    if status in (_TICKET_SUCCESS, _TICKET_SUCCESS_RENEW):
        watched = _WATCHED.get(pointer or 0)
        if watched is not None:
            watched.unrenewed = True
        return _RETURN_USE
    if status in (_TICKET_EMPTY, _TICKET_NO_DECRYPT):
        return _RETURN_IGNORE_RENEW
    return _RETURN_IGNORE


_LIB = _Lib()


def prepare(
    context: ssl.SSLContext, context_pointer: Callable[[ssl.SSLContext], int | None]
) -> bool:
    """Install the callbacks on `context`, once (`context_pointer` finds its `SSL_CTX *`);
    False where its connections cannot be handed over (no pointer, a key log file of its
    own)."""
    if context in _PREPARED:
        return True
    pointer = context_pointer(context) if _LIB.ok and not context.keylog_filename else None
    if pointer is None:
        return False
    _LIB.set_keylog(pointer, ctypes.cast(_LIB.keylog, ctypes.c_void_p))
    _LIB.set_ticket_cb(pointer, None, ctypes.cast(_LIB.ticket, ctypes.c_void_p), None)
    _PREPARED.add(context)
    return True


def watch(pointer: int) -> None:
    """Keep the secrets of the connection `pointer` (an `SSL *` before its handshake)."""
    _WATCHED[pointer] = Watched()


def handshake_ended(pointer: int | None, ok: bool) -> None:
    """The handshake of `pointer` ended: note what OpenSSL had read and written by then, or
    forget it (a failure)."""
    if pointer is None:
        return
    watched = _WATCHED.get(pointer)
    if watched is None:
        return
    if ok:
        watched.bio_counts = _LIB.bio_counts(pointer)
    else:
        del _WATCHED[pointer]


def take(pointer: int | None) -> Watched | None:
    """What was kept for `pointer` (the transport holds it from here)."""
    return None if pointer is None else _WATCHED.pop(pointer, None)


def hand_over(
    sslobj: Any, pointer: int, watched: Watched, sock: socket.socket
) -> SocketRecords | None:
    """The connection's records from now on, OpenSSL's object set free of it; None when it
    must stay OpenSSL's (see the module's text for when)."""
    if not COUNT.loaded:
        if COUNT.open < HANDOFF_AFTER or not tls_records.supported():
            return None
        COUNT.loaded = True
    client = not sslobj.server_side
    cipher = sslobj.cipher()
    suite = cipher[0] if cipher else ""
    if (
        watched.client_secret is None
        or watched.server_secret is None
        or watched.bio_counts is None
        or suite not in tls_records.SUITES
        or sslobj.version() != "TLSv1.3"
        or not sslobj.session_reused
        or (not client and not watched.unrenewed)
        or _LIB.has_pending(pointer)
        or _LIB.bio_counts(pointer) != watched.bio_counts
    ):
        return None
    session = _LIB.get_session(pointer)
    if not session or _LIB.max_fragment(session):
        return None  # records limited below 16 KiB by the peer: not ours to honour
    if client:
        read, write = watched.server_secret, watched.client_secret
    else:
        read, write = watched.client_secret, watched.server_secret
    layer = RecordLayer(suite, read, write, client=client)
    # OpenSSL frees a connection's object when the last reference goes; told it was shut
    # down both ways, it leaves the session resumable (and sends nothing)
    _LIB.set_shutdown(pointer, _SSL_SENT_SHUTDOWN | _SSL_RECEIVED_SHUTDOWN)
    return SocketRecords(sock, layer)


class SocketRecords:
    """A handed-over connection's records on its socket, called as `TlsTransport` calls the
    ssl module's object: `read(n, buffer)` (raises `ssl.SSLWantReadError` when the socket has
    nothing, `ssl.SSLZeroReturnError` on close_notify, `ssl.SSLEOFError` on a FIN without
    it), `write(data)` (all of it sealed at once; False while ciphertext waits for the
    socket: `flush` when writable), `pending()`, `close_notify()`."""

    __slots__ = ("_sock", "layer", "_held", "_plain", "_outbox", "_alerted", "_ended")

    def __init__(self, sock: socket.socket, layer: RecordLayer) -> None:
        self._sock = sock
        self.layer = layer
        self._held: bytes = _NOTHING  # ciphertext received and not yet opened
        self._plain: bytes = _NOTHING  # plaintext opened that the caller had no room for
        self._outbox: bytearray | bytes = _NOTHING  # ciphertext the socket has not taken
        self._alerted = False  # close_notify (or a fatal alert) sealed: nothing more after it
        # how reading ended (close_notify, an alert, a bad record) behind data not yet taken:
        # raised on the next call, as OpenSSL does
        self._ended: ssl.SSLError | None = None

    def pending(self) -> int:
        """Plaintext ready without the socket: kept, or in a whole record received."""
        held = self._held
        return 1 if self._plain or (held and RecordLayer.frame(held, 0, len(held)) > 0) else 0

    @property
    def unsent(self) -> bool:
        return bool(self._outbox)

    # -- reading ---------------------------------------------------------------------------------

    def read(self, n: int, buffer: memoryview) -> int:
        """Up to `n` bytes of application data into `buffer`; at least one, or an exception."""
        plain = self._plain
        if plain:
            taken = min(n, len(plain))
            buffer[:taken] = plain[:taken]
            self._plain = plain[taken:] if taken < len(plain) else _NOTHING
            return taken
        ended = self._ended
        try:
            if ended is not None:
                raise ended
            return self._read(n, buffer)
        except RecordError as exc:
            self._fail(exc.alert)
            raise

    def _read(self, n: int, buffer: memoryview) -> int:
        layer = self.layer
        frame = RecordLayer.frame
        held = self._held
        data: bytes | memoryview = held
        start, end = 0, len(held)
        produced = 0
        try:
            while True:
                stop = frame(data, start, end)
                if stop < 0:
                    if produced:
                        return produced
                    data, start, end = self._receive(data[start:end], n)
                    continue
                room = n - produced
                need = stop - start - HEADER - TAG
                record = memoryview(data)[start:stop]
                if need <= room:
                    try:
                        got = layer.open(record, buffer[produced:])
                    except ssl.SSLError as exc:
                        if not produced:
                            raise
                        self._ended = exc  # the data before it first
                        start = stop
                        return produced
                    start = stop
                    produced += got
                else:
                    if produced:
                        return produced  # the next call opens it
                    got = layer.open(record, _SPARE)
                    start = stop
                    taken = min(got, room)
                    buffer[:taken] = _SPARE[:taken]
                    if taken < got:
                        self._plain = bytes(_SPARE[taken:got])
                    produced = taken
                if layer.reply is not None:
                    self._send_reply()
                if produced >= n:
                    return produced
        finally:
            # keep what was received and not opened: the receive buffer is everyone's
            self._held = bytes(data[start:end]) if start < end else _NOTHING

    def _receive(self, rest: bytes | memoryview, n: int) -> tuple[memoryview, int, int]:
        """The unopened `rest` followed by what the socket has now, in the shared buffer."""
        kept = len(rest)
        view = _RECEIVE
        view[:kept] = rest
        want = min(len(view), kept + max(n + n // 512, MAX_RECORD))
        try:
            got = self._sock.recv_into(view[kept:want])
        except (BlockingIOError, InterruptedError):
            raise ssl.SSLWantReadError("The operation did not complete (read)") from None
        if not got:
            raise ssl.SSLEOFError("EOF occurred in violation of protocol")
        return view, 0, kept + got

    def _send_reply(self) -> None:
        reply = self.layer.reply
        self.layer.reply = None
        if reply:
            self._queue(reply)
            self.flush()

    # -- writing ---------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> bool:
        """Seal `data` and send what the socket takes: True when all of it went."""
        outbox = self._outbox
        if not outbox:
            outbox = self._outbox = bytearray()
        self.layer.seal(data, outbox)  # type: ignore[arg-type]
        return self.flush()

    def flush(self) -> bool:
        """Send what waits: True when nothing does any more; OSError when the socket failed."""
        outbox = self._outbox
        send = self._sock.send
        while outbox:
            try:
                sent = send(outbox)
            except (BlockingIOError, InterruptedError):
                return False
            if sent >= len(outbox):
                self._outbox = _NOTHING
                return True
            del outbox[:sent]  # type: ignore[union-attr]
        return True

    def close_notify(self) -> bool | None:
        """Send close_notify once: True when it is in the socket, None when the socket is
        full (call again when writable)."""
        if not self._alerted:
            self._alerted = True
            self._queue(self.layer.alert(tls_records.CLOSE_NOTIFY))
        return True if self.flush() else None

    def _queue(self, records: bytes | bytearray) -> None:
        outbox = self._outbox
        if outbox:
            outbox += records  # type: ignore[operator]
        else:
            self._outbox = bytearray(records)

    def _fail(self, description: int) -> None:
        """Tell the peer why we end the connection, if the socket takes it now."""
        if self._alerted:
            return
        self._alerted = True
        try:
            self._queue(self.layer.alert(description))
            self.flush()
        except OSError:
            pass
