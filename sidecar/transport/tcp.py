"""TCP proxying: accept a downstream connection, connect upstream with failover, relay bytes.

One `TcpProxy` serves one listener. Its settings can be replaced while it runs (a reload that
changes only the cluster or the timeouts keeps the listener and its open connections). How the
upstream hop is made (plain TCP, or mTLS toward a peer sidecar) is its `connector`'s business
(`sidecar.transport.connect`): the proxy only picks endpoints and moves on when one fails.

Two ways in: as a protocol factory (`proxy()`, the `asyncio.Protocol` relay: TLS, taps, sniffed
connections), or `proxy.splice(sock, address)` with a raw accepted socket (the zero-copy relay of
`sidecar.transport.splice`, for plain TCP on both sides), driven by callbacks without a task.
Both count the same stats and call the same hooks; the splice relay dials plain TCP itself, so
it is only used when the connector is the plain one (`plain_upstream`). A connector's `relay`
attribute, when it has one, is what the Protocol relay dials with (the mTLS connector's makes
our own TLS transport, `sidecar.transport.tls_transport`, which can half-close).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from sidecar import defaults
from sidecar.cluster import Cluster, Target
from sidecar.observe.stats import ListenerStats
from sidecar.observe.throttle import LogThrottle
from sidecar.transport.connect import ConnectError, Connector, plain_connector, source_for
from sidecar.transport.relay import Relay, Side
from sidecar.transport.splice import SpliceRelay

log = logging.getLogger("sidecar.tcp")


@dataclass(frozen=True)
class TcpSettings:
    connect_timeout: float  # per attempt; used by the default (plain) connector
    idle_timeout: float
    connect_attempts: int
    buffer_bytes: int = defaults.RELAY_HIGH_WATER  # per direction, for a slow reader


class TcpProxy:
    """The protocol factory of a TCP listener: each call starts one relayed connection."""

    def __init__(
        self,
        name: str,
        cluster: Cluster,
        settings: TcpSettings,
        stats: ListenerStats,
        connector: Connector | None = None,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.settings = settings
        self.stats = stats
        # The connector counts the cluster's connect stats; the default one dials plain TCP.
        self.connector = connector or plain_connector(settings.connect_timeout, cluster.stats)
        self.relays: set[Relay | SpliceRelay] = set()
        # Observability hooks (sidecar.observe): a read-only tap on a new connection (Kafka),
        # and the end of a connection (access log, per-host counts).
        self.on_connection: Callable[[Relay], None] | None = None
        self.on_close: Callable[[Relay], None] | None = None
        self._loop = asyncio.get_running_loop()
        self._throttle = LogThrottle()
        # The callbacks every relay is given, bound once: a bound method made per relay would
        # be kept by each open connection (64 bytes apiece, issue 8's idle connections)
        self._on_closed: Callable[[Relay | SpliceRelay], None] = self._closed
        self._on_made: Callable[[Side], None] = self._downstream_made

    def __call__(self, destination: Target | None = None) -> asyncio.Protocol:
        """A new relayed connection's downstream protocol; `destination`: where its upstream
        connects, instead of an endpoint of the cluster (transparent proxying's passthrough)."""
        relay = Relay(
            self._loop, self.settings.idle_timeout, self._on_closed, self.settings.buffer_bytes
        )
        relay.destination = destination
        self.relays.add(relay)
        stats = self.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        stats.tcp_downstream_cx_total += 1
        relay.downstream.on_made = self._on_made
        if self.on_connection is not None:
            self.on_connection(relay)
        return relay.downstream

    @property
    def plain_upstream(self) -> bool:
        """The upstream hop is plain TCP (no mTLS): what the splice relay can dial."""
        return bool(getattr(self.connector, "plain", False))

    def splice(
        self, sock: socket.socket, peername: object, destination: Target | None = None
    ) -> None:
        """Relay an accepted plain-TCP socket with splice(2) (no tap: `on_connection` is not
        called; the listener only sends plain TCP here when no tap applies). `destination`: as
        `__call__`'s."""
        relay = SpliceRelay(self._loop, self.settings.idle_timeout, self._on_closed, sock, peername)
        relay.destination = destination
        self.relays.add(relay)
        stats = self.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        stats.tcp_downstream_cx_total += 1
        if self._circuit_open(relay):
            return
        self._splice_attempt(relay, self.settings.connect_attempts)

    def _circuit_open(self, relay: Relay | SpliceRelay) -> bool:
        """The cluster's connection circuit breaker is open: close the downstream connection, as
        Envoy's tcp_proxy does, and count it. Both relays ask before connecting upstream."""
        cstats = self.cluster.stats
        if cstats.upstream_cx_active < cstats.cb_max_connections:
            return False
        cstats.upstream_cx_overflow += 1
        relay.response_flags = "UO"
        log.info("event=upstream_overflow listener=%s cluster=%s", self.name, self.cluster.name)
        relay.close()
        return True

    def _splice_attempt(self, relay: SpliceRelay, attempts: int) -> None:
        """One upstream attempt of a splice relay; on failure the next endpoint, as `_connect`."""
        if relay.closed:
            return
        cluster = self.cluster
        cstats = cluster.stats
        target = self._pick(relay) if attempts > 0 else None
        if target is None:
            if attempts > 0:
                cstats.upstream_cx_none_healthy += 1
                relay.response_flags = "UH"
                log.warning(
                    "event=no_healthy_upstream listener=%s cluster=%s", self.name, cluster.name
                )
            relay.response_flags = relay.response_flags or "UF"
            relay.close()
            return
        started = self._loop.time()
        cstats.upstream_cx_total += 1

        def done(error: str | None, timed_out: bool) -> None:
            if error is not None:
                if timed_out:
                    cstats.upstream_cx_connect_timeout += 1
                cstats.upstream_cx_connect_fail += 1
                self._connect_failed(target, error)
                self._splice_attempt(relay, attempts - 1)
                return
            cstats.upstream_cx_connect_ms.observe((self._loop.time() - started) * 1000)
            cluster.outlier.success(target)
            cstats.upstream_cx_active += 1
            relay.target = target
            cluster.acquire(target)
            relay.link()

        source = source_for(getattr(self.connector, "source", None), target.host)
        relay.connect(target.host, target.port, self.settings.connect_timeout, done, source)

    def _pick(self, relay: Relay | SpliceRelay) -> Target | None:
        """The relay's own destination, else the next endpoint of the cluster."""
        destination = relay.destination
        if isinstance(destination, Target):
            return destination
        return self.cluster.pick()

    def _downstream_made(self, side: Side) -> None:
        self._loop.create_task(self._connect(side.relay))

    async def _connect(self, relay: Relay) -> None:
        cluster, settings = self.cluster, self.settings
        # A connector may have a variant for byte relaying (mTLS: our own TLS transport).
        connect: Connector = getattr(self.connector, "relay", self.connector)
        cstats = cluster.stats
        if self._circuit_open(relay):
            return
        for _ in range(settings.connect_attempts):
            target = self._pick(relay)
            if target is None:
                cluster.stats.upstream_cx_none_healthy += 1
                relay.response_flags = "UH"
                log.warning(
                    "event=no_healthy_upstream listener=%s cluster=%s", self.name, cluster.name
                )
                break
            if relay.closed:
                return
            try:
                await connect(target, lambda: relay.upstream)
            except ConnectError as exc:
                # A refused attempt may have read bytes (e.g. a peer with the wrong identity that
                # spoke first): they must not reach the downstream through the next endpoint.
                relay.upstream.pending = None
                relay.upstream.eof = False
                self._connect_failed(target, str(exc))
                continue
            if relay.upstream.transport is None:
                # The peer accepted the connection and closed it at once (e.g. its
                # MeshTrafficPermission denied us): pass the close on, no other endpoint.
                relay.close()
                return
            cluster.outlier.success(target)
            cstats.upstream_cx_active += 1
            relay.target = target
            cluster.acquire(target)
            if relay.closed:  # the downstream left while we were connecting
                relay.close()
                return
            relay.link()
            return
        relay.response_flags = relay.response_flags or "UF"
        relay.close()

    def _connect_failed(self, target: Target, reason: str) -> None:
        self.cluster.outlier.failure(target)
        held_back = self._throttle.allow((target, reason))
        if held_back is None:
            return  # the same failure was logged less than a second ago
        log.warning(
            "event=upstream_connect_failed listener=%s cluster=%s endpoint=%s reason=%r "
            "since_last_line=%d",
            self.name,
            self.cluster.name,
            target,
            reason,
            held_back,
        )

    def _closed(self, relay: Relay | SpliceRelay) -> None:
        self.relays.discard(relay)
        stats, cstats = self.stats, self.cluster.stats
        stats.downstream_cx_active -= 1
        down, up = relay.downstream, relay.upstream
        stats.tcp_downstream_cx_rx_bytes_total += down.rx_bytes
        stats.tcp_downstream_cx_tx_bytes_total += up.rx_bytes
        if relay.idle_timed_out:
            stats.tcp_idle_timeout += 1
        if relay.target is not None:
            self.cluster.release(relay.target)  # type: ignore[arg-type]
            cstats.upstream_cx_active -= 1
            cstats.upstream_cx_rx_bytes_total += up.rx_bytes
            cstats.upstream_cx_tx_bytes_total += down.rx_bytes
            cstats.upstream_cx_length_ms.observe((self._loop.time() - relay.started) * 1000)
        if self.on_close is not None:
            self.on_close(relay)

    def close_all(self) -> None:
        for relay in list(self.relays):
            relay.close()
