"""Statistics the data path keeps: plain attributes on objects resolved once per listener/cluster.

The hot path does `stats.rx_bytes += n`: no locks, no label lookups, no allocation. Exposition
(Prometheus text with Envoy's names, the admin API's /stats) reads these objects at scrape time, so
counting stays cheap however often it is scraped. Attribute names follow Envoy's stat names; which
attribute becomes which Envoy/Prometheus series is declared once, in `sidecar.observe.metrics`.

Counts by a label value (response code class, Kafka API) are plain dicts the data path bumps with
`d[key] = d.get(key, 0) + 1`; the key becomes the label value. Response codes are the exception:
a request bumps one dict keyed by its status (`*_rq_status`), and `StatsStore.settle` folds those
into the code and class counts Envoy names (`upstream_rq_xx`, `upstream_rq_code`, …) before
every read: one count per response rather than three.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

# Envoy's default histogram buckets, in milliseconds.
ENVOY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)  # fmt: skip


# Observations a histogram gathers before it sorts them into its buckets (and at every read).
HISTOGRAM_FOLD_AT = 1024


class Histogram:
    """Cumulative-on-read histogram in milliseconds with Envoy's buckets.

    An observation is appended to `pending` (one C call on a request's path); they are sorted
    into the buckets in bulk, when read or once `HISTOGRAM_FOLD_AT` have gathered: a list sort
    and a bisect per bound for a thousand, where a bisect among int and float bounds, a float
    sum and two counts per observation cost each request ~2.5k instructions per histogram
    (callgrind). `counts`, `sum` and `count` fold what is pending before they are read, and
    `add` before it adds, so that readers (exposition, a worker's snapshot) and the merge of
    snapshots see every observation."""

    __slots__ = ("_counts", "_sum", "_count", "pending")

    def __init__(self) -> None:
        self._counts = [0] * (len(ENVOY_BUCKETS_MS) + 1)
        self._sum = 0.0
        self._count = 0
        self.pending: list[float] = []

    def observe(self, value_ms: float) -> None:
        pending = self.pending
        pending.append(value_ms)
        if len(pending) >= HISTOGRAM_FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Sort the pending observations into the buckets: each into the first whose bound it
        does not exceed (Prometheus's `le`), the last bucket +Inf."""
        pending = self.pending
        if not pending:
            return
        pending.sort()
        counts = self._counts
        below = 0
        for i, bound in enumerate(ENVOY_BUCKETS_MS):
            upto = bisect_right(pending, bound, below)
            counts[i] += upto - below
            below = upto
        counts[-1] += len(pending) - below
        self._sum += sum(pending)
        self._count += len(pending)
        pending.clear()

    @property
    def counts(self) -> list[int]:
        """Observations per bucket (not cumulative), +Inf's last."""
        self.fold()
        return self._counts

    @property
    def sum(self) -> float:
        self.fold()
        return self._sum

    @property
    def count(self) -> int:
        self.fold()
        return self._count

    def add(self, counts: list[int], total: float, count: int) -> None:
        """Add another histogram's buckets, sum and count (a worker's snapshot)."""
        self.fold()
        for i, n in enumerate(counts):
            self._counts[i] += n
        self._sum += total
        self._count += count

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*ENVOY_BUCKETS_MS, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float | None:
        """Estimated q-quantile (0..1), interpolated inside its bucket; None when empty."""
        return quantile_of(self.cumulative(), q)


def quantile_of(cumulative: list[tuple[float, int]], q: float) -> float | None:
    """The q-quantile of (upper bound, cumulative count) pairs, as Prometheus estimates it."""
    if not cumulative or cumulative[-1][1] == 0:
        return None
    total = cumulative[-1][1]
    rank = q * total
    lower, below = 0.0, 0
    for bound, running in cumulative:
        if running >= rank and running > below:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its lower bound, as Prometheus does
            return lower + (bound - lower) * (rank - below) / (running - below)
        lower, below = bound, running
    return lower


@dataclass(eq=False)
class ListenerStats:
    """`listener.<address>.*` and, for TCP proxying, `tcp.<prefix>.*`."""

    address: str  # envoy_listener_address, e.g. "127.0.0.1_20000"
    tcp_prefix: str  # envoy_tcp_prefix, e.g. "inbound_127.0.0.1_10000"
    downstream_cx_total: int = 0
    downstream_cx_active: int = 0
    downstream_cx_overflow: int = 0  # refused at the listener's connection limit
    downstream_cx_overload_reject: int = 0  # refused: file descriptors nearly exhausted
    # A redirect listener's connection with no original destination to go to (one made to the
    # redirect port itself: relaying it there would loop).
    no_filter_chain_match: int = 0
    tcp_downstream_cx_total: int = 0
    tcp_downstream_cx_rx_bytes_total: int = 0
    tcp_downstream_cx_tx_bytes_total: int = 0
    tcp_idle_timeout: int = 0
    # An outbound redirect listener's connection to a destination outside the mesh, closed
    # because the mesh allows no passthrough (Envoy: no cluster to route it to).
    tcp_downstream_cx_no_route: int = 0
    ssl_handshake: int = 0
    ssl_connection_error: int = 0  # refused handshakes, certificate verification aside
    ssl_fail_verify_error: int = 0  # a client certificate not verified (chain, validity, SPIFFE)
    # MeshTrafficPermission decisions on this inbound (Envoy's rbac.allowed / .denied), per TCP
    # connection or HTTP request; shadow_denied: allowed by AllowWithShadowDeny.
    rbac_allowed: int = 0
    rbac_denied: int = 0
    rbac_shadow_denied: int = 0
    # Bytes of connections still open: the relay adds a connection's bytes to the counters above
    # when it ends; the observability layer sets these just before each read, so the exposed
    # totals grow while bytes flow, as Envoy's do.
    open_rx_bytes: int = 0
    open_tx_bytes: int = 0
    # Source identity (mTLS): the caller's service → its counts at this inbound. Filled by the
    # identity layer once the peer certificate is known; exposed with the `source_service` label.
    by_source: dict[str, SourceStats] = field(default_factory=dict)

    def source(self, service: str) -> SourceStats:
        stats = self.by_source.get(service)
        if stats is None:
            stats = self.by_source[service] = SourceStats(self.tcp_prefix, service)
        return stats


@dataclass(eq=False)
class SourceStats:
    """Counts of one caller (by its SPIFFE service) at one inbound listener."""

    tcp_prefix: str
    service: str
    downstream_cx_total: int = 0
    downstream_rq_total: int = 0


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
    open_rx_bytes: int = 0  # as in ListenerStats: bytes of open connections, set before a read
    open_tx_bytes: int = 0
    upstream_cx_overflow: int = 0
    upstream_cx_idle_timeout: int = 0  # pooled connections closed for want of requests
    upstream_cx_destroy_local_with_active_rq: int = 0
    upstream_cx_destroy_remote_with_active_rq: int = 0
    upstream_cx_connect_ms: Histogram = field(default_factory=Histogram)
    upstream_cx_length_ms: Histogram = field(default_factory=Histogram)
    membership_healthy: int = 0
    membership_total: int = 0
    # Passive outlier detection (sidecar.cluster.OutlierDetector).
    outlier_detection_ejections_active: int = 0
    outlier_detection_ejections_enforced_total: int = 0
    outlier_detection_ejections_enforced_consecutive_5xx: int = 0
    outlier_detection_ejections_overflow: int = 0  # not ejected: max ejection percent reached
    ssl_handshake: int = 0
    # HTTP (L7): bumped per request by the router.
    upstream_rq_total: int = 0
    upstream_rq_active: int = 0
    upstream_rq_pending_active: int = 0
    upstream_rq_pending_overflow: int = 0
    upstream_rq_timeout: int = 0
    upstream_rq_rx_reset: int = 0
    upstream_rq_tx_reset: int = 0
    upstream_rq_cancelled: int = 0
    upstream_rq_retry: int = 0
    upstream_rq_retry_overflow: int = 0
    upstream_rq_xx: dict[str, int] = field(default_factory=dict)  # "2" → count of 2xx
    upstream_rq_code: dict[str, int] = field(default_factory=dict)  # "200" → count
    external_upstream_rq_xx: dict[str, int] = field(default_factory=dict)  # from upstream only
    # Responses from the upstream itself by status (200 → count) since the last `settle`, which
    # adds them to the three above; the sidecar's own answers (503, 504) go there directly.
    upstream_rq_status: dict[int, int] = field(default_factory=dict)
    upstream_rq_time: Histogram = field(default_factory=Histogram)
    # gRPC (L7): per call.
    grpc_success: int = 0
    grpc_failure: int = 0
    grpc_total: int = 0
    grpc_request_message_count: int = 0
    grpc_response_message_count: int = 0
    grpc_status: dict[str, int] = field(default_factory=dict)  # calls by grpc-status ("0", "14")
    # Circuit breakers: the thresholds (set by the cluster, not metrics) and what is in use that
    # only they count; the `*_open` gauges are derived at read time.
    cb_max_connections: int = 1024
    cb_max_pending_requests: int = 1024
    cb_max_requests: int = 1024
    cb_max_retries: int = 3
    upstream_rq_retry_active: int = 0

    def settle(self) -> None:
        """Add the responses counted by status to the counts by code and class: a request
        counts its response once, and the string keys are made here, once per status seen
        and read, rather than three times per request."""
        by_status = self.upstream_rq_status
        if by_status:
            xx, codes = self.upstream_rq_xx, self.upstream_rq_code
            external = self.external_upstream_rq_xx
            for status, n in by_status.items():
                code, klass = str(status), str(status // 100)
                codes[code] = codes.get(code, 0) + n
                xx[klass] = xx.get(klass, 0) + n
                external[klass] = external.get(klass, 0) + n
            by_status.clear()

    @property
    def circuit_breakers_cx_open(self) -> int:
        return int(self.upstream_cx_active >= self.cb_max_connections)

    @property
    def circuit_breakers_rq_pending_open(self) -> int:
        return int(self.upstream_rq_pending_active >= self.cb_max_pending_requests)

    @property
    def circuit_breakers_rq_open(self) -> int:
        return int(self.upstream_rq_active >= self.cb_max_requests)

    @property
    def circuit_breakers_rq_retry_open(self) -> int:
        return int(self.upstream_rq_retry_active >= self.cb_max_retries)


@dataclass(eq=False)
class HttpStats:
    """`http.<prefix>.*`: one per HTTP connection manager (listener), for the L7 path."""

    prefix: str  # envoy_http_conn_manager_prefix, e.g. "inbound_127.0.0.1_10000"
    downstream_rq_total: int = 0
    downstream_rq_active: int = 0
    downstream_rq_http1_total: int = 0
    downstream_rq_http2_total: int = 0
    downstream_cx_active: int = 0
    downstream_cx_upgrades_total: int = 0
    no_route: int = 0
    # Limits hit (sidecar.limits), Envoy's names.
    downstream_rq_header_timeout: int = 0  # request headers not complete in time: 408, closed
    downstream_cx_idle_timeout: int = 0
    downstream_rq_idle_timeout: int = 0  # requests reset by the stream idle timeout
    downstream_cx_protocol_error: int = 0  # malformed HTTP/1 (400) or an HTTP/2 protocol error
    downstream_rq_overload: int = 0  # streams refused at the concurrent stream limit
    http1_header_overflow: int = 0  # request headers over the size or count limit: 431
    http2_header_overflow: int = 0  # the same on HTTP/2 (431), or a header block too big: GOAWAY
    http2_premature_reset: int = 0  # connections closed for rapid reset (CVE-2023-44487)
    http2_inbound_empty_frames_flood: int = 0
    http2_inbound_priority_frames_flood: int = 0
    http2_inbound_window_update_frames_flood: int = 0
    http2_inbound_control_frames_flood: int = 0  # PING/SETTINGS beyond their rate
    http2_outbound_flood: int = 0  # a peer that does not read what we must send
    http2_rx_reset: int = 0  # streams the client reset
    http2_rx_messaging_error: int = 0  # a head breaking RFC 9113 8 (e.g. a bad :path): 400
    # "2" → count of 2xx; every class from the start, as Envoy's connection manager has them
    # (its fixed counters downstream_rq_1xx … 5xx: a service with no errors reads 5xx 0).
    downstream_rq_xx: dict[str, int] = field(default_factory=lambda: dict.fromkeys("12345", 0))
    # Responses by status (200 → count) since the last `settle`, which adds them to the above.
    downstream_rq_status: dict[int, int] = field(default_factory=dict)
    downstream_rq_time: Histogram = field(default_factory=Histogram)

    def settle(self) -> None:
        """Add the responses counted by status to the counts by class (as `ClusterStats`)."""
        by_status = self.downstream_rq_status
        if by_status:
            xx = self.downstream_rq_xx
            for status, n in by_status.items():
                klass = str(status // 100)
                xx[klass] = xx.get(klass, 0) + n
            by_status.clear()


@dataclass(eq=False)
class KafkaStats:
    """`kafka.<name>.*`, Envoy's kafka_broker filter: counts by message type, response latency."""

    name: str  # kafka_name: the cluster's stat name (service, or localhost_<port>)
    request: dict[str, int] = field(default_factory=dict)  # "produce_request", "unknown", …
    response: dict[str, int] = field(default_factory=dict)  # "produce_response", …
    response_duration: dict[str, Histogram] = field(default_factory=dict)

    def duration(self, kind: str) -> Histogram:
        hist = self.response_duration.get(kind)
        if hist is None:
            hist = self.response_duration[kind] = Histogram()
        return hist


@dataclass(eq=False)
class DnsStats:
    """`dns_filter.<prefix>.*`, Envoy's DNS filter (Kuma's `kuma_dns`): the DNS proxy's queries
    by type and how each was answered."""

    prefix: str
    downstream_rx_queries: int = 0  # every message received
    downstream_rx_invalid_queries: int = 0  # not a query we can read: FORMERR, or dropped
    downstream_tx_responses: int = 0
    a_record_queries: int = 0
    aaaa_record_queries: int = 0
    unsupported_queries: int = 0  # other types
    known_domain_queries: int = 0  # names in the mesh's zone, answered here
    local_a_record_answers: int = 0  # A records answered from the mesh's names
    local_aaaa_record_answers: int = 0  # AAAA records, likewise
    externally_resolved_queries: int = 0  # forwarded to an upstream resolver and answered
    unanswered_queries: int = 0  # forwarded and no upstream answered: SERVFAIL


@dataclass(eq=False)
class ServerStats:
    """`server.*`: refreshed by the observability layer just before each read."""

    live: int = 1
    state: int = 0  # Envoy: 0 live, 1 draining, 2 pre-initializing, 3 initializing
    uptime: int = 0  # seconds
    memory_allocated: int = 0  # bytes (resident set: CPython exposes no cheaper exact figure)
    memory_heap_size: int = 0
    total_connections: int = 0
    days_until_first_cert_expiring: int | None = None  # set by the identity layer (mTLS)
    seconds_until_first_cert_expiring: int | None = None  # the same to the second


class StatsStore:
    """All stats objects of one sidecar, created on first use and kept across reloads."""

    def __init__(self) -> None:
        self.server = ServerStats()
        self.listeners: dict[str, ListenerStats] = {}
        self.clusters: dict[str, ClusterStats] = {}
        self.http_managers: dict[str, HttpStats] = {}
        self.kafka_brokers: dict[str, KafkaStats] = {}
        self.dns_filters: dict[str, DnsStats] = {}

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

    def http(self, prefix: str) -> HttpStats:
        stats = self.http_managers.get(prefix)
        if stats is None:
            stats = self.http_managers[prefix] = HttpStats(prefix)
        return stats

    def settle(self) -> None:
        """Fold the counts by response status into the counts by code and class that readers
        see (/stats, /metrics, a worker's snapshot, /reset_counters)."""
        for cluster in self.clusters.values():
            cluster.settle()
        for http in self.http_managers.values():
            http.settle()

    def kafka(self, name: str) -> KafkaStats:
        stats = self.kafka_brokers.get(name)
        if stats is None:
            stats = self.kafka_brokers[name] = KafkaStats(name)
        return stats

    def dns(self, prefix: str) -> DnsStats:
        stats = self.dns_filters.get(prefix)
        if stats is None:
            stats = self.dns_filters[prefix] = DnsStats(prefix)
        return stats
