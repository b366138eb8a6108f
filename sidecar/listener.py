"""What inbound and outbound listeners share: the TCP proxy, HTTP servers bound to a route, the
set of open connections (for drain), and settings that a reload may replace in place."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sidecar import defaults
from sidecar.cluster import Cluster
from sidecar.http.accounting import RequestRecord
from sidecar.http.h1 import H1Server
from sidecar.http.h2 import H2Protocol
from sidecar.http.router import Exchange, Pool, Route, proxy
from sidecar.observe.stats import HttpStats, ListenerStats
from sidecar.plan import ListenerPlan
from sidecar.transport.connect import Connector, plain_connector
from sidecar.transport.detect import Detected, detect
from sidecar.transport.tcp import TcpProxy, TcpSettings

# What serves one downstream exchange (H1ServerExchange or H2ServerStream).
Handler = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class StackOptions:
    """Sidecar-wide knobs the stacks need (from the command line)."""

    detection_timeout: float = defaults.PROTOCOL_DETECTION_TIMEOUT
    splice: bool = True  # plain TCP relayed with splice(2) where possible (--tcp-relay)


class ListenerStack:
    """The protocol factory of one listener. Subclasses decide per connection what to run."""

    def __init__(
        self,
        plan: ListenerPlan,
        cluster: Cluster,
        stats: ListenerStats,
        options: StackOptions,
        connector: Connector | None = None,
    ) -> None:
        """`connector` makes the relay's upstream connections (default: plain TCP)."""
        self.plan = plan
        self.cluster = cluster
        self.stats = stats
        self.options = options
        self.tcp = TcpProxy(plan.name, cluster, tcp_settings(plan), stats, connector)
        self.http_connections: set[H1Server | H2Protocol] = set()
        self.draining = False
        # Set by the runtime's observability: HTTP connection-manager stats, the access log.
        self.http_stats = HttpStats(plan.stat_address)
        self.on_request_done: Callable[[RequestRecord], None] | None = None

    def __call__(self) -> asyncio.Protocol:
        raise NotImplementedError

    def plain_tcp(self) -> bool:
        """Will the next connection be relayed as plain TCP from its first byte: no sniffing, no
        TLS, no tap? (The stack's view; `splices` adds the upstream's.)"""
        return False

    def splices(self) -> bool:
        """Plain TCP on both sides: the splice relay can carry the next connection."""
        return self.plain_tcp() and self.tcp.plain_upstream

    def accept_socket(self, sock: socket.socket, address: object) -> None:
        """A raw accepted socket (listeners bound with an `Acceptor`): the splice relay when the
        connection is plain TCP, else the protocol this stack makes, on a transport as usual."""
        if self.splices():
            self.tcp.splice(sock, address)
            return
        asyncio.get_running_loop().create_task(_adopt(self, sock))

    def update(
        self, plan: ListenerPlan, cluster: Cluster, connector: Connector | None = None
    ) -> None:
        """A reload changed this listener's plan: new connections and requests use the new one."""
        self.plan = plan
        self.cluster = cluster
        self.tcp.cluster = cluster
        self.tcp.settings = tcp_settings(plan)
        self.tcp.connector = connector or plain_connector(plan.connect_timeout, cluster.stats)

    # -- HTTP servers ---------------------------------------------------------------------

    def route(self) -> Route:
        raise NotImplementedError

    def make_route(self, prepare: Callable[[Exchange], Pool], connect_attempts: int) -> Route:
        plan = self.plan
        return Route(
            plan.name,
            self.cluster,
            prepare,
            plan.request_timeout,
            connect_attempts,
            plan.stream_idle_timeout,
            self.http_stats,
            self.on_request_done,
        )

    def handler(self) -> Handler:
        """What serves each request of a new connection: the router, on this listener's route."""
        route = self.route()
        return lambda exchange: proxy(exchange, route)

    def h1_server(self, handler: Handler | None = None) -> H1Server:
        server = H1Server(
            handler or self.handler(),
            default_authority=self.plan.cluster.encode(),
            on_close=self.http_connections.discard,
        )
        self.http_connections.add(server)
        self._count_connection()
        return server

    def h2_server(
        self, *, trusted: bool, max_streams: int, handler: Handler | None = None
    ) -> H2Protocol:
        server = H2Protocol(
            client_side=False,
            handler=handler or self.handler(),
            trusted=trusted,
            max_concurrent_streams=max_streams,
            on_close=self.http_connections.discard,
        )
        self.http_connections.add(server)
        self._count_connection()
        return server

    def http_by_preface(
        self,
        first: bytes,
        final: bool,
        *,
        trusted: bool,
        max_streams: int,
        handler: Handler | None = None,
    ) -> asyncio.Protocol | None:
        """HTTP/2 by its connection preface, HTTP/1.1 otherwise (its codec judges the bytes)."""
        detected = detect(first)
        if detected is None and not final:
            return None
        if detected is Detected.HTTP2:
            return self.h2_server(trusted=trusted, max_streams=max_streams, handler=handler)
        return self.h1_server(handler)

    def _count_connection(self) -> None:
        self.stats.downstream_cx_total += 1

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self.tcp.relays) + len(self.http_connections)

    def drain(self) -> None:
        """Stop taking new requests on open connections; in-flight ones may finish."""
        self.draining = True
        for conn in list(self.http_connections):
            if isinstance(conn, H2Protocol):
                conn.goaway()
            else:
                conn.close_when_idle()

    def close_all(self) -> None:
        """The drain deadline passed: close what is left. Relays and tunnels (websockets) get a
        plain FIN, which websocket peers see as a closed connection rather than an error."""
        self.tcp.close_all()
        for conn in list(self.http_connections):
            if isinstance(conn, H2Protocol):
                conn.close()
            elif conn.transport is not None:
                if conn.tunnel is not None:
                    conn.transport.close()
                else:
                    conn.transport.abort()


async def _adopt(factory: Callable[[], asyncio.Protocol], sock: socket.socket) -> None:
    try:
        await asyncio.get_running_loop().connect_accepted_socket(factory, sock)
    except OSError:
        sock.close()


def tcp_settings(plan: ListenerPlan) -> TcpSettings:
    return TcpSettings(plan.connect_timeout, plan.idle_timeout, plan.connect_attempts)
