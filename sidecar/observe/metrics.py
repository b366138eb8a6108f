"""Every metric family, declared once, and its renderings: Prometheus text and Envoy's /stats.

A family says which attribute of which kind of stats object (a *scope*: server, listener, tcp,
cluster, http, kafka, source, dns) it reads, its type, Envoy's stat name and its Prometheus name.
Nothing else in the code knows a metric name: adding HTTP, gRPC, RBAC or SSL series is one
attribute in `sidecar.observe.stats` (which the data path bumps) and one line in `FAMILIES` below.

Names are Envoy's exactly, as Kuma's dashboards query them. Envoy's Prometheus exposition derives
`envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"}` from the stat
`cluster.backend.upstream_cx_total`: the object's name moves into a label, counters keep their
names (no `_total` is appended), histograms are in milliseconds with Envoy's buckets. Families
keyed by a label value (`upstream_rq_xx` by `envoy_response_code_class`, Kafka by `kafka_type`)
read a dict whose keys are the label values.

The text is written here rather than with prometheus-client: its counters always append `_total`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.observe.stats import Histogram, StatsStore, quantile_of

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scope:
    """A kind of stats object: where the store keeps them, how Envoy names and labels each."""

    objects: Callable[[StatsStore], Iterable[Any]]
    root: Callable[[Any], str]  # the object's Envoy stat-name root, e.g. "cluster.backend"
    labels: Callable[[Any], Labels]  # the same name, as Prometheus labels


SCOPES: dict[str, Scope] = {
    "server": Scope(lambda st: (st.server,), lambda o: "server", lambda o: ()),
    "listener": Scope(
        lambda st: st.listeners.values(),
        lambda o: f"listener.{o.address}",
        lambda o: (("envoy_listener_address", o.address),),
    ),
    "tcp": Scope(
        lambda st: st.listeners.values(),
        lambda o: f"tcp.{o.tcp_prefix}",
        lambda o: (("envoy_tcp_prefix", o.tcp_prefix),),
    ),
    # Source identity (mTLS): counts at an inbound by the caller's service. `source_service` is
    # pysidecar's own label (Envoy has no such stat); see ListenerStats.by_source.
    "source": Scope(
        lambda st: (s for lst in st.listeners.values() for s in lst.by_source.values()),
        lambda o: f"tcp.{o.tcp_prefix}.source.{o.service}",
        lambda o: (("envoy_tcp_prefix", o.tcp_prefix), ("source_service", o.service)),
    ),
    "cluster": Scope(
        lambda st: st.clusters.values(),
        lambda o: f"cluster.{o.name}",
        lambda o: (("envoy_cluster_name", o.name),),
    ),
    "http": Scope(
        lambda st: st.http_managers.values(),
        lambda o: f"http.{o.prefix}",
        lambda o: (("envoy_http_conn_manager_prefix", o.prefix),),
    ),
    "kafka": Scope(
        lambda st: st.kafka_brokers.values(),
        lambda o: f"kafka.{o.name}",
        lambda o: (("kafka_name", o.name),),
    ),
    "dns": Scope(
        lambda st: st.dns_filters.values(),
        lambda o: f"dns_filter.{o.prefix}",
        lambda o: (("envoy_dns_filter_prefix", o.prefix),),
    ),
}


@dataclass(frozen=True)
class Family:
    name: str  # Prometheus name
    type: str  # counter | gauge | histogram
    scope: str
    attr: str  # attribute of the scope's stats object
    stat: str  # Envoy's stat name below the object's root; "{}" stands for the key
    key_label: str = ""  # keyed families: the label that carries the dict key
    help: str = ""
    live: str = ""  # an attribute added at read time (bytes of connections still open)


_SCOPE_PREFIX = {"source": "tcp_source", "dns": "dns_filter"}


def family(
    scope: str,
    attr: str,
    type: str = COUNTER,
    help: str = "",
    *,
    stat: str | None = None,
    name: str | None = None,
    key: str = "",
    live: str = "",
) -> Family:
    """A family with Envoy's derived names: `envoy_<scope>_<stat with . as _>` by default."""
    stat = stat or attr
    if name is None:
        assert not key, "a keyed family needs its Prometheus name"
        name = f"envoy_{_SCOPE_PREFIX.get(scope, scope)}_{stat.replace('.', '_')}"
    return Family(name, type, scope, attr, stat, key, help, live)


