"""Upstream connection pools, per endpoint.

- `H2Pool`: multiplexed HTTP/2. All requests to one endpoint share one connection; a second opens
  only when the peer's stream limit is reached or the connection is going away (GOAWAY). With
  `spread` > 1 (a sidecar of several workers: the peer has several too, and the kernel gives each
  of its workers whole connections) up to `spread` connections are opened per endpoint, and each
  request takes the one with the fewest streams in flight, which also steers work away from a
  busy peer worker.
- `H1Pool`: keep-alive HTTP/1.1 toward a local app, one exchange per connection at a time.

Both close a connection that has carried no request for the upstream idle timeout (Envoy's
cluster `idle_timeout`, 1 h: `sweep`, which the runtime calls with the listeners' checks).

Both count the bytes of their connections into the cluster's `upstream_cx_rx_bytes_total` and
`upstream_cx_tx_bytes_total`, as the TCP relay does: each connection counts its own (one integer
add per read or write), the pool adds them to the totals when it ends, and `open_bytes` sums
those of the open ones for a stats read (`ClusterStats.open_rx_bytes`). Per endpoint they keep
the connections and requests, open and all (`host_counts`: the host lines of /clusters).

Both take a `Connector` (`sidecar.transport.connect`), which is how the mesh's transport (plain
TCP or mTLS) is chosen without the pools knowing about it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable

from sidecar import defaults
from sidecar.cluster import Target
from sidecar.http.exchange import RequestHead, UpstreamOverflow
from sidecar.http.h1 import H1Client, H1ClientStream
from sidecar.http.h2 import H2ClientStream, H2Protocol
from sidecar.limits import DEFAULT_LIMITS, Limits
from sidecar.observe.stats import ClusterStats
from sidecar.transport.connect import Connector, plain_connector

log = logging.getLogger("sidecar.pool")

__all__ = ["Connector", "H1Pool", "H2Pool", "UpstreamStream", "plain_connector"]

UpstreamStream = H2ClientStream | H1ClientStream

_MAX_IDLE_H1 = 64


def _reserve_connection(stats: ClusterStats | None) -> None:
    """Count a new upstream connection against the cluster's circuit breaker, or refuse it."""
    if stats is None:
        return
    if stats.upstream_cx_active >= stats.cb_max_connections:
        stats.upstream_cx_overflow += 1
        raise UpstreamOverflow("cluster at its max connections")
    stats.upstream_cx_active += 1


def _count_closed_bytes(stats: ClusterStats | None, conn: H1Client | H2Protocol) -> None:
    """A connection has ended: its bytes join the cluster's totals."""
    if stats is not None:
        stats.upstream_cx_rx_bytes_total += conn.rx_bytes
        stats.upstream_cx_tx_bytes_total += conn.tx_bytes


# Per endpoint, Envoy's host lines of /clusters: connections and requests, open and all.
HostCounts = dict[str, dict[str, int]]


def _host_counts(
    open_conns: Iterable[tuple[Target | None, int, int]], ended: dict[str, list[int]]
) -> HostCounts:
    """`cx_active`, `cx_total`, `rq_active`, `rq_total` per endpoint, from the open connections
    (endpoint, requests in flight, requests sent) and those that `_ended`."""
    counts: HostCounts = {
        host: {"cx_active": 0, "cx_total": cx, "rq_active": 0, "rq_total": rq}
        for host, (cx, rq) in ended.items()
    }
    for target, in_flight, sent in open_conns:
        if target is None:
            continue
        zero = {"cx_active": 0, "cx_total": 0, "rq_active": 0, "rq_total": 0}
        host = counts.setdefault(str(target), zero)
        host["cx_active"] += 1
        host["cx_total"] += 1
        host["rq_active"] += in_flight
        host["rq_total"] += sent
    return counts


def _ended(ended: dict[str, list[int]], target: Target | None, sent: int) -> None:
    """A connection to `target` has ended, after `sent` requests: kept for `_host_counts`."""
    if target is not None:
        totals = ended.setdefault(str(target), [0, 0])
        totals[0] += 1
        totals[1] += sent


def _h2_requests(proto: H2Protocol) -> int:
    """Requests a client connection has sent: its streams, odd ids from 1 (RFC 9113 5.1.1)."""
    return (proto.conn.highest_outbound_stream_id + 1) // 2


def _count_idle_timeout(stats: ClusterStats | None) -> None:
    if stats is not None:
        stats.upstream_cx_idle_timeout += 1


