"""Statistics the data path keeps: plain attributes on objects resolved once per listener/cluster.

The hot path does `stats.rx_bytes += n`: no locks, no label lookups, no allocation. Exposition
(Prometheus text with Envoy's names, the admin API's /stats) reads these objects at scrape time, so
counting stays cheap however often it is scraped. Names follow Envoy's stat names; the exposition
layer adds the `envoy_` prefix and labels.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Envoy's default histogram buckets, in milliseconds.
ENVOY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)  # fmt: skip


class Histogram:
    """Cumulative-on-read histogram in milliseconds with Envoy's buckets."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(ENVOY_BUCKETS_MS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value_ms: float) -> None:
        self.counts[bisect.bisect_left(ENVOY_BUCKETS_MS, value_ms)] += 1
        self.sum += value_ms
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*ENVOY_BUCKETS_MS, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(eq=False)
class ListenerStats:
    """`listener.<address>.*` and, for TCP proxying, `tcp.<prefix>.*`."""

    address: str  # envoy_listener_address, e.g. "127.0.0.1_20000"
    tcp_prefix: str  # envoy_tcp_prefix, e.g. "inbound_127.0.0.1_10000"
    downstream_cx_total: int = 0
    downstream_cx_active: int = 0
    downstream_cx_overflow: int = 0
    tcp_downstream_cx_total: int = 0
    tcp_downstream_cx_rx_bytes_total: int = 0
    tcp_downstream_cx_tx_bytes_total: int = 0
    tcp_idle_timeout: int = 0
    ssl_handshake: int = 0
    ssl_connection_error: int = 0  # refused handshakes, certificate verification aside
    ssl_fail_verify_error: int = 0  # a client certificate not verified (chain, validity, SPIFFE)
    # MeshTrafficPermission decisions on this inbound (Envoy's rbac.allowed / .denied), per TCP
    # connection or HTTP request; shadow_denied: allowed by AllowWithShadowDeny.
    rbac_allowed: int = 0
    rbac_denied: int = 0
    rbac_shadow_denied: int = 0


@dataclass(eq=False)
class ClusterStats:
    """`cluster.<name>.*`: one per upstream cluster (service name, or localhost_<port>)."""

    name: str
    upstream_cx_total: int = 0
    upstream_cx_active: int = 0
    upstream_cx_connect_fail: int = 0
    upstream_cx_connect_timeout: int = 0
    upstream_cx_rx_bytes_total: int = 0
    upstream_cx_tx_bytes_total: int = 0
    upstream_cx_none_healthy: int = 0
    upstream_cx_connect_ms: Histogram = field(default_factory=Histogram)
    upstream_cx_length_ms: Histogram = field(default_factory=Histogram)
    membership_healthy: int = 0
    membership_total: int = 0


class StatsStore:
    """All stats objects of one sidecar, created on first use and kept across reloads."""

    def __init__(self) -> None:
        self.listeners: dict[str, ListenerStats] = {}
        self.clusters: dict[str, ClusterStats] = {}

    def listener(self, address: str, tcp_prefix: str) -> ListenerStats:
        stats = self.listeners.get(address)
        if stats is None:
            stats = self.listeners[address] = ListenerStats(address, tcp_prefix)
        return stats

    def cluster(self, name: str) -> ClusterStats:
        stats = self.clusters.get(name)
        if stats is None:
            stats = self.clusters[name] = ClusterStats(name)
        return stats