_CODE_CLASS = "envoy_response_code_class"

FAMILIES: tuple[Family, ...] = (
    # -- server ----------------------------------------------------------------------------------
    family("server", "live", GAUGE, "1 while the server is not draining"),
    family("server", "state", GAUGE, "0 live, 1 draining, 2 pre-initializing, 3 initializing"),
    family("server", "uptime", GAUGE, "seconds since start"),
    family("server", "memory_allocated", GAUGE, "bytes in use (resident set)"),
    family("server", "memory_heap_size", GAUGE, "bytes reserved (virtual size)"),
    family("server", "total_connections", GAUGE, "open downstream connections"),
    family("server", "days_until_first_cert_expiring", GAUGE, "days until a certificate expires"),
    family("server", "seconds_until_first_cert_expiring", GAUGE,
           "seconds until the first certificate in use expires (pysidecar's own)",
           name="pysidecar_server_seconds_until_first_cert_expiring"),
    # -- listener (every protocol) ---------------------------------------------------------------
    family("listener", "downstream_cx_total", help="connections accepted"),
    family("listener", "downstream_cx_active", GAUGE, "connections open"),
    family("listener", "downstream_cx_overflow", help="connections refused at the limit"),
    family("listener", "no_filter_chain_match",
           help="redirected connections with no destination to go to"),
    family("listener", "downstream_cx_overload_reject",
           help="connections refused: file descriptors nearly exhausted"),
    family("listener", "ssl_handshake", stat="ssl.handshake", help="TLS handshakes completed"),
    family("listener", "ssl_connection_error", stat="ssl.connection_error"),
    family("listener", "ssl_fail_verify_error", stat="ssl.fail_verify_error"),
    family("listener", "rbac_allowed", stat="rbac.allowed", name="envoy_rbac_allowed"),
    family("listener", "rbac_denied", stat="rbac.denied", name="envoy_rbac_denied"),
    family("listener", "rbac_shadow_denied", stat="rbac.shadow_denied",
           name="envoy_rbac_shadow_denied", help="allowed by AllowWithShadowDeny"),
    # -- tcp proxy -------------------------------------------------------------------------------
    family("tcp", "tcp_downstream_cx_total", stat="downstream_cx_total"),
    family("tcp", "tcp_downstream_cx_rx_bytes_total", stat="downstream_cx_rx_bytes_total",
           live="open_rx_bytes"),
    family("tcp", "tcp_downstream_cx_tx_bytes_total", stat="downstream_cx_tx_bytes_total",
           live="open_tx_bytes"),
    family("tcp", "tcp_idle_timeout", stat="idle_timeout"),
    family("tcp", "tcp_downstream_cx_no_route", stat="downstream_cx_no_route",
           help="connections with no cluster to go to (passthrough off)"),
    # -- source identity (filled once mTLS tells the caller) --------------------------------------
    family("source", "downstream_cx_total", help="connections by the caller's service"),
    family("source", "downstream_rq_total", help="requests by the caller's service"),
    # -- cluster (every protocol) ----------------------------------------------------------------
    family("cluster", "upstream_cx_total"),
    family("cluster", "upstream_cx_active", GAUGE),
    family("cluster", "upstream_cx_connect_fail"),
    family("cluster", "upstream_cx_connect_timeout"),
    family("cluster", "upstream_cx_none_healthy"),
    family("cluster", "upstream_cx_overflow"),
    family("cluster", "upstream_cx_idle_timeout", help="pooled connections closed when idle"),
    family("cluster", "upstream_cx_destroy_local_with_active_rq"),
    family("cluster", "upstream_cx_destroy_remote_with_active_rq"),
    family("cluster", "upstream_cx_rx_bytes_total", live="open_rx_bytes"),
    family("cluster", "upstream_cx_tx_bytes_total", live="open_tx_bytes"),
    family("cluster", "upstream_cx_connect_ms", HISTOGRAM),
    family("cluster", "upstream_cx_length_ms", HISTOGRAM),
    family("cluster", "membership_healthy", GAUGE),
    family("cluster", "membership_total", GAUGE),
    family("cluster", "outlier_detection_ejections_active", GAUGE,
           stat="outlier_detection.ejections_active"),
    family("cluster", "outlier_detection_ejections_enforced_total",
           stat="outlier_detection.ejections_enforced_total"),
    family("cluster", "outlier_detection_ejections_enforced_consecutive_5xx",
           stat="outlier_detection.ejections_enforced_consecutive_5xx"),
    family("cluster", "outlier_detection_ejections_overflow",
           stat="outlier_detection.ejections_overflow",
           help="ejections skipped: the max ejection percent was reached"),
    family("cluster", "circuit_breakers_cx_open", GAUGE, stat="circuit_breakers.default.cx_open"),
    family("cluster", "circuit_breakers_rq_pending_open", GAUGE,
           stat="circuit_breakers.default.rq_pending_open"),
    family("cluster", "circuit_breakers_rq_open", GAUGE, stat="circuit_breakers.default.rq_open"),
    family("cluster", "circuit_breakers_rq_retry_open", GAUGE,
           stat="circuit_breakers.default.rq_retry_open"),  # fmt: skip
    family("cluster", "ssl_handshake", stat="ssl.handshake"),
    # -- cluster, HTTP (bumped by the L7 router) -------------------------------------------------
    family("cluster", "upstream_rq_total"),
    family("cluster", "upstream_rq_active", GAUGE),
    family("cluster", "upstream_rq_pending_active", GAUGE),
    family("cluster", "upstream_rq_pending_overflow"),
    family("cluster", "upstream_rq_timeout"),
    family("cluster", "upstream_rq_rx_reset"),
    family("cluster", "upstream_rq_tx_reset"),
    family("cluster", "upstream_rq_cancelled"),
    family("cluster", "upstream_rq_retry"),
    family("cluster", "upstream_rq_retry_overflow"),
    family("cluster", "upstream_rq_xx", stat="upstream_rq_{}xx",
           name="envoy_cluster_upstream_rq_xx", key=_CODE_CLASS),
    family("cluster", "upstream_rq_code", stat="upstream_rq_{}",
           name="envoy_cluster_upstream_rq", key="envoy_response_code"),
    family("cluster", "external_upstream_rq_xx", stat="external.upstream_rq_{}xx",
           name="envoy_cluster_external_upstream_rq_xx", key=_CODE_CLASS),
    family("cluster", "upstream_rq_time", HISTOGRAM),
    # -- cluster, gRPC ---------------------------------------------------------------------------
    family("cluster", "grpc_success", stat="grpc.success"),
    family("cluster", "grpc_failure", stat="grpc.failure"),
    family("cluster", "grpc_total", stat="grpc.total"),
    family("cluster", "grpc_request_message_count", stat="grpc.request_message_count"),
    family("cluster", "grpc_response_message_count", stat="grpc.response_message_count"),
    family("cluster", "grpc_status", stat="grpc.{}", name="envoy_cluster_grpc_status",
           key="grpc_status", help="gRPC calls by their grpc-status"),
    # -- http connection manager (L7) ------------------------------------------------------------
    family("http", "downstream_rq_total"),
    family("http", "downstream_rq_active", GAUGE),
    family("http", "downstream_rq_http1_total"),
    family("http", "downstream_rq_http2_total"),
    family("http", "downstream_cx_active", GAUGE),
    family("http", "downstream_cx_upgrades_total"),
    family("http", "no_route"),
    family("http", "downstream_rq_header_timeout"),
    family("http", "downstream_cx_idle_timeout"),
    family("http", "downstream_rq_idle_timeout",
           help="requests or tunnels reset after the stream idle timeout without a byte"),
    family("http", "downstream_cx_protocol_error"),
    family("http", "downstream_rq_overload", help="streams refused at the concurrent limit"),
    family("http", "http1_header_overflow", stat="http1.header_overflow",
           name="envoy_http1_header_overflow"),
    family("http", "http2_header_overflow", stat="http2.header_overflow",
           name="envoy_http2_header_overflow"),
    family("http", "http2_premature_reset", stat="http2.premature_reset",
           name="envoy_http2_premature_reset",
           help="connections closed for rapid reset (CVE-2023-44487)"),
    family("http", "http2_inbound_empty_frames_flood", stat="http2.inbound_empty_frames_flood",
           name="envoy_http2_inbound_empty_frames_flood"),
    family("http", "http2_inbound_priority_frames_flood",
           stat="http2.inbound_priority_frames_flood",
           name="envoy_http2_inbound_priority_frames_flood"),
    family("http", "http2_inbound_window_update_frames_flood",
           stat="http2.inbound_window_update_frames_flood",
           name="envoy_http2_inbound_window_update_frames_flood"),
    family("http", "http2_inbound_control_frames_flood",
           stat="http2.inbound_control_frames_flood",
           name="envoy_http2_inbound_control_frames_flood",
           help="connections closed for PING/SETTINGS beyond their rate"),
    family("http", "http2_outbound_flood", stat="http2.outbound_flood",
           name="envoy_http2_outbound_flood"),
    family("http", "http2_rx_reset", stat="http2.rx_reset", name="envoy_http2_rx_reset"),
    family("http", "http2_rx_messaging_error", stat="http2.rx_messaging_error",
           name="envoy_http2_rx_messaging_error",
           help="requests answered 400: a :method, :path or :authority that cannot be forwarded"),
    family("http", "downstream_rq_xx", stat="downstream_rq_{}xx",
           name="envoy_http_downstream_rq_xx", key=_CODE_CLASS),
    family("http", "downstream_rq_time", HISTOGRAM),
    # -- kafka (Envoy's kafka_broker filter, as Kuma tags it) ------------------------------------
    family("kafka", "request", stat="request.{}", name="envoy_kafka__request", key="kafka_type",
           help="requests by type; unknown API keys as unknown, undecodable as failure"),
    family("kafka", "response", stat="response.{}", name="envoy_kafka__response",
           key="kafka_type", help="responses matched to a request, by type"),
    family("kafka", "response_duration", HISTOGRAM, stat="response.{}_duration",
           name="envoy_kafka__response_duration", key="kafka_type",
           help="milliseconds from a request to its response"),
    # -- dns (Envoy's DNS filter, as Kuma names it: kuma_dns) -------------------------------------
    family("dns", "downstream_rx_queries", help="DNS messages received"),
    family("dns", "downstream_rx_invalid_queries", help="messages that are not a readable query"),
    family("dns", "downstream_tx_responses", help="DNS answers sent"),
    family("dns", "a_record_queries"),
    family("dns", "aaaa_record_queries"),
    family("dns", "unsupported_queries", help="queries of types other than A and AAAA"),
    family("dns", "known_domain_queries", help="queries for names in the mesh's zone"),
    family("dns", "local_a_record_answers", help="A records answered from the mesh's names"),
    family("dns", "local_aaaa_record_answers"),
    family("dns", "externally_resolved_queries", help="queries an upstream resolver answered"),
    family("dns", "unanswered_queries", help="forwarded queries no upstream answered (SERVFAIL)"),
)  # fmt: skip

