"""Responses counted once, by status, and read as Envoy's code and class counts.

`RequestAccounting` bumps one dict per stats object keyed by the response status
(`upstream_rq_status`, `downstream_rq_status`); `StatsStore.settle` folds those into
`upstream_rq_xx`, `upstream_rq_code`, `external_upstream_rq_xx` and `downstream_rq_xx` before
every read. These tests read the counts the way the admin API, the metrics endpoint, the worker
snapshots and /reset_counters do, so a count lost, doubled or left behind shows.
"""

from __future__ import annotations

from sidecar.http.accounting import RequestAccounting
from sidecar.http.exchange import RequestHead
from sidecar.observe import aggregate, metrics
from sidecar.observe.stats import StatsStore


def _served(store: StatsStore, upstream: list[int], local: list[int]) -> None:
    """Requests answered by the upstream with `upstream`'s statuses, and by the sidecar itself
    (a 503 or 504 with no upstream answer) with `local`'s."""
    http, cluster = store.http("in"), store.cluster("app")
    for status in upstream + local:
        head = RequestHead(b"GET", b"http", b"a", b"/", [])
        acct = RequestAccounting(http, cluster, head, None, None)
        acct.upstream_open("127.0.0.1:1")
        if status in local:
            acct.local_failure(status, "UF")
        else:
            acct.upstream_response(status)
        acct.finished(status)


def _text(store: StatsStore) -> dict[str, str]:
    lines = metrics.render_text(metrics.select(store)).splitlines()
    return dict(line.split(": ", 1) for line in lines)


def test_stats_count_each_response_by_code_and_class_once() -> None:
    store = StatsStore()
    _served(store, [200, 200, 204, 404], [503])
    for _ in range(2):  # a second read counts nothing twice
        stats = _text(store)
        assert stats["cluster.app.upstream_rq_200"] == "2"
        assert stats["cluster.app.upstream_rq_204"] == "1"
        assert stats["cluster.app.upstream_rq_404"] == "1"
        assert stats["cluster.app.upstream_rq_503"] == "1"
        assert stats["cluster.app.upstream_rq_2xx"] == "3"
        assert stats["cluster.app.upstream_rq_4xx"] == "1"
        assert stats["cluster.app.upstream_rq_5xx"] == "1"
        assert stats["cluster.app.external.upstream_rq_2xx"] == "3"
        assert stats["cluster.app.external.upstream_rq_4xx"] == "1"
        assert "cluster.app.external.upstream_rq_5xx" not in stats  # the sidecar's own answer
        assert stats["http.in.downstream_rq_2xx"] == "3"
        assert stats["http.in.downstream_rq_4xx"] == "1"
        assert stats["http.in.downstream_rq_5xx"] == "1"
    _served(store, [200], [])  # counted after a read: added to what was read
    stats = _text(store)
    assert stats["cluster.app.upstream_rq_200"] == "3"
    assert stats["cluster.app.external.upstream_rq_2xx"] == "4"
    assert stats["http.in.downstream_rq_2xx"] == "4"


def test_prometheus_labels_carry_the_code_and_class() -> None:
    store = StatsStore()
    _served(store, [201], [])
    text = metrics.render_prometheus(metrics.select(store))
    assert 'envoy_cluster_upstream_rq{envoy_cluster_name="app",envoy_response_code="201"} 1' in text
    assert (
        'envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="in",'
        'envoy_response_code_class="2"} 1'
    ) in text


def test_reset_counters_leaves_no_response_uncounted_or_counted_again() -> None:
    store = StatsStore()
    _served(store, [200, 500], [])
    metrics.reset_counters(store)  # before any read
    stats = _text(store)
    assert stats["cluster.app.upstream_rq_200"] == "0"
    assert stats["cluster.app.upstream_rq_5xx"] == "0"
    assert stats["http.in.downstream_rq_2xx"] == "0"
    _served(store, [200], [])
    assert _text(store)["cluster.app.upstream_rq_200"] == "1"


def test_a_workers_snapshot_carries_its_responses_by_code_and_class() -> None:
    worker, total = StatsStore(), StatsStore()
    _served(worker, [200, 302], [504])
    _served(total, [200], [])
    aggregate.add(total, aggregate.snapshot(worker), primary=False)
    stats = _text(total)
    assert stats["cluster.app.upstream_rq_200"] == "2"
    assert stats["cluster.app.upstream_rq_3xx"] == "1"
    assert stats["cluster.app.upstream_rq_504"] == "1"
    assert stats["cluster.app.external.upstream_rq_2xx"] == "2"
    assert stats["http.in.downstream_rq_5xx"] == "1"
    assert stats["http.in.downstream_rq_2xx"] == "2"
