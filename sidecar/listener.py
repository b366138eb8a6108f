"""What inbound and outbound listeners share: the TCP proxy, HTTP servers bound to a route, the
set of open connections (for drain and for the connection limit), the periodic check of their
timeouts, and settings that a reload may replace in place."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sidecar import defaults
from sidecar.cluster import Cluster, Target
from sidecar.http.accounting import RequestRecord
from sidecar.http.h1 import H1Server
from sidecar.http.h2 import H2Protocol
from sidecar.http.router import Exchange, Pool, Route, proxy
from sidecar.limits import Limits
from sidecar.observe.stats import HttpStats, ListenerStats
from sidecar.plan import ListenerPlan
from sidecar.transport import splice
from sidecar.transport.connect import Connector, plain_connector
from sidecar.transport.detect import Detected, detect
from sidecar.transport.fds import FdGuard
from sidecar.transport.peek import Decide, Peek
from sidecar.transport.tcp import TcpProxy, TcpSettings

if TYPE_CHECKING:
    from sidecar.http.pool import H1Pool, H2Pool

log = logging.getLogger("sidecar.listener")

# What serves one downstream exchange (H1ServerExchange or H2ServerStream).
Handler = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class StackOptions:
    """Sidecar-wide knobs the stacks need (from the command line)."""

    detection_timeout: float = defaults.PROTOCOL_DETECTION_TIMEOUT
    splice: bool = True  # plain TCP relayed with splice(2) where possible (--tcp-relay)
    limits: Limits = field(default_factory=Limits)
    fds: FdGuard | None = None  # the process's descriptor guard; None: not checked


class Refused(asyncio.Protocol):
    """A connection the listener will not serve (over a limit): closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass


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
        self.tcp = TcpProxy(
            plan.name,
            cluster,
            tcp_settings(plan, options.limits),
            stats,
            connector or plan_connector(plan, cluster),
        )
        self.http_connections: set[H1Server | H2Protocol] = set()
        # Connections accepted and not yet handed to a protocol: being told apart (Peek), or in
        # their mTLS handshake. They count toward the connection limit.
        self.pending = 0
        self.overflowing = False  # refusing at the connection limit (logged once per episode)
        self.draining = False
        # Set by the runtime's observability: HTTP connection-manager stats, the access log.
        self.http_stats = HttpStats(plan.stat_address)
        self.on_request_done: Callable[[RequestRecord], None] | None = None
        # The routes this listener's connections share (`shared_route`), by key, each with what
        # it was made of.
        self._routes: dict[object, tuple[tuple[object, ...], Route]] = {}

    @property
    def limits(self) -> Limits:
        return self.options.limits

    def __call__(self) -> asyncio.Protocol:
        """The protocol factory the listening socket calls for each accepted connection."""
        if not self.admit():
            return Refused()
        return self.new_connection()

    def new_connection(self) -> asyncio.Protocol:
        raise NotImplementedError

    def plain_tcp(self) -> bool:
        """Will the next connection be relayed as plain TCP from its first byte: no sniffing, no
        TLS, no tap? (The stack's view; `splices` adds the upstream's.)"""
        return False

    def splices(self) -> bool:
        """Plain TCP on both sides: the splice relay can carry the next connection, where the
        system has splice(2) and the command line did not turn it off (`--tcp-relay`)."""
        return (
            self.plain_tcp()
            and self.tcp.plain_upstream
            and self.options.splice
            and splice.supported()
        )

    def accept_socket(
        self, sock: socket.socket, address: object, destination: Target | None = None
    ) -> None:
        """A raw accepted socket (listeners bound with an `Acceptor`, or handed over by a
        redirect listener): the splice relay when the connection is plain TCP, else the
        protocol this stack makes, on a transport as usual. `destination`: relay the bytes
        there rather than to the cluster's pick (a redirect listener's passthrough)."""
        if self.splices():
            if self.admit():  # the connection limit and the descriptor guard, as in __call__
                self.tcp.splice(sock, address, destination)
            else:
                sock.close()
            return
        factory = self if destination is None else functools.partial(self._relay_to, destination)
        asyncio.get_running_loop().create_task(adopt_socket(factory, sock))

    def _relay_to(self, destination: Target) -> asyncio.Protocol:
        """As `__call__`, for a connection relayed to `destination`."""
        if not self.admit():
            return Refused()
        return self.tcp(destination)

    def admit(self) -> bool:
        """Whether a new connection may be served: under the listener's connection limit, and
        with file descriptors to spare. A refusal is counted; the first of a run is logged."""
        if self.active >= self.limits.max_connections:
            self.stats.downstream_cx_overflow += 1
            if not self.overflowing:
                self.overflowing = True
                log.warning(
                    "event=listener_overflow listener=%s limit=%d action=refusing",
                    self.plan.name,
                    self.limits.max_connections,
                )
            return False
        self.overflowing = False
        fds = self.options.fds
        if fds is not None and not fds.admit():
            self.stats.downstream_cx_overload_reject += 1
            return False
        return True

    def peek(self, decide: Decide, timeout: float | None, *, silent_closes: bool) -> Peek:
        """A Peek counted among the listener's connections. `silent_closes`: a connection that
        sends nothing within the timeout is closed (HTTP listeners: the request headers
        timeout), rather than handed to `decide`."""
        self.pending += 1
        return Peek(
            decide,
            timeout,
            on_settled=self._peek_settled,
            on_silent=self._silent if silent_closes else None,
        )

    def _peek_settled(self) -> None:
        self.pending -= 1

    # The mTLS listener (sidecar.identity.mesh) accepts itself and reports here.

    def pending_started(self) -> None:
        self.pending += 1

    def pending_settled(self) -> None:
        self.pending -= 1

    @property
    def handshake_timeout(self) -> float:
        return self.limits.tls_handshake_timeout

    def accept_failed(self, exc: OSError) -> None:
        """The kernel refused an accept (EMFILE and the like): one episode, logged once."""
        fds = self.options.fds
        if fds is not None:
            fds.accept_failed()
        else:
            log.error("event=accept_failed listener=%s error=%r", self.plan.name, str(exc))

    def _silent(self, transport: asyncio.Transport) -> None:
        self.http_stats.downstream_rq_header_timeout += 1
        transport.close()

    def http_peek(self, decide: Decide) -> Peek:
        """Wait for an HTTP client's first bytes, at most the request headers timeout."""
        timeout = self.limits.request_headers_timeout
        return self.peek(decide, timeout if timeout > 0 else None, silent_closes=True)

    def reconfigure(self, options: StackOptions) -> None:
        """The limits were read again: new connections and requests take them; open
        connections keep those they started with."""
        self.options = options
        self.tcp.settings = tcp_settings(self.plan, options.limits)

    def update(
        self, plan: ListenerPlan, cluster: Cluster, connector: Connector | None = None
    ) -> None:
        """A reload changed this listener's plan: new connections and requests use the new one."""
        self.plan = plan
        self.cluster = cluster
        self.tcp.cluster = cluster
        self.tcp.settings = tcp_settings(plan, self.options.limits)
        self.tcp.connector = connector or plan_connector(plan, cluster)

    # -- HTTP servers ---------------------------------------------------------------------

    def route(self) -> Route:
        raise NotImplementedError

    def make_route(
        self,
        prepare: Callable[[Exchange], Pool],
        connect_attempts: int,
        checks_requests: bool = True,
    ) -> Route:
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
            checks_requests,
        )

    def route_inputs(self) -> tuple[object, ...]:
        """What a route of this listener is made of: a route made before any of it changed (a
        reload's plan and cluster, the access log turned on) is made again."""
        return (self.plan, self.cluster, self.http_stats, self.on_request_done)

    def shared_route(self, key: object, make: Callable[[], Route]) -> Route:
        """The route of the connections that `key` tells apart (inbound: the caller's identity),
        made by `make` once for all of them, not per connection: one `Route`, one request-timeout
        table and one stream-idle table — each with its loop timer — for the whole listener,
        where a connection held each of them (~1.8 KB an idle HTTP/1.1 connection, and a timer
        left running for a minute after its last request). A connection keeps the route it
        was given, as before; a new one gets a route made of what this listener has now."""
        inputs = self.route_inputs()
        held = self._routes.get(key)
        if held is not None and all(a is b for a, b in zip(held[0], inputs, strict=True)):
            return held[1]
        route = make()
        self._routes[key] = (inputs, route)
        return route

    def handler(self) -> Handler:
        """What serves each request of a new connection: the router, on this listener's route."""
        return functools.partial(proxy, self.route())  # a C call, no Python frame

    def h1_server(self, handler: Handler | None = None) -> H1Server:
        server = H1Server(
            handler or self.handler(),
            default_authority=self.plan.cluster.encode(),
            on_close=self.http_connections.discard,
            limits=self.limits,
            stats=self.http_stats,
        )
        if self.draining:  # accepted during a graceful drain: one exchange, `Connection: close`
            server.draining = True
        self.http_connections.add(server)
        self._count_connection()
        return server

    def h2_server(
        self, *, trusted: bool, mesh_hop: bool, handler: Handler | None = None
    ) -> H2Protocol:
        """`mesh_hop`: peers are sidecars (the mesh's stream limit and header allowance)."""
        limits = self.limits
        server = H2Protocol(
            client_side=False,
            handler=handler or self.handler(),
            trusted=trusted,
            max_concurrent_streams=(
                limits.mesh_max_concurrent_streams if mesh_hop else limits.h2_max_concurrent_streams
            ),
            on_close=self.http_connections.discard,
            limits=limits,
            stats=self.http_stats,
            mesh_hop=mesh_hop,
        )
        server.goaway_on_request = self.draining  # a graceful drain: GOAWAY after one request
        self.http_connections.add(server)
        self._count_connection()
        return server

    def http_by_preface(
        self,
        first: bytes,
        final: bool,
        *,
        trusted: bool,
        mesh_hop: bool,
        handler: Handler | None = None,
    ) -> asyncio.Protocol | None:
        """HTTP/2 by its connection preface, HTTP/1.1 otherwise (its codec judges the bytes)."""
        detected = detect(first)
        if detected is None and not final:
            return None
        if detected is Detected.HTTP2:
            return self.h2_server(trusted=trusted, mesh_hop=mesh_hop, handler=handler)
        return self.h1_server(handler)

    def _count_connection(self) -> None:
        self.stats.downstream_cx_total += 1

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self.tcp.relays) + len(self.http_connections) + self.pending

    def upstream_pools(self) -> tuple[H1Pool | H2Pool, ...]:
        """The HTTP pools this listener owns (an inbound's, toward its app); the mesh pools of
        outbounds are the runtime's, shared by cluster."""
        return ()

    def sweep(self, now: float) -> None:
        """Check the HTTP connections' timeouts (request headers, idle); the runtime calls this
        a few times per shortest timeout, so no connection needs a timer of its own."""
        for conn in list(self.http_connections):
            conn.sweep(now)

    def drain(self) -> None:
        """Stop taking new requests on open connections; in-flight ones may finish. Connections
        accepted after this (a graceful /drain_listeners keeps the socket open) serve one
        request each: HTTP/1.1 answers it with `Connection: close`, HTTP/2 sends GOAWAY."""
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


async def adopt_socket(factory: Callable[[], asyncio.Protocol], sock: socket.socket) -> None:
    """Serve an accepted socket with the protocol `factory` makes, on a transport as usual."""
    try:
        await asyncio.get_running_loop().connect_accepted_socket(factory, sock)
    except OSError:
        sock.close()


def plan_connector(plan: ListenerPlan, cluster: Cluster) -> Connector:
    """Plain TCP as the plan says: its connect timeout, from its source address (an inbound under
    transparent proxying), counted in the cluster's stats."""
    return plain_connector(plan.connect_timeout, cluster.stats, plan.source_address)


def tcp_settings(plan: ListenerPlan, limits: Limits) -> TcpSettings:
    return TcpSettings(
        plan.connect_timeout, plan.idle_timeout, plan.connect_attempts, limits.relay_buffer_bytes
    )