_names = [f.name for f in FAMILIES]
assert len(_names) == len(set(_names)), "a Prometheus name is declared twice"
assert all(f.scope in SCOPES for f in FAMILIES)


# -- reading the stats objects --------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One value of one family: an Envoy stat name, its Prometheus labels, its value."""

    family: Family
    stat: str  # Envoy's full stat name, e.g. cluster.backend.upstream_cx_total
    labels: Labels
    value: Any  # int | float for counters and gauges, Histogram for histograms

    @property
    def used(self) -> bool:
        if isinstance(self.value, Histogram):
            return self.value.count > 0
        return bool(self.value)


def samples(store: StatsStore, families: Iterable[Family] = FAMILIES) -> Iterator[Sample]:
    store.settle()  # the counts by response status, into the code and class families
    for fam in families:
        scope = SCOPES[fam.scope]
        for obj in scope.objects(store):
            value = getattr(obj, fam.attr)
            if value is None:
                continue  # not known (yet): e.g. certificate expiry before mTLS
            if fam.live:
                value += getattr(obj, fam.live)
            root, labels = scope.root(obj), scope.labels(obj)
            if fam.key_label:
                for key in sorted(value):
                    stat = f"{root}.{fam.stat.format(key)}"
                    yield Sample(fam, stat, (*labels, (fam.key_label, key)), value[key])
            else:
                yield Sample(fam, f"{root}.{fam.stat}", labels, value)


