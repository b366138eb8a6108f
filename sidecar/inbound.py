"""The inbound stack: traffic from peer sidecars to the local app.

- tcp, kafka (declared): the relay to the app.
- http, http2, grpc (declared): HTTP/2 from peers, told by its preface (HTTP/1.1 from a plain
  client otherwise); toward the app HTTP/1.1 for `http`, h2c for `http2` and `grpc`.
- undeclared: the preface decides between HTTP/2 (a peer that sniffed HTTP) and raw bytes; a
  peer's request that was HTTP/1 at its app carries the orig-proto header, so the app gets
  HTTP/1.1 again, h2c otherwise. A connection that stays silent for the detection timeout is
  relayed (a server that speaks first).
"""

from __future__ import annotations

import asyncio

from sidecar import defaults
from sidecar.cluster import Cluster
from sidecar.http.pool import H1Pool, H2Pool, plain_connector
from sidecar.http.router import Exchange, Pool, Route, inbound_headers
from sidecar.listener import ListenerStack, StackOptions
from sidecar.observe.stats import ListenerStats
from sidecar.plan import ListenerPlan
from sidecar.transport.detect import Detected, detect
from sidecar.transport.peek import Peek


class InboundStack(ListenerStack):
    def __init__(
        self, plan: ListenerPlan, cluster: Cluster, stats: ListenerStats, options: StackOptions
    ) -> None:
        super().__init__(plan, cluster, stats, options)
        connector = plain_connector(plan.connect_timeout, cluster.stats)
        self.h1_pool = H1Pool(connector)
        self.h2_pool = H2Pool(connector, trusted=False)

    def __call__(self) -> asyncio.Protocol:
        protocol = self.plan.protocol
        if protocol in ("tcp", "kafka"):
            return self.tcp()
        if protocol is not None:
            return Peek(self._http, timeout=None)
        timeout = self.options.detection_timeout
        return Peek(self._sniff, timeout=timeout if timeout > 0 else None)

    def plain_tcp(self) -> bool:
        return self.plan.protocol == "tcp"  # kafka has its tap

    def _http(self, first: bytes, final: bool) -> asyncio.Protocol | None:
        return self.http_by_preface(
            first, final, trusted=False, max_streams=defaults.MESH_MAX_CONCURRENT_STREAMS
        )

    def _sniff(self, first: bytes, final: bool) -> asyncio.Protocol | None:
        detected = detect(first)
        if detected is Detected.HTTP2:
            return self.h2_server(trusted=False, max_streams=defaults.MESH_MAX_CONCURRENT_STREAMS)
        if detected is None and not final:
            return None
        return self.tcp()

    def route(self) -> Route:
        declared = self.plan.protocol

        def prepare(exchange: Exchange) -> Pool:
            orig = inbound_headers(exchange.request, client_identity=None)
            if declared == "http":
                return self.h1_pool
            if declared in ("http2", "grpc"):
                return self.h2_pool
            return self.h1_pool if orig is not None else self.h2_pool

        return self.make_route(prepare, connect_attempts=1)

    def close_all(self) -> None:
        super().close_all()
        self.h1_pool.close()
        self.h2_pool.close()
