"""The outbound stack: traffic from the local app to a mesh service.

Per new connection it looks at the service's protocol (from its endpoints in the mesh):
- tcp, kafka: the relay, straight away (a server that speaks first is not held up);
- http, http2, grpc: HTTP/1.1 or h2c from the app, told apart by the preface; requests ride
  multiplexed HTTP/2 to the peer sidecars, balanced one by one;
- undeclared: sniff the app's first bytes (HTTP/1 → http, the HTTP/2 preface → http2, anything
  else, a TLS ClientHello, or silence past the detection timeout → tcp).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sidecar import defaults
from sidecar.cluster import Cluster
from sidecar.http.pool import Connector, H2Pool
from sidecar.http.router import Exchange, Route, outbound_headers
from sidecar.limits import DEFAULT_LIMITS, Limits
from sidecar.listener import ListenerStack, StackOptions
from sidecar.observe.stats import ClusterStats, ListenerStats
from sidecar.plan import ListenerPlan
from sidecar.transport.detect import Detected, client_hello_sni, detect

log = logging.getLogger("sidecar.outbound")

HTTP_FAMILY = ("http", "http2", "grpc")


class OutboundStack(ListenerStack):
    def __init__(
        self,
        plan: ListenerPlan,
        cluster: Cluster,
        stats: ListenerStats,
        options: StackOptions,
        service_protocol: Callable[[], str | None],
        mesh_pool: H2Pool,
        connector: Connector | None = None,
    ) -> None:
        """`connector`: how the relay reaches the peer sidecars (mTLS or plain TCP); the mesh
        pool carries its own for HTTP."""
        super().__init__(plan, cluster, stats, options, connector)
        self.service_protocol = service_protocol
        self.mesh_pool = mesh_pool

    def new_connection(self) -> asyncio.Protocol:
        protocol = self.service_protocol()
        if protocol in HTTP_FAMILY:
            return self.http_peek(self._http)
        if protocol is not None or self.options.detection_timeout <= 0:
            return self.tcp()
        return self.peek(self._sniff, self.options.detection_timeout, silent_closes=False)

    def plain_tcp(self) -> bool:
        protocol = self.service_protocol()
        return protocol == "tcp" or (protocol is None and self.options.detection_timeout <= 0)

    def _http(self, first: bytes, final: bool) -> asyncio.Protocol | None:
        return self.http_by_preface(first, final, trusted=False, mesh_hop=False)

    def _sniff(self, first: bytes, final: bool) -> asyncio.Protocol | None:
        detected = detect(first)
        if detected is None and not final:
            return None
        if detected is Detected.HTTP1:
            return self.h1_server()
        if detected is Detected.HTTP2:
            return self.h2_server(trusted=False, mesh_hop=False)
        if detected is Detected.TLS:
            log.debug(
                "event=sniffed listener=%s protocol=tls sni=%s",
                self.plan.name,
                client_hello_sni(first) or "-",
            )
        return self.tcp()

    def route_inputs(self) -> tuple[object, ...]:
        return (*super().route_inputs(), self.mesh_pool)

    def route(self) -> Route:
        """The listener's one route (`shared_route`), to the mesh pool."""
        return self.shared_route(None, self._make_route)

    def _make_route(self) -> Route:
        pool = self.mesh_pool

        def prepare(exchange: Exchange) -> H2Pool:
            outbound_headers(exchange.request, exchange.peer_address)
            return pool

        route = self.make_route(prepare, defaults.HTTP_CONNECT_ATTEMPTS)
        # A trusted pool's peers are verified sidecars: their routers dropped the hop-by-hop
        # fields of each response before it left.
        route.strips_responses = not pool.trusted
        return route


def mesh_pool(
    connector: Connector,
    *,
    trusted: bool = False,
    stats: ClusterStats | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> H2Pool:
    """The multiplexed HTTP/2 connections of one outbound cluster toward its peer sidecars.

    `trusted`: the peers are verified sidecars (mTLS): their responses' headers are taken
    without h2's validation. `mesh_hop`: their header blocks are decoded by the fast path for
    what a peer sidecar's encoder sends. `stats`: the cluster's, whose connection limit the
    pool counts against. `limits`: the sidecar's (a response body's buffer).
    """
    return H2Pool(connector, trusted=trusted, stats=stats, mesh_hop=True, limits=limits)