def select(
    store: StatsStore,
    usedonly: bool = False,
    pattern: re.Pattern[str] | None = None,
    used: set[str] | None = None,
) -> list[Sample]:
    """Samples as /stats filters them: `filter` is a regex; `usedonly` keeps the used ones.

    Envoy's "used" is a flag a counter's first count or a gauge's first change sets, and that
    nothing clears: a gauge back at 0 and a counter after /reset_counters stay in (Kuma's
    MeshMetric scrapes with `usedonly`, and a series must not vanish because it reads 0). Here:
    a value that is not 0 now, or was at an earlier read (`used`: the stat names seen so, kept
    by the caller and added to by every read), or an `_active` gauge whose `_total` counter is
    used (the gauge has moved, even if no read saw it); the server's gauges are set at start."""
    chosen = list(samples(store))
    if used is not None:
        used.update(s.stat for s in chosen if s.used)
    if usedonly:
        seen = {s.stat for s in chosen if s.used} if used is None else used
        chosen = [
            s
            for s in chosen
            if s.used
            or s.stat in seen
            or s.family.scope == "server"
            or (s.stat.endswith("_active") and s.stat[: -len("active")] + "total" in seen)
        ]
    if pattern is not None:
        chosen = [s for s in chosen if pattern.search(s.stat)]
    return chosen


