"""The inbound stack: traffic from peer sidecars to the local app.

- tcp, kafka (declared): the relay to the app.
- http, http2, grpc (declared): HTTP/2 from peers, told by its preface (HTTP/1.1 from a plain
  client otherwise); toward the app HTTP/1.1 for `http`, h2c for `http2` and `grpc`.
- undeclared: the preface decides between HTTP/2 (a peer that sniffed HTTP) and raw bytes; a
  peer's request that was HTTP/1 at its app carries the orig-proto header, so the app gets
  HTTP/1.1 again, h2c otherwise. A connection that stays silent for the detection timeout is
  relayed (a server that speaks first).

Under mTLS (`sidecar.identity.mesh`) each connection arrives through `accept(peer)` with the
caller's verified identity: MeshTrafficPermission is decided for it once per TCP connection (a
denied one is closed right after the handshake) or once per HTTP request (403 `RBAC: access
denied`); HTTP apps get `x-forwarded-client-cert: URI=<caller's SPIFFE id>`, and HTTP/2 from a
verified peer sidecar skips header re-validation (`trusted`). Plaintext connections (no mTLS, or
permissive mode) arrive as `accept(None)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from sidecar.cluster import Cluster
from sidecar.http.pool import H1Pool, H2Pool
from sidecar.http.router import Exchange, Pool, Route, inbound_headers, local_reply, proxy
from sidecar.identity.mesh import RBAC_ACCESS_DENIED, Authorizer, Peer
from sidecar.listener import Handler, ListenerStack, StackOptions, plan_connector
from sidecar.observe.stats import ListenerStats
from sidecar.plan import ListenerPlan
from sidecar.transport.detect import Detected, detect


class InboundStack(ListenerStack):
    def __init__(
        self,
        plan: ListenerPlan,
        cluster: Cluster,
        stats: ListenerStats,
        options: StackOptions,
        authorizer: Authorizer | None = None,
    ) -> None:
        super().__init__(plan, cluster, stats, options)
        connector = plan_connector(plan, cluster)
        limits = options.limits
        self.h1_pool = H1Pool(
            connector, cluster.stats, limits.stream_buffer_bytes, limits.upstream_idle_timeout
        )
        self.h2_pool = H2Pool(connector, trusted=False, stats=cluster.stats, limits=limits)
        self.authorizer = authorizer  # None: no mTLS, so no identities to authorize

    def reconfigure(self, options: StackOptions) -> None:
        super().reconfigure(options)
        limits = options.limits
        self.h1_pool.body_buffer = limits.stream_buffer_bytes
        self.h1_pool.idle_timeout = limits.upstream_idle_timeout
        self.h2_pool.limits = limits

    def new_connection(self) -> asyncio.Protocol:
        return self.accept(None)

    def accept(self, peer: Peer | None) -> asyncio.Protocol:
        """The protocol for one new connection from `peer` (None: a plaintext caller). The
        listener admitted it (`admit`: connection limit, descriptors) before its handshake."""
        protocol = self.plan.protocol
        if protocol in ("tcp", "kafka"):
            return self._relay(peer)
        connection = _Connection(self, peer)
        if protocol is not None:
            return self.http_peek(connection.http)
        timeout = self.options.detection_timeout
        return self.peek(connection.sniff, timeout if timeout > 0 else None, silent_closes=False)

    def may_relay_bytes(self) -> bool:
        """A connection may be relayed as bytes: every one of a tcp or kafka inbound, and one
        of an undeclared inbound whose first bytes are not HTTP/2's preface. Under mTLS the
        relay's own TLS transport carries them (`sidecar.transport.tls_transport`: half-close
        both ways); an undeclared inbound's HTTP/2 server rides it too."""
        return self.plan.protocol in ("tcp", "kafka", None)

    def plain_tcp(self) -> bool:
        # kafka has its tap; with mTLS there are identities to check (and TLS to terminate)
        return self.plan.protocol == "tcp" and self.authorizer is None

    def _relay(self, peer: Peer | None) -> asyncio.Protocol:
        if self.authorizer is not None and not self.authorizer.allows(
            self.plan.service, peer, self.stats, self.plan.name, "protocol=tcp"
        ):
            return _Denied()
        return self.tcp()

    def route(self, peer: Peer | None = None) -> Route:
        """The route of the connections from `peer`'s identity (`shared_route`): the identity is
        what the upstream request carries, and a request from no verified peer is checked."""
        identity = peer.spiffe_id if peer is not None else None
        return self.shared_route(identity, lambda: self._make_route(identity))

    def _make_route(self, identity: str | None) -> Route:
        declared = self.plan.protocol

        def prepare(exchange: Exchange) -> Pool:
            orig = inbound_headers(exchange.request, identity)
            if declared == "http":
                return self.h1_pool
            if declared in ("http2", "grpc"):
                return self.h2_pool
            return self.h1_pool if orig is not None else self.h2_pool

        # A verified peer sidecar checked each request head before it left (`Route`).
        return self.make_route(prepare, connect_attempts=1, checks_requests=identity is None)

    def handler(self, peer: Peer | None = None) -> Handler:
        """Each request of a connection from `peer`: authorized, then routed to the app."""
        route = self.route(peer)
        authorizer = self.authorizer
        if authorizer is None and peer is None:  # plaintext mesh: nothing to decide or count
            return lambda exchange: proxy(route, exchange)
        # The caller's counts at this inbound (`source_service` in the metrics).
        source = self.stats.source(peer.service) if peer is not None else None
        stats, plan = self.stats, self.plan
        # The connection's verdict: whether its caller is plainly allowed (not denied, not
        # shadow-denied) under `decided_under`, the policies it was decided under, and `plan`.
        # It is decided again when either is replaced; a plainly allowed request is then only
        # counted, without a decision looked up per request (unless each one is logged).
        decided_under: tuple[object, ...] | None = None
        plainly_allowed = False

        # A plain function that returns the coroutine to await, not a coroutine of its own: one
        # layer fewer for every resumption of the request's task.
        def handle(exchange: Exchange) -> Awaitable[None]:
            nonlocal decided_under, plainly_allowed, plan
            if source is not None:
                source.downstream_rq_total += 1
            if authorizer is not None:
                if authorizer.policies is not decided_under or self.plan is not plan:
                    decided_under, plan = authorizer.policies, self.plan
                    plainly_allowed = authorizer.plainly_allows(plan.service, peer)
                if plainly_allowed and not authorizer.logs_each_allowed():
                    stats.rbac_allowed += 1  # (what `allows` counts for it)
                elif not authorizer.allows(plan.service, peer, stats, plan.name, "protocol=http"):
                    return local_reply(exchange, 403, RBAC_ACCESS_DENIED)
            return proxy(route, exchange)

        return handle

    def upstream_pools(self) -> tuple[H1Pool | H2Pool, ...]:
        return (self.h1_pool, self.h2_pool)

    def sweep(self, now: float) -> None:
        self.h1_pool.sweep(now)  # first: a connection's check that raised would skip them
        self.h2_pool.sweep(now)
        super().sweep(now)

    def close_all(self) -> None:
        super().close_all()
        self.h1_pool.close()
        self.h2_pool.close()


class _Connection:
    """The choices for one inbound connection, made with its caller's identity at hand."""

    __slots__ = ("stack", "peer")

    def __init__(self, stack: InboundStack, peer: Peer | None) -> None:
        self.stack = stack
        self.peer = peer

    def http(self, first: bytes, final: bool) -> asyncio.Protocol | None:
        stack = self.stack
        return stack.http_by_preface(
            first,
            final,
            trusted=self.peer is not None,  # a verified peer sidecar validated the headers
            mesh_hop=True,
            handler=stack.handler(self.peer),
        )

    def sniff(self, first: bytes, final: bool) -> asyncio.Protocol | None:
        stack = self.stack
        detected = detect(first)
        if detected is Detected.HTTP2:
            return stack.h2_server(
                trusted=self.peer is not None,
                mesh_hop=True,
                handler=stack.handler(self.peer),
            )
        if detected is None and not final:
            return None
        return stack._relay(self.peer)


class _Denied(asyncio.Protocol):
    """A TCP connection MeshTrafficPermission denies: closed as soon as it is handed over."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass
