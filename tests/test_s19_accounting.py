"""Session 19's cheaper request accounting. A histogram sorts its observations into Envoy's
buckets in bulk (`Histogram.fold`): what any reader sees is what counting each observation on
arrival would show, and what waits is bounded. A request is a gRPC call when it is a POST with
gRPC's content-type: no other request's headers are looked through."""

from __future__ import annotations

import json
from bisect import bisect_left

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http.accounting import RequestAccounting
from sidecar.http.exchange import RequestHead
from sidecar.observe.aggregate import add, snapshot
from sidecar.observe.stats import (
    ENVOY_BUCKETS_MS,
    HISTOGRAM_FOLD_AT,
    ClusterStats,
    Histogram,
    HttpStats,
    StatsStore,
)

# Values on every bound, just either side of one, zero and beyond the last.
_EDGES = [0.0, *ENVOY_BUCKETS_MS, *(b + 1e-9 for b in ENVOY_BUCKETS_MS), 5e6]
_VALUES = st.one_of(st.sampled_from(_EDGES), st.floats(min_value=0, max_value=4e6, allow_nan=False))


def _by_arrival(values: list[float]) -> list[int]:
    """The buckets as `le` defines them, each observation on its own."""
    counts = [0] * (len(ENVOY_BUCKETS_MS) + 1)
    for value in values:
        counts[bisect_left(ENVOY_BUCKETS_MS, value)] += 1
    return counts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_VALUES, st.booleans()), max_size=60))
def test_readers_see_every_observation_in_its_bucket(observations) -> None:
    """Reads between observations (each folds what waits) change nothing."""
    hist = Histogram()
    seen: list[float] = []
    for value, read in observations:
        hist.observe(value)
        seen.append(value)
        if read:
            assert hist.count == len(seen)
    assert hist.counts == _by_arrival(seen)
    assert hist.count == len(seen)
    assert abs(hist.sum - sum(seen)) <= 1e-9 * max(1.0, sum(seen))
    assert hist.cumulative()[-1] == (float("inf"), len(seen))


def test_what_waits_is_bounded_without_a_reader() -> None:
    hist = Histogram()
    for n in range(3 * HISTOGRAM_FOLD_AT + 5):
        hist.observe(n % 700 / 7)
        assert len(hist.pending) < HISTOGRAM_FOLD_AT
    assert len(hist.pending) == 5  # three folds happened on the way, with no read


def test_adding_a_snapshot_keeps_what_was_pending() -> None:
    """The merge of workers' snapshots adds to `sum` and `count`: the pending ones count too."""
    hist = Histogram()
    hist.observe(3.0)
    hist.add([0] * len(hist.counts), 10.0, 2)
    assert (hist.sum, hist.count, hist.pending) == (13.0, 3, [])


def test_a_workers_snapshot_carries_pending_observations() -> None:
    worker, whole = StatsStore(), StatsStore()
    worker.http("p").downstream_rq_time.observe(0.7)
    worker.cluster("c").upstream_rq_time.observe(7.0)
    add(whole, json.loads(json.dumps(snapshot(worker))), primary=True)
    assert whole.http("p").downstream_rq_time.counts == _by_arrival([0.7])
    assert whole.cluster("c").upstream_rq_time.count == 1


# -- which requests are gRPC calls ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "content_type", "grpc"),
    [
        (b"POST", b"application/grpc", True),
        (b"POST", b"application/grpc+proto", True),
        (b"POST", b"application/grpc-web", True),
        (b"POST", b"application/json", False),
        (b"POST", None, False),
        (b"GET", b"application/grpc", False),  # gRPC calls are POSTs: not a call
        (b"PUT", b"application/grpc", False),
    ],
)
def test_a_grpc_call_is_a_post_with_grpcs_content_type(method, content_type, grpc) -> None:
    headers = [(b"accept", b"*/*")]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    head = RequestHead(method, b"http", b"a", b"/s/m", headers)
    acct = RequestAccounting(HttpStats("p"), ClusterStats("c"), head, None, None)
    assert acct.grpc is grpc
    assert acct.counts_bodies is grpc  # nothing to count per chunk for the others