def reset_counters(store: StatsStore) -> None:
    """Zero every counter (not gauges, not histograms), as Envoy's /reset_counters does."""
    store.settle()  # (so that no count by response status outlives the reset)
    for fam in FAMILIES:
        if fam.type != COUNTER:
            continue
        for obj in SCOPES[fam.scope].objects(store):
            value = getattr(obj, fam.attr)
            if isinstance(value, dict):
                for key in value:
                    value[key] = 0
            else:
                setattr(obj, fam.attr, 0)


# -- Prometheus text format -----------------------------------------------------------------------

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)


def _bound(bound: float) -> str:
    # Envoy's `{:.32g}` (prometheus_stats.cc: "a fixed point (non-scientific) format"): 3600000
    return "+Inf" if math.isinf(bound) else format(bound, ".32g")


def _default_help(sample: Sample) -> str:
    """`Envoy stat cluster.<envoy_cluster_name>.upstream_cx_total`: where the series comes from."""
    fam = sample.family
    where = "".join(f"<{k}>." for k, _ in sample.labels if k != fam.key_label)
    return f"Envoy stat {fam.scope}.{where}{fam.stat.format('<' + fam.key_label + '>')}"


def render_prometheus(selected: Iterable[Sample]) -> str:
    """Prometheus text exposition (0.0.4): families sorted by name, `# TYPE` before each."""
    by_family: dict[str, list[Sample]] = {}
    for s in selected:
        by_family.setdefault(s.family.name, []).append(s)
    out: list[str] = []
    for name in sorted(by_family):
        group = by_family[name]
        fam = group[0].family
        out.append(f"# HELP {name} {fam.help or _default_help(group[0])}")
        out.append(f"# TYPE {name} {fam.type}")
        for s in group:
            if fam.type == HISTOGRAM:
                hist: Histogram = s.value
                for bound, count in hist.cumulative():
                    le = 'le="' + _bound(bound) + '"'
                    out.append(f"{name}_bucket{_labels(s.labels, le)} {count}")
                out.append(f"{name}_sum{_labels(s.labels)} {_number(hist.sum)}")
                out.append(f"{name}_count{_labels(s.labels)} {hist.count}")
            else:
                out.append(f"{name}{_labels(s.labels)} {_number(s.value)}")
    return "\n".join(out) + "\n" if out else ""


