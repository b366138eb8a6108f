"""The L4 relay: one bidirectional byte pump between two transports, written once.

TCP, TLS passthrough, websocket tunnels after the upgrade and Kafka (with a tap) all ride it. It is
built on `asyncio.Protocol` rather than streams: bytes go from one transport's `data_received`
straight into the other's `write`, with no task switch and no intermediate buffer of ours.

- Back-pressure is mirrored: when one side's transport buffer passes its high-water mark, asyncio
  calls `pause_writing` on that side, and we pause *reading* on the other. A slow reader therefore
  holds the sidecar to about one high-water mark plus one read per direction.
- Half-close is propagated: EOF from one peer becomes `write_eof` toward the other, and the
  connection stays open for the reply. Transports that cannot half-close (TLS) are closed after
  their buffer drains once the other side has finished.
- Resets are propagated: a side lost with an error aborts the other with an RST (SO_LINGER 0).
- Idle connections are closed after the idle timeout, measured without a clock call per chunk.
- Reads land in one buffer per process (`ReadBuffer`), not in a new `bytes` per read: each side
  is an `asyncio.BufferedProtocol` (uvloop, asyncio and our TLS transport read into it), and
  what was read is written to the other side from that buffer at once. A bulk transfer thus
  costs one copy less per byte. Where the other transport keeps a reference instead of sending
  or copying everything (uvloop and asyncio keep the unsent rest of a write as a view), the
  next reads go to a fresh buffer; bytes held back (before linking) and taps get copies.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

from sidecar import defaults
from sidecar.transport import idle

_LINGER_RST = struct.pack("ii", 1, 0)


def abort_with_reset(transport: asyncio.BaseTransport | None) -> None:
    """Close a transport so that the peer sees a reset, as the other side of the relay did."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    transport.abort()


class ReadBuffer:
    """The buffer every relay side of this process reads into (the event loop runs one read's
    callback to its end before the next read, so one is enough while nobody keeps it). Made
    at the first read: a sidecar that relays nothing keeps none of it resident."""

    __slots__ = ("view",)

    SIZE = 256 * 1024  # a read of uvloop's (256,000 bytes) or of 16 TLS records fits

    def __init__(self) -> None:
        self.view: memoryview | None = None

    def get(self) -> memoryview:
        view = self.view
        if view is None:
            view = self.view = memoryview(bytearray(self.SIZE))
        return view

    def renew(self) -> None:
        """A transport keeps a view of the current buffer (its unsent rest): the next read
        gets another one. The old one lives on as long as that view."""
        self.view = None


READ_BUFFER = ReadBuffer()