class H2Pool:
    def __init__(
        self,
        connector: Connector,
        *,
        trusted: bool,
        stats: ClusterStats | None = None,
        mesh_hop: bool = False,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """`stats`: the cluster's, whose connections this pool counts and bounds. `trusted`,
        `mesh_hop`, `limits`: as `H2Protocol`'s (toward peer sidecars; verified by mTLS)."""
        self.connector = connector
        self.limits = limits
        self.trusted = trusted
        self.mesh_hop = mesh_hop
        self.stats = stats
        self.connections: dict[Target, list[H2Protocol]] = {}
        self._connecting: dict[Target, asyncio.Future[None]] = {}
        self.spread = 1  # connections per endpoint to keep open (see the module's docstring)
        self.ended: dict[str, list[int]] = {}  # endpoint → connections and requests that ended
        self._spreading: set[asyncio.Future[None]] = set()

    def ready_stream(
        self, target: Target, head: RequestHead, end_stream: bool
    ) -> H2ClientStream | None:
        """A stream on a connection that takes it now, or None when one must be waited for
        (`open_stream`): nearly every request, served without a coroutine."""
        conns = self.connections.get(target)
        if not conns:
            return None
        if self.spread > 1:
            if len(conns) < self.spread and target not in self._connecting:
                task = asyncio.ensure_future(self._connect_more(target))
                self._spreading.add(task)
                task.add_done_callback(self._spreading.discard)
            best = min(
                (c for c in conns if c.available), key=lambda c: len(c.streams), default=None
            )
            return None if best is None else best.open_stream(head, end_stream)
        for conn in conns:
            if conn.available:
                return conn.open_stream(head, end_stream)
        return None

    async def open_stream(
        self, target: Target, head: RequestHead, end_stream: bool
    ) -> H2ClientStream:
        while True:
            stream = self.ready_stream(target, head, end_stream)
            if stream is not None:
                return stream
            conns = self.connections.get(target, [])
            pending = self._connecting.get(target)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            if any(c.usable for c in conns) and not pending:
                # Every usable connection is at its stream limit: wait for a slot briefly; if
                # none frees up, open another connection.
                waiters = [asyncio.ensure_future(c.wait_slot()) for c in conns if c.usable]
                done, not_done = await asyncio.wait(waiters, timeout=0.005)
                for w in not_done:
                    w.cancel()
                if done:
                    continue
            await self._connect(target)

    async def _connect(self, target: Target) -> None:
        future = asyncio.get_running_loop().create_future()
        self._connecting[target] = future
        try:
            _reserve_connection(self.stats)
            proto = H2Protocol(
                client_side=True,
                trusted=self.trusted,
                mesh_hop=self.mesh_hop,
                on_close=self._closed,
                limits=self.limits,
            )
            try:
                await self.connector(target, lambda: proto)
            except BaseException:
                if self.stats is not None:
                    self.stats.upstream_cx_active -= 1
                raise
            proto.target = target
            self.connections.setdefault(target, []).append(proto)
            log.debug("event=h2_connected endpoint=%s", target)
        finally:
            del self._connecting[target]
            future.set_result(None)

    async def _connect_more(self, target: Target) -> None:
        """Another connection beside those in use (spread); a failure only leaves fewer."""
        try:
            await self._connect(target)
        except Exception as exc:
            log.debug("event=h2_spread_connect_failed endpoint=%s error=%r", target, str(exc))

    def _closed(self, proto: H2Protocol) -> None:
        if self.stats is not None and proto.target is not None:
            self.stats.upstream_cx_active -= 1
        _count_closed_bytes(self.stats, proto)
        _ended(self.ended, proto.target, _h2_requests(proto))
        target = proto.target
        conns = self.connections.get(target) if target is not None else None
        if conns is not None and proto in conns:
            conns.remove(proto)
            if not conns:
                del self.connections[target]

    def host_counts(self) -> HostCounts:
        return _host_counts(
            (
                (target, len(proto.streams), _h2_requests(proto))
                for target, conns in self.connections.items()
                for proto in conns
                if not proto.closed
            ),
            self.ended,
        )

    def open_bytes(self) -> tuple[int, int]:
        """Bytes read and written so far on the open connections (those that ended are in the
        cluster's totals already)."""
        rx = tx = 0
        for conns in self.connections.values():
            for conn in conns:
                if not conn.closed:
                    rx += conn.rx_bytes
                    tx += conn.tx_bytes
        return rx, tx

    def sweep(self, now: float) -> None:
        """Close the connections idle for the upstream idle timeout, with a GOAWAY. Idleness is
        judged here, not timed per request: a connection with no stream in flight whose last
        stream id has not moved since an earlier sweep has been idle since that sweep."""
        timeout = self.limits.upstream_idle_timeout
        if timeout <= 0:
            return
        for conns in list(self.connections.values()):
            for conn in list(conns):
                opened = conn.conn.highest_outbound_stream_id
                mark = conn.idle_mark
                if conn.streams or mark is None or mark[0] != opened:
                    conn.idle_mark = (opened, now)
                elif now - mark[1] >= timeout:
                    _count_idle_timeout(self.stats)
                    log.debug("event=upstream_idle_timeout endpoint=%s", conn.target)
                    conn.goaway()  # no stream in flight: it closes at once

    def close(self) -> None:
        for conns in self.connections.values():
            for conn in conns:
                conn.goaway()


class H1Pool:
    def __init__(
        self,
        connector: Connector,
        stats: ClusterStats | None = None,
        body_buffer: int = defaults.BODY_HIGH_WATER,
        idle_timeout: float = defaults.UPSTREAM_IDLE_TIMEOUT,
    ) -> None:
        """`stats`: the cluster's, whose connections this pool counts and bounds; `body_buffer`:
        bytes of a response body held before reading from the app pauses; `idle_timeout`: how
        long a kept-alive connection waits for its next request (0: for ever)."""
        self.connector = connector
        self.stats = stats
        self.body_buffer = body_buffer
        self.idle_timeout = idle_timeout
        self.idle: dict[Target, list[H1Client]] = {}
        # Every open connection, idle or not: its bytes are read for the stats (`open_bytes`).
        self.open: set[H1Client] = set()
        self.ended: dict[str, list[int]] = {}  # endpoint → connections and requests that ended

    def ready_stream(
        self, target: Target, head: RequestHead, end_stream: bool
    ) -> H1ClientStream | None:
        """The request on an idle keep-alive connection, or None when a new connection must be
        made (`open_stream`)."""
        idle = self.idle.get(target)
        while idle:
            client = idle.pop()
            if client.reusable:
                client.reused = True
                return client.open(head, end_stream)
        return None

    async def open_stream(
        self, target: Target, head: RequestHead, end_stream: bool
    ) -> H1ClientStream:
        stream = self.ready_stream(target, head, end_stream)
        if stream is not None:
            return stream
        _reserve_connection(self.stats)
        client = H1Client(
            on_idle=functools.partial(self._idle, target),
            on_lost=self._lost,
            body_buffer=self.body_buffer,
        )
        try:
            await self.connector(target, lambda: client)
        except BaseException:
            if self.stats is not None:
                self.stats.upstream_cx_active -= 1
            raise
        client.counted = self.stats is not None
        client.target = target
        if not client.closed:
            self.open.add(client)
        return client.open(head, end_stream)

    def _lost(self, client: H1Client) -> None:
        if client.counted and self.stats is not None:
            client.counted = False
            self.stats.upstream_cx_active -= 1
        self.open.discard(client)
        _count_closed_bytes(self.stats, client)
        _ended(self.ended, client.target, client.requests)

    def host_counts(self) -> HostCounts:
        return _host_counts(
            ((c.target, int(c.stream is not None), c.requests) for c in self.open), self.ended
        )

    def open_bytes(self) -> tuple[int, int]:
        """Bytes read and written so far on the open connections (those that ended are in the
        cluster's totals already)."""
        rx = tx = 0
        for client in self.open:
            rx += client.rx_bytes
            tx += client.tx_bytes
        return rx, tx

    def _idle(self, target: Target, client: H1Client) -> None:
        idle = self.idle.setdefault(target, [])
        if len(idle) < _MAX_IDLE_H1:
            client.idle_mark = None  # idle from the next sweep on (`sweep`)
            idle.append(client)
        elif client.transport is not None:
            client.transport.close()

    def sweep(self, now: float) -> None:
        """Close the kept-alive connections idle for the upstream idle timeout: marked by the
        first sweep that finds them waiting, closed by one at least the timeout later (a
        connection used meanwhile came back unmarked)."""
        timeout = self.idle_timeout
        if timeout <= 0:
            return
        for idle in self.idle.values():
            kept = []
            for client in idle:
                if client.idle_mark is None:
                    client.idle_mark = now
                elif now - client.idle_mark >= timeout:
                    _count_idle_timeout(self.stats)
                    if client.transport is not None:
                        client.transport.close()
                    continue
                kept.append(client)
            idle[:] = kept

    def close(self) -> None:
        for idle in self.idle.values():
            for client in idle:
                if client.transport is not None:
                    client.transport.close()
        self.idle.clear()