# -- Envoy's /stats -------------------------------------------------------------------------------

SUPPORTED_QUANTILES = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)


def _quantiles(hist: Histogram) -> list[float | None]:
    cumulative = hist.cumulative()
    return [quantile_of(cumulative, q / 100) for q in SUPPORTED_QUANTILES]


def render_text(selected: Iterable[Sample]) -> str:
    """Envoy's /stats: `name: value`, counters and gauges then histograms, each sorted by name."""
    scalars: list[tuple[str, str]] = []
    histograms: list[tuple[str, str]] = []
    for s in selected:
        if isinstance(s.value, Histogram):
            if s.value.count == 0:
                histograms.append((s.stat, "No recorded values"))
                continue
            parts = [
                f"P{q:g}(nan,{_fmt_ms(v)})"
                for q, v in zip(SUPPORTED_QUANTILES, _quantiles(s.value), strict=True)
            ]
            histograms.append((s.stat, " ".join(parts)))
        else:
            scalars.append((s.stat, _number(s.value)))
    lines = [f"{k}: {v}" for k, v in sorted(scalars)] + [f"{k}: {v}" for k, v in sorted(histograms)]
    return "\n".join(lines) + "\n" if lines else ""


def _fmt_ms(value: float | None) -> str:
    return "nan" if value is None else format(value, "g")


def render_json(selected: Iterable[Sample], buckets: str | None = None) -> dict[str, Any]:
    """Envoy's /stats?format=json; `histogram_buckets=cumulative` lists buckets, not quantiles."""
    stats: list[dict[str, Any]] = []
    hists: list[Sample] = []
    for s in sorted(selected, key=lambda s: s.stat):
        if isinstance(s.value, Histogram):
            hists.append(s)
        else:
            stats.append({"name": s.stat, "value": s.value})
    if buckets == "cumulative":
        stats.append(
            {
                "histograms": [
                    {
                        "name": s.stat,
                        "sum": s.value.sum,
                        "count": s.value.count,
                        "buckets": [
                            {"upper_bound": b, "cumulative": c}
                            for b, c in s.value.cumulative()
                            if not math.isinf(b)
                        ],
                    }
                    for s in hists
                ]
            }
        )
    elif hists:
        stats.append(
            {
                "histograms": {
                    "supported_quantiles": list(SUPPORTED_QUANTILES),
                    "computed_quantiles": [
                        {
                            "name": s.stat,
                            "values": [
                                {"interval": None, "cumulative": v} for v in _quantiles(s.value)
                            ],
                        }
                        for s in hists
                    ],
                }
            }
        )
    return {"stats": stats}
