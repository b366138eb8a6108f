"""A TLS transport of our own for the L4 relay over mTLS: OpenSSL straight on the socket.

asyncio's and uvloop's TLS transports run OpenSSL on memory BIOs: every byte is copied from the
socket into a BIO, decrypted, handed up as `bytes`, and on the way out encrypted into a BIO and
copied out again, one TLS record per SSL_read, in several layers of Python or Cython. They also
cannot half-close (`can_write_eof()` is False): a close_notify ends the connection both ways.
For bulk relaying both cost: the copies and the per-record calls are most of what a sidecar
spends besides AES-GCM itself, and a client's FIN cannot cross the hop. An undeclared service's
inbound connections run on this transport too, whatever their preface turns out to be: the
bytes it relays keep half-close, and the HTTP/2 server rides it when a peer sniffed HTTP.

`TlsTransport` is an `asyncio.Transport` over a non-blocking socket wrapped by the ssl module's
low-level object (`SSLContext._wrap_socket`, what `ssl.SSLSocket` is built on), driven by
`loop.add_reader` / `add_writer` on the raw descriptor:

- Reading: SSL_read straight from the socket into one preallocated buffer, as many records as
  fit (`READ_SIZE`) per readiness event, delivered to the protocol in one `data_received`; a
  buffered protocol (`asyncio.BufferedProtocol`, as the relay's sides are) gets them read
  straight into its own buffer (`get_buffer`/`buffer_updated`), one copy less.
  OpenSSL reads ahead `defaults.TLS_READ_AHEAD` bytes per recv (about two records: OpenSSL 3.0
  moves the unread rest of that buffer before each record, so more costs more).
- Writing: SSL_write from the caller's bytes; only what the socket does not take is kept
  (OpenSSL's "moving write buffer": the retry may come from another address and be longer), and
  past the high-water mark the protocol is paused (`pause_writing`), as asyncio does. A write of
  one record goes straight to the socket; a larger one (TLS 1.3) through a write buffer put in
  front of the socket as the write BIO for as long as its bytes are unsent (a BIO_f_buffer of
  `WRITE_BUFFER` bytes; the socket stays the read BIO), so that its records leave in one send
  instead of one write(2) per 16 KiB record: on a mesh hop that took less CPU per GB on the
  encrypting sidecar (bench/README.md, issue 4). Without it, the socket is corked meanwhile.
- Cipher: mesh contexts (`sidecar.identity.tls`) prefer TLS_AES_128_GCM_SHA256 in TLS 1.3
  (`prefer_aes128`, SSL_CTX_set_ciphersuites through ctypes: the ssl module cannot).
- Half-close (TLS 1.3): `write_eof()` sends close_notify (SSL_shutdown, once) and shuts the TCP
  write side; TLS 1.3 allows reading on until the peer's close_notify, which becomes
  `eof_received()`, after which we may still write. Python's `SSLSocket.unwrap()` cannot be used:
  it calls SSL_shutdown a second time to wait for the peer's alert, and that call fails on (and
  drops) application data still in flight. So SSL_shutdown is called once through ctypes on the
  ssl object's `SSL *` (`_ssl_pointer`, checked against the socket's descriptor); where that is
  not available, or with TLS 1.2 (which forbids reading after close_notify), `can_write_eof()`
  is False and the relay falls back to closing, as with asyncio's transports.
- A reset (or any error) on the socket is `connection_lost(exc)`; `abort()` drops the socket at
  once (the relay sets SO_LINGER 0 first to pass a reset on).
- Idle connections (issue 8: 10,000 through one sidecar) keep OpenSSL's connection state and
  little else: a read that drains the socket, a close_notify received or sent, gives OpenSSL's
  record buffers back (`release_buffers`: the 16.5 KiB write buffer every client connection
  got from reading its NewSessionTickets, the 32 KiB read buffer of a half-closed one); the
  loop's handles take an empty context, not the opener's (`_start_reading`); a resumed
  client shares the offered session instead of a parsed copy (`wrap`); the transport has no
  instance dict, makes its extra info when asked and has no write buffer of its own while
  nothing waits. `python -m bench.memprobe --mtls`
  measures what a connection costs and where it goes (bench/README.md, issue 8).

The handshake (`handshake`) is driven the same way before the transport is made; the caller
bounds it in time.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from sidecar import defaults
from sidecar.transport import BARE_CONTEXT, tls_handoff
from sidecar.transport.libssl import libssl
from sidecar.transport.splice import discard_unread

READ_SIZE = 256 * 1024  # plaintext delivered per read event at most (16 TLS records)
# Shared: every read into it is copied out before the next one; made at first use (most
# reads go to the relay's buffer instead: a buffered protocol)
_READ_VIEW: memoryview | None = None


def _read_view() -> memoryview:
    global _READ_VIEW
    if _READ_VIEW is None:
        _READ_VIEW = memoryview(bytearray(READ_SIZE))
    return _READ_VIEW


_SSL_ERROR_WANT_WRITE = 3
_SSL_ERROR_WANT_READ = 2
_RECORD = 16 * 1024  # TLS's largest record of plaintext
_TCP_CORK = getattr(socket, "TCP_CORK", 3)
# The write buffer: 16 records of ciphertext (a relay read of 256 KiB) with room to spare
WRITE_BUFFER = 16 * (_RECORD + 512)
_SPARE_BUFFERS = 8
_BIO_C_SET_BUFF_SIZE = 117
_BIO_CTRL_FLUSH = 11
_BIO_FLAGS_SHOULD_RETRY = 8
_SSL_CTRL_MODE = 33
_SSL_MODE_RELEASE_BUFFERS = 0x10
# The OpenSSL releases whose SSL_free_buffers checks for a partly read record (CVE-2024-4741:
# before these it could free a buffer still in use): 3.0.14, 3.1.6, 3.2.2, 3.3.1, 3.4 on.
_FREE_BUFFERS_FIXED = {(3, 0): 14, (3, 1): 6, (3, 2): 2, (3, 3): 1}
# What every transport has while it holds nothing, shared rather than one each (issue 8's idle
# connections): no plaintext waiting (`_pending`, a bytearray of its own once some does), no
# extra info kept (asyncio.BaseTransport's `_extra`: ours is made when asked)
_NOTHING = b""
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
_LOW_WATER = defaults.RELAY_HIGH_WATER // 4


def _free_buffers_safe(version: tuple[int, ...]) -> bool:
    """Whether SSL_free_buffers of this OpenSSL (`ssl.OPENSSL_VERSION_INFO`) may be called
    with the read state unknown: it refuses by itself while a record is partly read."""
    major, minor, _fix, patch = version[:4]
    if major < 3:
        return False  # 1.1.1: fixed only in the paid-support releases
    if major == 3 and (major, minor) in _FREE_BUFFERS_FIXED:
        return patch >= _FREE_BUFFERS_FIXED[(major, minor)]
    return True


class _LibSsl:
    """SSL_shutdown on the `SSL *` of an `_ssl._SSLSocket`, for a one-way close_notify.

    CPython's `_ssl` object starts with `PyObject_HEAD; PyObject *Socket; SSL *ssl;` (3.8 to
    3.13); the pointer found there is used only if `SSL_get_fd` on it gives the socket's own
    descriptor.
    """

    def __init__(self) -> None:
        self.ok = False
        lib = libssl()  # (errno kept: a failed flush's reason)
        if lib is None:
            return
        try:
            self.shutdown = lib.SSL_shutdown
            self.get_fd = lib.SSL_get_fd
            self.get_error = lib.SSL_get_error
            self.clear_errors = lib.ERR_clear_error
            self.set_read_ahead = lib.SSL_set_read_ahead
            self.set_read_buffer_len = lib.SSL_set_default_read_buffer_len
            self.has_pending = lib.SSL_has_pending
            self.ctrl = lib.SSL_ctrl
        except AttributeError:
            return
        try:
            self.set_session = lib.SSL_set_session
            self.session_get_time = lib.SSL_SESSION_get_time
            self.session_get_timeout = lib.SSL_SESSION_get_timeout
            self.session_is_resumable = lib.SSL_SESSION_is_resumable
        except AttributeError:
            self.sessions_ok = False
        else:
            self.set_session.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            self.session_get_time.argtypes = [ctypes.c_void_p]
            self.session_get_time.restype = ctypes.c_long
            self.session_get_timeout.argtypes = [ctypes.c_void_p]
            self.session_get_timeout.restype = ctypes.c_long
            self.session_is_resumable.argtypes = [ctypes.c_void_p]
            self.sessions_ok = True
        # SSL_free_buffers, where it is safe (`_free_buffers_safe`); None elsewhere
        self.free_buffers: Callable[[int], int] | None = None
        if _free_buffers_safe(ssl.OPENSSL_VERSION_INFO) and hasattr(lib, "SSL_free_buffers"):
            self.free_buffers = lib.SSL_free_buffers
            self.free_buffers.argtypes = [ctypes.c_void_p]
        self.shutdown.argtypes = [ctypes.c_void_p]
        self.get_fd.argtypes = [ctypes.c_void_p]
        self.get_error.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.clear_errors.argtypes = []
        self.set_read_ahead.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.set_read_ahead.restype = None
        self.set_read_buffer_len.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.set_read_buffer_len.restype = None
        self.has_pending.argtypes = [ctypes.c_void_p]
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ctrl.restype = ctypes.c_long
        self.offset = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
        self.ok = True
        self.spare_buffers: list[int] = []  # write buffers (BIO_f_buffer) to use again
        try:
            self.bio_f_buffer = lib.BIO_f_buffer
            self.bio_new = lib.BIO_new
            self.bio_free = lib.BIO_free
            self.bio_up_ref = lib.BIO_up_ref
            self.bio_push = lib.BIO_push
            self.bio_pop = lib.BIO_pop
            self.bio_ctrl = lib.BIO_ctrl
            self.bio_int_ctrl = lib.BIO_int_ctrl
            self.bio_test_flags = lib.BIO_test_flags
            self.get_wbio = lib.SSL_get_wbio
            self.set0_wbio = lib.SSL_set0_wbio
        except AttributeError:
            self.buffers_ok = False
        else:
            vp = ctypes.c_void_p
            self.bio_f_buffer.argtypes, self.bio_f_buffer.restype = [], vp
            self.bio_new.argtypes, self.bio_new.restype = [vp], vp
            self.bio_free.argtypes = [vp]
            self.bio_up_ref.argtypes = [vp]
            self.bio_push.argtypes, self.bio_push.restype = [vp, vp], vp
            self.bio_pop.argtypes, self.bio_pop.restype = [vp], vp
            self.bio_ctrl.argtypes = [vp, ctypes.c_int, ctypes.c_long, vp]
            self.bio_ctrl.restype = ctypes.c_long
            self.bio_int_ctrl.argtypes = [vp, ctypes.c_int, ctypes.c_long, ctypes.c_int]
            self.bio_int_ctrl.restype = ctypes.c_long
            self.bio_test_flags.argtypes = [vp, ctypes.c_int]
            self.get_wbio.argtypes, self.get_wbio.restype = [vp], vp
            self.set0_wbio.argtypes, self.set0_wbio.restype = [vp, vp], None
            self.buffers_ok = True
        try:
            self.ctx_set_ciphersuites = lib.SSL_CTX_set_ciphersuites
            self.ctx_get_options = lib.SSL_CTX_get_options
        except AttributeError:  # OpenSSL 1.1.0 and older: no TLS 1.3 suites to choose
            return
        self.ctx_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.ctx_get_options.argtypes = [ctypes.c_void_p]
        self.ctx_get_options.restype = ctypes.c_uint64

    def context_pointer(self, context: ssl.SSLContext) -> int | None:
        """The `SSL_CTX *` of `context`, or None when it cannot be trusted.

        CPython's `PySSLContext` starts with `PyObject_HEAD; SSL_CTX *ctx;` (3.8 to 3.13); the
        pointer found there is used only if OpenSSL reads the same options from it as the
        ssl module does (`SSLContext.options` is `SSL_CTX_get_options` of that pointer)."""
        if not self.ok or not hasattr(self, "ctx_get_options"):
            return None
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if not pointer or self.ctx_get_options(pointer) != int(context.options):
            return None
        return pointer

    def set_ciphersuites(self, context: ssl.SSLContext, suites: str) -> bool:
        """SSL_CTX_set_ciphersuites: the TLS 1.3 suites of `context`, in order of preference
        (the ssl module sets only TLS 1.2's, `set_ciphers`). False where it cannot be done."""
        pointer = self.context_pointer(context)
        if pointer is None:
            return False
        return self.ctx_set_ciphersuites(pointer, suites.encode("ascii")) == 1

    def pointer(self, sslobj: Any, fd: int) -> int | None:
        """The `SSL *` of `sslobj`, or None when it cannot be trusted."""
        if not self.ok:
            return None
        pointer = ctypes.c_void_p.from_address(id(sslobj) + self.offset).value
        if not pointer or self.get_fd(pointer) != fd:
            return None
        return pointer

    def session_pointer(self, session: Any, context: ssl.SSLContext) -> int | None:
        """The `SSL_SESSION *` of an `ssl.SSLSession` obtained on `context` that OpenSSL would
        resume from as it is, or None (another context's, one that cannot be trusted, or one
        marked not resumable: OpenSSL marks a connection's session so when the connection is
        freed without a close_notify, and the ssl module's copy drops the mark).

        CPython's `PySSLSession` starts with `PyObject_HEAD; SSL_SESSION *session; PySSLContext
        *ctx;` (3.8 to 3.13); the pointer found there is used only if OpenSSL reads the same
        time and timeout from it as the ssl module does."""
        if not self.ok or not self.sessions_ok or not isinstance(session, ssl.SSLSession):
            return None
        base = id(session) + object.__basicsize__
        pointer = ctypes.c_void_p.from_address(base).value
        owner = ctypes.c_void_p.from_address(base + ctypes.sizeof(ctypes.c_void_p)).value
        if not pointer or owner != id(context):
            return None
        if (
            self.session_get_time(pointer) != session.time
            or self.session_get_timeout(pointer) != session.timeout
            or self.session_is_resumable(pointer) != 1
        ):
            return None
        return pointer

    def read_ahead(self, pointer: int, size: int) -> None:
        """Let SSL_read take up to `size` bytes from the socket at once (several records per
        recv instead of two recvs per record, header then body), the buffer being released
        while empty. (SSL_MODE_RELEASE_BUFFERS: the ssl module sets it on every context too.
        It frees the read buffer when a read finds nothing more and the write buffer after a
        completed SSL_write, but not the write buffer that a read allocates for a handshake
        message after the handshake, nor the one an alert is sent from: `release_buffers`.)"""
        self.set_read_buffer_len(pointer, size)
        self.set_read_ahead(pointer, 1)
        self.ctrl(pointer, _SSL_CTRL_MODE, _SSL_MODE_RELEASE_BUFFERS, None)

    # A write buffer in front of the socket (the write BIO only; reads stay on the socket):
    # SSL_write's records gather in it and leave in one send. Put on for one large write and
    # taken off once flushed, so that a connection holds it only while the socket is full.

    def push_write_buffer(self, pointer: int) -> int | None:
        """Put a write buffer (BIO_f_buffer of `WRITE_BUFFER` bytes) between `pointer`'s SSL
        and its socket BIO; its `BIO *`, or None where that cannot be done."""
        if not self.buffers_ok:
            return None
        if self.spare_buffers:
            buffer = self.spare_buffers.pop()
        else:
            buffer = self.bio_new(self.bio_f_buffer())
            if not buffer:
                return None
            if self.bio_int_ctrl(buffer, _BIO_C_SET_BUFF_SIZE, WRITE_BUFFER, 1) != 1:
                self.bio_free(buffer)
                return None
        sock = self.get_wbio(pointer)
        self.bio_up_ref(sock)  # the chain's reference; SSL_set0_wbio drops the SSL's own
        self.bio_push(buffer, sock)
        self.set0_wbio(pointer, buffer)  # the SSL owns `buffer` now
        return buffer

    def pop_write_buffer(self, pointer: int, buffer: int) -> None:
        """Take the (flushed) write buffer off again: the socket BIO writes directly."""
        sock = self.bio_pop(buffer)  # with the chain's reference, handed to the SSL below
        self.bio_up_ref(buffer)  # ours, across SSL_set0_wbio freeing the SSL's
        self.set0_wbio(pointer, sock)
        if len(self.spare_buffers) < _SPARE_BUFFERS:
            self.spare_buffers.append(buffer)
        else:
            self.bio_free(buffer)

    def flush(self, buffer: int) -> bool:
        """BIO_flush: True when all is in the socket, False when it is full (try again when
        writable); OSError when the socket failed."""
        if self.bio_ctrl(buffer, _BIO_CTRL_FLUSH, 0, None) > 0:
            return True
        if self.bio_test_flags(buffer, _BIO_FLAGS_SHOULD_RETRY):
            return False
        code = ctypes.get_errno() or errno.EPIPE
        raise OSError(code, os.strerror(code))

    def release_buffers(self, pointer: int) -> None:
        """SSL_free_buffers: give back OpenSSL's record buffers (16.5 KiB each) that an idle
        connection still holds. OpenSSL leaves one behind where RELEASE_BUFFERS does not reach:
        the write buffer set up when SSL_read processes a post-handshake message (a TLS 1.3
        client gets two NewSessionTickets right after every handshake; a KeyUpdate) and the
        one a close_notify is sent from. Nothing happens (OpenSSL says 0) while a record is
        partly read or a write is unsent; the next read or write sets them up again."""
        if self.free_buffers is not None:
            self.free_buffers(pointer)

    def close_notify(self, pointer: int) -> bool | None:
        """Send close_notify: True when sent, None when the socket is full (retry when
        writable), False on an error."""
        ret = self.shutdown(pointer)
        if ret >= 0:
            self.release_buffers(pointer)  # the alert's write buffer: the peer may take hours
            return True
        err = self.get_error(pointer, ret)
        self.clear_errors()
        return None if err in (_SSL_ERROR_WANT_WRITE, _SSL_ERROR_WANT_READ) else False


_LIBSSL = _LibSsl()

# The TLS 1.3 suites of a mesh hop, AES-128-GCM first: on AES hardware it is the cheapest of the
# three (10 AES rounds to AES-256's 14) and what Envoy (BoringSSL) picks there; OpenSSL's own
# default puts AES-256-GCM first. Both ends of a hop are ours; an Envoy peer gets the same.
MESH_TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def prefer_aes128(context: ssl.SSLContext) -> bool:
    """Order `context`'s TLS 1.3 cipher suites as `MESH_TLS13_SUITES` (the ssl module cannot);
    False, the context unchanged (OpenSSL's default order), where that is not possible. TLS 1.2
    and everything else about the context stay as they are."""
    return _LIBSSL.set_ciphersuites(context, MESH_TLS13_SUITES)


def shares_session(session: ssl.SSLSession, context: ssl.SSLContext) -> bool:
    """Whether `wrap` would hand `session` to OpenSSL as it is (shared by every connection
    that resumes from it) rather than through the ssl module's copy: it is `context`'s, its
    pointer can be trusted, and OpenSSL has not marked it not resumable. A caller that keeps
    one session to offer (the mesh connector) takes a fresh one when this says False."""
    return _LIBSSL.session_pointer(session, context) is not None


def wrap(
    context: ssl.SSLContext,
    sock: socket.socket,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLObject:
    """An `ssl.SSLObject` working on `sock` itself (non-blocking) instead of memory BIOs.

    It is the ssl module's socket-backed object (`SSLContext._wrap_socket`, what `ssl.SSLSocket`
    holds) behind the public `SSLObject` API, made as `SSLObject._create` makes one, so that
    what reads a connection's `ssl_object` (identities, version, session) works unchanged.
    `session`: a client's, to resume; left out when it belongs to another context (a rotation).

    The session is handed to OpenSSL itself (SSL_set_session, which takes a reference), not
    through the ssl module, which gives every connection a copy made by serialising the
    session and parsing it again (`_ssl_session_dup`, a workaround for OpenSSL 1.1.0): a copy
    of the peer's certificate, parsed, per connection for as long as it lives (about 4 KB and
    an X.509 parse per handshake on a sidecar that resumes every connection to a peer).
    OpenSSL never changes a session it resumes from (a TLS 1.3 client takes a copy for each
    new ticket), so connections may share one. Where the pointer cannot be trusted, the ssl
    module's way.
    """
    sock.setblocking(False)
    shared = None if session is None else _LIBSSL.session_pointer(session, context)
    offered = None if shared is not None else session
    try:
        low = context._wrap_socket(  # type: ignore[attr-defined]
            sock, server_side, server_hostname, owner=None, session=offered
        )
    except ValueError:
        low = context._wrap_socket(  # type: ignore[attr-defined]
            sock, server_side, server_hostname, owner=None, session=None
        )
    pointer = _LIBSSL.pointer(low, sock.fileno())
    if shared is not None and not server_side:
        if pointer is None:
            low.session = session  # the ssl module's way after all (its checks, its copy)
        else:
            _LIBSSL.set_session(pointer, shared)
    if pointer is not None:
        if tls_handoff.prepare(context, _LIBSSL.context_pointer):
            tls_handoff.watch(pointer)
        if not server_side:
            # A server reads ahead from its transport on (`TlsTransport`): during the
            # handshake it would take the client's first data along with its Finished,
            # and the connection could not be handed over (`TlsTransport.detach`).
            _LIBSSL.read_ahead(pointer, defaults.TLS_READ_AHEAD)
    return _ssl_object(low)


def _ssl_object(low: Any) -> ssl.SSLObject:
    """The public `ssl.SSLObject` over the ssl module's low-level object, made as
    `SSLObject._create` makes one."""
    sslobj = ssl.SSLObject.__new__(ssl.SSLObject)
    sslobj._sslobj = low  # type: ignore[attr-defined]
    return sslobj


async def handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, sslobj: ssl.SSLObject
) -> None:
    """Drive the TLS handshake on the loop; raises what OpenSSL raises (`ssl.SSLError`,
    `OSError`). The caller bounds it in time (and closes the socket when it fails)."""
    fd = sock.fileno()
    pointer = _LIBSSL.pointer(sslobj._sslobj, fd)  # type: ignore[attr-defined]
    ok = False
    try:
        while True:
            try:
                sslobj.do_handshake()
                ok = True
                return
            except ssl.SSLWantReadError:
                await _ready(loop, fd, write=False)
            except ssl.SSLWantWriteError:
                await _ready(loop, fd, write=True)
    finally:
        tls_handoff.handshake_ended(pointer, ok)
        if not ok:
            # A server reads the handshake record by record (`wrap`): refusing the client's
            # certificate leaves its CertificateVerify and Finished unread, and the caller's
            # close would be a reset that overtakes the alert. Read them, so it is a FIN.
            discard_unread(sock)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    waiter = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await waiter
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


class TlsTransport(asyncio.Transport):
    """A connected, handshaken TLS socket as an `asyncio.Transport` (see the module's text)."""

    # write() never keeps a reference to the caller's buffer: OpenSSL encrypts from it at once,
    # what it cannot take yet is copied (the relay may reuse its read buffer right away)
    copies_writes = True

    # No instance dict: one of these per relayed mTLS connection, most of them idle
    __slots__ = (
        "_loop",
        "_sock",
        "_fd",
        "_sslobj",
        "_protocol",
        "_buffered",
        "_ssl_pointer",
        "_pointer",
        "_wbuf",
        "_unflushed",
        "_closing",
        "_lost",
        "_reading",
        "_read_paused",
        "_eof_received",
        "_pending",
        "_writing",
        "_eof_wanted",
        "_eof_sent",
        "_write_paused",
        "_high_water",
        "_low_water",
        "_read_wants_write",
        "_peername",
        "_records",
        "_watched",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        sslobj: ssl.SSLObject,
        protocol: asyncio.Protocol,
    ) -> None:
        super().__init__(_NO_EXTRA)  # type: ignore[arg-type]  # read-only: nothing is added
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._sslobj = sslobj._sslobj  # type: ignore[attr-defined]  # the hot path skips a frame
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        # The extra info is made when asked (`get_extra_info`), not kept per connection;
        # only the peer's address is, for a log line after the socket is closed.
        self._peername = _address(sock.getpeername)
        pointer = _LIBSSL.pointer(self._sslobj, self._fd)
        self._ssl_pointer = pointer  # any version (`_pointer` below: TLS 1.3 only)
        # SSL_shutdown once, for a half-close: TLS 1.3 only (1.2 forbids reading after it);
        # the write buffer too (no renegotiation to meet it)
        self._pointer = pointer if sslobj.version() == "TLSv1.3" else None
        self._wbuf: int | None = None  # the write buffer while one is on (`_encrypt`)
        self._unflushed = False  # it holds bytes the socket did not take yet
        self._closing = False  # close() or abort() was called, or the connection was lost
        self._lost = False  # connection_lost is scheduled
        self._reading = False  # a reader is registered
        self._read_paused = False
        self._eof_received = False  # the peer's close_notify (or FIN) came
        # plaintext OpenSSL has not taken yet (a bytearray; `_NOTHING` while there is none):
        # the first bytes are those of the SSL_write to retry
        self._pending: bytearray | bytes = _NOTHING
        self._writing = False  # a writer is registered
        self._eof_wanted = False  # write_eof() called: close_notify after the pending bytes
        self._eof_sent = False
        self._write_paused = False  # the protocol was told pause_writing
        self._high_water = defaults.RELAY_HIGH_WATER
        self._low_water = _LOW_WATER
        self._read_wants_write = False  # SSL_read must write first (a KeyUpdate reply)
        # Our own record layer once `detach` handed the connection over (also `_sslobj`)
        self._records: tls_handoff.SocketRecords | None = None
        # Its secrets until then, if it was watched (`tls_handoff`)
        self._watched = tls_handoff.take(pointer)
        tls_handoff.COUNT.open += 1
        if pointer is not None and sslobj._sslobj.server_side:  # type: ignore[attr-defined]
            _LIBSSL.read_ahead(pointer, defaults.TLS_READ_AHEAD)  # see `wrap`

    @classmethod
    def start(
        cls,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        sslobj: ssl.SSLObject,
        protocol: asyncio.Protocol,
    ) -> TlsTransport:
        """The transport, with `protocol.connection_made` called and reading started."""
        transport = cls(loop, sock, sslobj, protocol)
        protocol.connection_made(transport)
        if not transport._closing and not transport._read_paused:
            transport._start_reading()
            if transport._has_pending():
                # The handshake's last read took application data along (read-ahead): the
                # socket may never announce it.
                loop.call_soon(transport._read_ready)
        return transport

    def detach(self) -> bool:
        """Hand the connection's records over from OpenSSL to our own record layer
        (`sidecar.transport.tls_handoff`), so that it holds two keys instead of OpenSSL's
        ~18 KB (issue 8's idle connections). Only right after a resumed TLS 1.3 handshake,
        before a byte of data either way: call it once the peer's identity has been read
        (`get_extra_info("ssl_object")` is None from here on). False, and nothing changes,
        when the connection must stay OpenSSL's."""
        watched, self._watched = self._watched, None
        pointer = self._pointer
        if (
            watched is None
            or pointer is None
            or self._records is not None
            or self._pending
            or self._wbuf is not None
            or self._eof_received
            or self._closing
        ):
            return False
        records = tls_handoff.hand_over(self._sslobj, pointer, watched, self._sock)
        if records is None:
            return False
        self._records = records
        self._sslobj = records  # what `_read_ready` reads from; OpenSSL's object is let go
        self._ssl_pointer = self._pointer = None
        return True

    def _has_pending(self) -> int:
        """Plaintext OpenSSL holds that the socket will not announce: SSL_has_pending counts
        the records read ahead, SSL_pending (the ssl module's) only the current one."""
        if self._records is not None:
            return self._records.pending()
        pointer = self._ssl_pointer
        return _LIBSSL.has_pending(pointer) if pointer is not None else self._sslobj.pending()

    # -- asyncio.BaseTransport -------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._records is not None:
            if name in ("ssl_object", "sslcontext", "peercert"):
                return default  # OpenSSL's object is gone (`detach`)
        elif name == "ssl_object":
            return _ssl_object(self._sslobj)  # a fresh view of the same connection
        if name == "socket":
            return self._sock
        if name == "peername":
            return default if self._peername is None else self._peername
        if name == "sockname":
            address = _address(self._sock.getsockname)  # None once the socket is closed
            return default if address is None else address
        if name == "sslcontext":
            return self._sslobj.context
        if name == "peercert":
            return self._sslobj.getpeercert()
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def close(self) -> None:
        """Stop reading, write what is pending, send close_notify, then close (a FIN)."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        self._eof_wanted = True
        if not self._pending:
            self._finish_writing()

    def abort(self) -> None:
        self._force_close(None)

    # -- reading ---------------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._read_paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._read_paused:
            return
        self._read_paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        if self._closing or not self._read_paused:
            return
        self._read_paused = False
        if self._eof_received:
            return
        self._start_reading()
        if self._has_pending():
            # Plaintext of a record already read from the socket: the socket may never wake us.
            self._loop.call_soon(self._read_ready)

    def _start_reading(self) -> None:
        """Watch the socket for reading. The loop's handle keeps a copy of the current
        context for as long as the connection is open (hours, idle): it is taken from an empty
        one, so that what the code which opened the connection had set in its own (the mesh
        connector's session to resume: a parsed copy of a TLS session with the peer's
        certificate, about 5 KB) is not kept alive by every connection."""
        if not self._reading and not self._eof_received:
            self._reading = True
            BARE_CONTEXT.run(self._loop.add_reader, self._fd, self._read_ready)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _read_ready(self) -> None:
        if self._closing or self._read_paused or self._eof_received:
            return
        read = self._sslobj.read
        if self._buffered:
            # Straight into the protocol's buffer (the relay's): no copy to hand it over.
            view = memoryview(self._protocol.get_buffer(READ_SIZE))  # type: ignore[attr-defined]
            size = min(len(view), READ_SIZE)
        else:
            view = _read_view()
            size = READ_SIZE
        n = 0
        eof = False
        drained = False
        try:
            while n < size:
                got = read(size - n, view[n:])
                if not got:
                    eof = True
                    break
                n += got
        except ssl.SSLWantReadError:
            drained = True
        except ssl.SSLZeroReturnError:
            eof = True  # close_notify
        except ssl.SSLEOFError:
            # A FIN without close_notify (the peer is done sending either way), or a reset:
            # Python reports both so (SSL_read_ex's 0 reads as an EOF), the TCP state tells.
            if _was_reset(self._sock):
                if n:
                    self._deliver(view, n)
                self._force_close(ConnectionResetError("connection reset by peer"))
                return
            eof = True
        except ssl.SSLWantWriteError:
            self._read_wants_write = True
            self._stop_reading()
            self._start_writing()
        except (ssl.SSLError, OSError) as exc:
            if n:
                self._deliver(view, n)
            self._force_close(exc)
            return
        if (
            (drained or eof)
            and self._ssl_pointer is not None
            and not (self._pending or self._unflushed)
        ):
            # Nothing more to read for now (or ever: a half-closed connection may wait hours
            # for the other direction): what the connection holds of OpenSSL's buffers goes
            # back. At most a call that finds nothing to free; never while bytes are unsent.
            _LIBSSL.release_buffers(self._ssl_pointer)
        records = self._records
        if records is not None and records.unsent and not self._unflushed:
            self._unflushed = True  # our KeyUpdate, left for the socket
            self._start_writing()
        if n:
            self._deliver(view, n)
            if (
                n == size
                and not eof
                and self._has_pending()
                and not (self._closing or self._read_paused)
            ):
                self._loop.call_soon(self._read_ready)
        if eof and not self._closing:
            self._eof_received = True
            self._stop_reading()
            keep_open = self._protocol.eof_received()
            if self._eof_sent or not keep_open or not self.can_write_eof():
                # Both directions have ended, or the protocol is done, or this connection
                # cannot stay half-open (TLS 1.2): close, as asyncio's TLS transports do.
                self.close()

    def _deliver(self, view: memoryview, n: int) -> None:
        """Hand the `n` bytes read into `view` to the protocol: in place to a buffered one
        (`view` is its buffer), as `bytes` to another (`view` is ours, reused next read)."""
        if self._buffered:
            self._protocol.buffer_updated(n)  # type: ignore[attr-defined]
        else:
            self._protocol.data_received(bytes(view[:n]))

    # -- writing ---------------------------------------------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_water, self._high_water

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        if self._eof_wanted or self._lost:
            return  # after write_eof/close/abort: dropped, as asyncio's transports do
        if not data:
            return
        if self._pending or self._unflushed:
            self._keep(data)
            self._maybe_pause_protocol()
            return
        try:
            self._encrypt(data)
            return
        except ssl.SSLWantWriteError:
            pass  # OpenSSL took part of it: the retry must start with these same bytes
        except (ssl.SSLError, OSError) as exc:
            self._force_close(exc)
            return
        self._keep(data)
        self._start_writing()
        self._maybe_pause_protocol()

    def _keep(self, data: bytes | bytearray | memoryview) -> None:
        """Add `data` to what waits for the socket (a copy: the caller may reuse its buffer)."""
        pending = self._pending
        if pending:
            pending += data  # type: ignore[operator]  # a bytearray, extended in place
        else:
            self._pending = bytearray(data)

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        """SSL_write. On the socket itself that is one system call per TLS record (16 KiB);
        more than one record goes through a write buffer (`push_write_buffer`) instead and
        leaves in one send (the buffer is taken off once flushed; while the socket is full,
        `_unflushed` and the writer wait for it). Where there is no write buffer, the socket
        is corked meanwhile, so that the kernel sends full segments rather than one per record
        (on loopback and real links alike, per-segment costs dominate the small ones)."""
        records = self._records
        if records is not None:
            if not records.write(data):
                self._unflushed = True
                self._start_writing()
            return
        if len(data) <= _RECORD and self._wbuf is None:
            self._sslobj.write(data)
            return
        if self._wbuf is None and self._pointer is not None:
            self._wbuf = _LIBSSL.push_write_buffer(self._pointer)
        if self._wbuf is not None:
            self._sslobj.write(data)  # SSLWantWriteError: the buffer is full, the socket too
            self._flush()
            return
        setsockopt = self._sock.setsockopt
        setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
        try:
            self._sslobj.write(data)
        finally:
            setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)

    def _flush(self) -> bool:
        """Send what the write buffer holds: True when done (the buffer is taken off), False
        when the socket is full (the writer is started: `_write_ready` comes back); OSError
        when the socket failed."""
        records = self._records
        if records is not None:
            if not records.flush():
                self._unflushed = True
                self._start_writing()
                return False
            self._unflushed = False
            return True
        buffer = self._wbuf
        if buffer is None:
            return True
        if not _LIBSSL.flush(buffer):
            self._unflushed = True
            self._start_writing()
            return False
        self._unflushed = False
        self._wbuf = None
        assert self._pointer is not None
        _LIBSSL.pop_write_buffer(self._pointer, buffer)
        return True

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return self._pointer is not None or self._records is not None

    def write_eof(self) -> None:
        """Send close_notify once the pending bytes are written, then FIN; reading goes on."""
        if self._eof_wanted or self._closing:
            return
        if not self.can_write_eof():
            raise NotImplementedError("half-close needs TLS 1.3 and SSL_shutdown")
        self._eof_wanted = True
        if not self._pending:
            self._finish_writing()

    def _start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            BARE_CONTEXT.run(self._loop.add_writer, self._fd, self._write_ready)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _write_ready(self) -> None:
        if self._lost:
            return
        if self._read_wants_write:
            self._read_wants_write = False
            if not self._pending and not self._eof_wanted:
                self._stop_writing()
            if not (self._closing or self._read_paused):
                self._start_reading()
                self._read_ready()
            if self._lost:
                return
        if self._unflushed:
            try:
                if not self._flush():
                    return
            except OSError as exc:
                self._force_close(exc)
                return
        pending = self._pending
        if pending:
            try:
                self._encrypt(pending)
            except ssl.SSLWantWriteError:
                return
            except (ssl.SSLError, OSError) as exc:
                self._force_close(exc)
                return
            self._pending = _NOTHING  # resume_writing below may write: a new bytearray
            if self._write_paused and not self._closing:
                self._write_paused = False
                self._protocol.resume_writing()
            if self._pending or self._unflushed:
                return  # more is waiting (resume_writing wrote more, or the socket is full)
        self._stop_writing()
        if self._eof_wanted:
            self._finish_writing()

    def _maybe_pause_protocol(self) -> None:
        if not self._write_paused and len(self._pending) > self._high_water:
            self._write_paused = True
            self._protocol.pause_writing()

    def _finish_writing(self) -> None:
        """Everything is written: send close_notify and FIN (write_eof), or close (close)."""
        if self._unflushed:
            return  # the write buffer first: the writer comes back here once it is sent
        if not self._eof_sent:
            sent = self._send_close_notify()
            if sent is None:
                self._start_writing()  # the socket is full: again when writable
                return
            self._eof_sent = True
            if sent and not self._closing:
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    self._force_close(exc)
                    return
                if self._eof_received:
                    self.close()  # both directions have ended
                    return
        if self._closing:
            self._release(None)

    def _send_close_notify(self) -> bool | None:
        """True: sent; None: retry when writable; False: not sent (no half-close here)."""
        if self._records is not None:
            return self._records.close_notify()
        pointer = self._pointer
        if pointer is not None:
            return _LIBSSL.close_notify(pointer)
        if self._closing:
            # No one-way SSL_shutdown (TLS 1.2): the ssl module's, whose second SSL_shutdown
            # may fail on bytes in flight; the connection is ending both ways anyway.
            try:
                self._sslobj.shutdown()
            except (ssl.SSLError, OSError):
                pass
        return False

    # -- ending ----------------------------------------------------------------------------------

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._closing = True
        self._pending = _NOTHING
        self._release(exc, graceful=False)

    def _release(self, exc: BaseException | None, *, graceful: bool = True) -> None:
        if self._lost:
            return
        self._lost = True
        tls_handoff.COUNT.open -= 1
        self._stop_reading()
        self._stop_writing()
        if graceful:
            discard_unread(self._sock)  # a close with unread bytes would be a reset
        self._sock.close()
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        protocol_lost: Callable[[BaseException | None], None] = self._protocol.connection_lost
        protocol_lost(exc)


_TCP_CLOSE = 7  # tcpi_state after a reset (a FIN leaves CLOSE_WAIT, TIME_WAIT, CLOSING...)


def _was_reset(sock: socket.socket) -> bool:
    """The connection ended with a reset (Linux: TCP_INFO's state); False when unknown."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE
    except (OSError, AttributeError):
        return False


def _address(getter: Callable[[], Any]) -> Any:
    try:
        return getter()
    except OSError:
        return None
