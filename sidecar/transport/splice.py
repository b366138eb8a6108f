"""The zero-copy relay for plain TCP: splice(2) socket → pipe → socket on the loop's raw fds.

When both sides of a relayed connection are plain sockets (a `tcp` listener with no TLS, no tap and
no sniffing), bytes never need to enter the process: `os.splice` moves them from the reading
socket into a pipe and from the pipe into the writing socket, and the kernel hands pages along
instead of copying them twice (once into a Python `bytes`, once out of it) as the `Protocol` relay
(`sidecar.transport.relay`) must. The event loop only tells us when an fd is ready
(`loop.add_reader` / `add_writer` on the raw fds), which uvloop and asyncio both offer. The
Protocol relay stays the path for everything else: TLS, the Kafka tap, sniffed connections.

Semantics are the Protocol relay's:

- Back-pressure: one pipe per direction, of `PIPE_SIZE` bytes at most. A direction reads only when
  its pipe is empty; when the writing socket is full, reading stops until the pipe is drained
  (writability of the other socket), so a slow reader holds the sidecar to one pipe per direction,
  in the kernel, whatever the volume.
- Half-close: EOF from one peer becomes `shutdown(SHUT_WR)` toward the other once the pipe is
  drained; the connection stays open for the reply and ends when both directions have ended.
  A graceful close (idle timeout, drain deadline, no upstream) drops unread input first, so that
  the peers see a FIN, not a reset.
- Resets: an error on either socket (a reset, a write to a reset peer) closes both with SO_LINGER 0,
  so the other peer sees a reset too.
- Idle timeout: as the Protocol relay, without a clock call per chunk.
- Bytes are counted per direction (`downstream.rx_bytes`, `upstream.rx_bytes`) for the stats and
  the access log, which read a `SpliceRelay` exactly as they read a `Relay`.
- A server that speaks first is relayed as soon as the upstream connection is up; the downstream
  is not read before that (its bytes wait in the kernel).

Pipes are taken from a small per-process pool when a direction has bytes to move and given back
once it is drained, so an idle connection holds two sockets and no pipe.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from sidecar.transport import idle

_LINGER_RST = struct.pack("ii", 1, 0)
PIPE_SIZE = 256 * 1024  # one read of uvloop's size; the back-pressure bound per direction
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_splice = getattr(os, "splice", None)
_SCRATCH = bytearray(64 * 1024)  # where a graceful close discards what it will not relay


def supported() -> bool:
    """splice(2) is there: Linux, Python ≥ 3.10."""
    return sys.platform.startswith("linux") and _splice is not None


class PipePool:
    """Empty pipes kept for reuse: a busy relay takes one per chunk and gives it straight back."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self.free: list[tuple[int, int]] = []

    def get(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # over the per-user pipe allowance: a default-sized pipe still works
            pass
        return r, w

    def put(self, pipe: tuple[int, int]) -> None:
        """Give back an *empty* pipe."""
        if len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            discard(pipe)


def discard(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        try:
            os.close(fd)
        except OSError:
            pass


POOL = PipePool()


class Flow:
    """One direction: what is read from `sock` goes to `peer.sock` through a pipe.

    `rx_bytes` is what this side's peer sent (the stats' and access log's view of a relay side).
    """

    __slots__ = ("relay", "peer", "sock", "fd", "rx_bytes", "pipe", "pending", "eof", "reading",
                 "blocked")  # fmt: skip

    def __init__(self, relay: SpliceRelay, sock: socket.socket | None) -> None:
        self.relay = relay
        self.peer: Flow = self
        self.sock = sock
        self.fd = sock.fileno() if sock is not None else -1
        self.rx_bytes = 0
        self.pipe: tuple[int, int] | None = None
        self.pending = 0  # bytes in the pipe, not yet written to the peer
        self.eof = False  # this side's peer finished sending (and all of it was passed on)
        self.reading = False  # a reader is registered on `fd`
        self.blocked = False  # a writer is registered on `peer.fd`: the pipe waits to drain

    def start(self) -> None:
        self.reading = True
        self.relay.loop.add_reader(self.fd, self.readable)

    def readable(self) -> None:
        pipe = self.pipe
        if pipe is None:
            pipe = self.pipe = POOL.get()
        try:
            n = _splice(self.fd, pipe[1], PIPE_SIZE, None, None, _FLAGS)  # type: ignore[misc]
        except BlockingIOError:
            self.pipe = None
            POOL.put(pipe)
            return
        except OSError as exc:
            self.relay.failed(exc)
            return
        if n == 0:
            self.pipe = None
            POOL.put(pipe)
            self._ended()
            return
        self.rx_bytes += n
        relay = self.relay
        relay.active = True
        self.pending = n
        self.flush()

    def flush(self) -> None:
        pipe = self.pipe
        assert pipe is not None
        peer_fd = self.peer.fd
        pending = self.pending
        try:
            while pending:
                pending -= _splice(pipe[0], peer_fd, pending, None, None, _FLAGS)  # type: ignore[misc]
        except BlockingIOError:
            self.pending = pending
            if not self.blocked:  # stop reading until the peer's socket takes the pipe's bytes
                loop = self.relay.loop
                if self.reading:
                    self.reading = False
                    loop.remove_reader(self.fd)
                self.blocked = True
                loop.add_writer(peer_fd, self.flush)
            return
        except OSError as exc:
            self.pending = pending
            self.relay.failed(exc)
            return
        self.pending = 0
        self.pipe = None
        POOL.put(pipe)
        if self.blocked:
            self.blocked = False
            loop = self.relay.loop
            loop.remove_writer(peer_fd)
            self.reading = True
            loop.add_reader(self.fd, self.readable)

    def _ended(self) -> None:
        """EOF from this side's peer, with everything before it passed on: half-close."""
        self.eof = True
        if self.reading:
            self.reading = False
            self.relay.loop.remove_reader(self.fd)
        peer_sock = self.peer.sock
        if self.peer.eof:
            self.relay.close()
            return
        if peer_sock is not None:
            try:
                peer_sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    self.relay.failed(exc)

    def unregister(self) -> None:
        loop = self.relay.loop
        if self.reading:
            self.reading = False
            loop.remove_reader(self.fd)
        if self.blocked:
            self.blocked = False
            loop.remove_writer(self.peer.fd)
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            if self.pending:
                discard(pipe)
            else:
                POOL.put(pipe)
            self.pending = 0


class SpliceRelay:
    """A relayed connection whose two sides are raw non-blocking sockets.

    The proxy (`sidecar.transport.tcp`) creates it with the accepted socket, calls `connect` for
    each upstream attempt and `link` once one succeeded. It has the attributes of `Relay` that the
    proxy, the stats and the access log read.
    """

    __slots__ = ("loop", "downstream", "upstream", "started", "target", "destination", "active",
                 "linked", "closed", "idle_timed_out", "response_flags", "peername", "_on_closed",
                 "_idle", "_connect_timer", "_on_connect")  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float,
        on_closed: Callable[[Any], Any] | None,
        sock: socket.socket,
        peername: Any = None,
    ) -> None:
        self.loop = loop
        self.downstream = Flow(self, sock)
        self.upstream = Flow(self, None)
        self.downstream.peer = self.upstream
        self.upstream.peer = self.downstream
        self.peername = peername
        self.started = loop.time()
        self.target: object | None = None
        self.destination: object | None = None  # where to connect, when not the cluster's pick
        self.active = False
        self.linked = False
        self.closed = False
        self.idle_timed_out = False
        self.response_flags = ""
        self._on_closed = on_closed
        self._idle = idle.watch(loop, idle_timeout, self)
        self._connect_timer: asyncio.TimerHandle | None = None
        self._on_connect: Callable[[str | None, bool], None] | None = None

    # -- connecting ----------------------------------------------------------------------------

    def connect(
        self,
        host: str,
        port: int,
        timeout: float,
        done: Callable[[str | None, bool], None],
        source: tuple[str, int] | None = None,
    ) -> None:
        """Start one upstream attempt from `source` (None: the kernel's choice); `done(error,
        timed_out)` follows (error None: connected)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            done(exc.strerror or str(exc), False)
            return
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        up = self.upstream
        up.sock, up.fd = sock, sock.fileno()
        if source is not None:
            try:
                sock.bind(source)
            except OSError as exc:
                self._drop_upstream()
                done(exc.strerror or str(exc), False)
                return
        err = sock.connect_ex((host, port))
        if err == 0:
            done(None, False)
            return
        if err != errno.EINPROGRESS:
            self._drop_upstream()
            done(os.strerror(err), False)
            return
        self._on_connect = done
        self.loop.add_writer(up.fd, self._connected)
        if timeout > 0:
            self._connect_timer = self.loop.call_later(timeout, self._connect_timed_out)

    def _connected(self) -> None:
        done = self._stop_connecting()
        sock = self.upstream.sock
        assert done is not None and sock is not None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._drop_upstream()
            done(os.strerror(err), False)
        else:
            done(None, False)

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        done = self._stop_connecting()
        self._drop_upstream()
        if done is not None:
            done("connect timeout", True)

    def _stop_connecting(self) -> Callable[[str | None, bool], None] | None:
        done, self._on_connect = self._on_connect, None
        if done is not None:
            self.loop.remove_writer(self.upstream.fd)
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        return done

    def _drop_upstream(self) -> None:
        up = self.upstream
        if up.sock is not None:
            up.sock.close()
        up.sock, up.fd = None, -1

    def link(self) -> None:
        """The upstream is connected: relay both ways."""
        self.linked = True
        self.downstream.start()
        self.upstream.start()

    # -- ending ----------------------------------------------------------------------------------

    def failed(self, exc: OSError) -> None:
        """An error on either socket: both peers see a reset."""
        self.abort()

    def close(self) -> None:
        """Close both sides with a FIN (bytes still in a pipe are dropped)."""
        self._close(reset=False)

    def abort(self) -> None:
        self._close(reset=True)

    def _close(self, reset: bool) -> None:
        if self.closed:
            return
        self._stop_connecting()
        for flow in (self.downstream, self.upstream):
            flow.unregister()
        for flow in (self.downstream, self.upstream):
            sock = flow.sock
            if sock is None:
                continue
            if reset:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                except OSError:
                    pass
            else:
                discard_unread(sock)
            sock.close()
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.discard(self)
            self._idle = None
        if self._on_closed is not None:
            self._on_closed(self)


def discard_unread(sock: socket.socket) -> None:
    """Read and drop what the peer sent and we will not relay: closing a socket with unread
    bytes sends a reset, and a graceful close must be a FIN (as the Protocol relay's is, whose
    transports have read everything that arrived)."""
    try:
        for _ in range(16):
            if not sock.recv_into(_SCRATCH, len(_SCRATCH), socket.MSG_DONTWAIT):
                return
    except OSError:
        pass