class Side(asyncio.BufferedProtocol):
    """One end of a relay: what it reads goes to `peer`'s transport.

    Transports that support it read into `READ_BUFFER` (`get_buffer`/`buffer_updated`); the
    others, and callers replaying held bytes (`sidecar.transport.peek`), use `data_received`.
    """

    __slots__ = ("relay", "peer", "transport", "eof", "pending", "rx_bytes", "on_data", "on_made")

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.peer: Side | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False  # this side's peer has finished sending
        self.pending: list[bytes] | None = None  # bytes read before the other side existed
        self.rx_bytes = 0
        self.on_data: Callable[[bytes], None] | None = None  # read-only tap (Kafka insight)
        self.on_made: Callable[[Side], None] | None = None  # e.g. start connecting upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        if self.relay.closed:
            transport.close()
            return
        # No TCP_NODELAY here: uvloop and asyncio set it on every TCP transport they make.
        high = self.relay.buffer_bytes
        transport.set_write_buffer_limits(high, high // 4)
        if self.on_made is not None:
            self.on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return READ_BUFFER.get()

    def buffer_updated(self, nbytes: int) -> None:
        shared = READ_BUFFER
        view = shared.get()  # the one get_buffer gave
        peer = self.peer
        transport = peer.transport if peer is not None else None
        if self.on_data is not None or transport is None:
            # A tap, or bytes to hold until the other side exists: they get their own copy.
            self.data_received(bytes(view[:nbytes]))
            return
        self.rx_bytes += nbytes
        self.relay.active = True
        transport.write(view[:nbytes])
        if transport.get_write_buffer_size() and not getattr(transport, "copies_writes", False):
            # What the socket did not take is kept as a view of our buffer: read into another.
            shared.renew()

    def data_received(self, data: bytes) -> None:
        self.rx_bytes += len(data)
        self.relay.active = True
        if self.on_data is not None:
            self.on_data(data)
        peer = self.peer
        if peer is None or peer.transport is None:
            # The other side is still connecting: hold what came (at most one read; reading is
            # paused until the relay is linked).
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            else:
                peer.transport.close()
        if peer is not None and peer.eof:
            self.relay.close()
        # Keep our transport open for the reply. A TLS transport cannot stay half-open (asyncio
        # and uvloop close it after a close_notify, and warn when asked otherwise).
        transport = self.transport
        return transport is None or transport.can_write_eof()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.side_lost(self, exc)


class Relay:
    """Two linked sides and their shared lifecycle: idle timeout, close and reset propagation."""

    # No instance dict: one of these per relayed connection, most of them idle (issue 8)
    __slots__ = ("loop", "buffer_bytes", "downstream", "upstream", "started", "target",
                 "destination", "active", "linked", "closed", "idle_timed_out", "response_flags",
                 "_on_closed", "_idle")  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float,
        on_closed: Callable[[Relay], Any] | None = None,
        buffer_bytes: int = defaults.RELAY_HIGH_WATER,
    ) -> None:
        self.loop = loop
        self.buffer_bytes = buffer_bytes  # unsent bytes a side holds before its peer pauses
        self.downstream = Side(self)
        self.upstream = Side(self)
        self.downstream.peer = self.upstream
        self.upstream.peer = self.downstream
        self.started = loop.time()
        self.target: object | None = None  # what the upstream side is connected to
        # Where to connect, when not the cluster's pick (transparent proxying's passthrough).
        self.destination: object | None = None
        self.active = False
        self.linked = False
        self.closed = False
        self.idle_timed_out = False
        self.response_flags = ""  # Envoy's %RESPONSE_FLAGS% for the access log: UH, UF
        self._on_closed = on_closed
        self._idle = idle.watch(loop, idle_timeout, self)

    @property
    def peername(self) -> Any:
        """The downstream peer's address (for the access log); None once unknown."""
        transport = self.downstream.transport
        return transport.get_extra_info("peername") if transport is not None else None

    def link(self) -> None:
        """Both sides are connected: replay anything read early and start pumping."""
        self.linked = True
        for side in (self.downstream, self.upstream):
            pending, side.pending = side.pending, None
            assert side.peer is not None and side.peer.transport is not None
            if pending:
                side.peer.transport.writelines(pending)
            if side.eof:
                side.eof = False
                side.eof_received()
            elif side.transport is not None and not side.transport.is_closing():
                side.transport.resume_reading()

    def side_lost(self, side: Side, exc: Exception | None) -> None:
        if not self.linked and side is self.upstream:
            # A failed attempt before linking (e.g. a refused peer identity) is the connector's
            # business: it may try another endpoint with this same side.
            side.transport = None
            return
        peer = side.peer
        assert peer is not None
        if exc is not None:
            abort_with_reset(peer.transport)
        elif peer.transport is not None and not peer.transport.is_closing():
            # Nothing more can reach this side: flush what it sent, then FIN.
            peer.transport.close()
        self._finish()

    def close(self) -> None:
        """Close both sides gracefully, flushing what is buffered."""
        for side in (self.downstream, self.upstream):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        self._finish()

    def abort(self) -> None:
        for side in (self.downstream, self.upstream):
            abort_with_reset(side.transport)
        self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._idle is not None:
            self._idle.discard(self)
            self._idle = None
        if self._on_closed is not None:
            self._on_closed(self)
