"""Established tunnels on the L7 path (websocket upgrades, CONNECT): bytes forwarded where they
arrive.

Once an upgrade or a CONNECT is accepted, the router carries each direction with a task that
reads the source's `Body` and awaits the other side's `write`: per message that is a future
resolved, a task woken and an awaited write, where a websocket echo sends one small message at a
time. A `Relay` lets the codec that receives tunnel bytes (in `data_received`) write them to the
other side at once, when nothing is queued before them and that side can take them without
waiting: its transport is not paused, and on HTTP/2 the stream and connection windows hold the
whole chunk. Anything else goes into the body as before, and the router's task carries it with
back-pressure (paused reading, withheld HTTP/2 credit), so a slow reader is still felt at the
source and nothing is buffered beyond a body's bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sidecar.http.exchange import Body


class Relay:
    """One direction of an established tunnel: its source's body, and the other side's write
    that either takes a chunk now or refuses it."""

    __slots__ = ("body", "write_now", "count")

    def __init__(
        self, body: Body, write_now: Callable[[bytes], bool], count: Callable[[bytes], None]
    ) -> None:
        self.body = body
        self.write_now = write_now
        self.count = count  # the exchange's byte accounting for this direction

    def offer(self, data: bytes) -> bool:
        """Forward `data` now; False when the codec must feed it to the body instead.

        Only while the router's task waits in `Body.read` for the next chunk: then nothing is
        queued or being written ahead of this chunk, so it cannot overtake one. The read counter
        moves as a read would, for the stream idle timeout."""
        body = self.body
        if not body.reader_waiting or not self.write_now(data):
            return False
        body.reads += 1
        self.count(data)
        return True


class TunnelEnd(Protocol):
    """Either side of a tunnel: a downstream exchange or an upstream stream, of either codec."""

    body: Body
    relay: Relay | None

    def write_now(self, data: bytes) -> bool:
        """Write the whole chunk now and return True, or write nothing and return False (the
        transport is paused, a window is short, the stream is done)."""
        ...


def splice(
    downstream: TunnelEnd,
    upstream: TunnelEnd,
    request_chunk: Callable[[bytes], None],
    response_chunk: Callable[[bytes], None],
) -> None:
    """Let both directions of an accepted tunnel forward from `data_received`."""
    downstream.relay = Relay(downstream.body, upstream.write_now, request_chunk)
    upstream.relay = Relay(upstream.body, downstream.write_now, response_chunk)


def unsplice(downstream: TunnelEnd, upstream: TunnelEnd) -> None:
    """The tunnel is over: drop the relays (they tie the two sides in a reference cycle)."""
    downstream.relay = None
    upstream.relay = None
