"""Session 13's cuts in the router's counting, each checked against what it must keep:

- gRPC messages are counted whole (one chunk, one message: gRPC's usual) without a
  `GrpcMessages` per direction, which is made only from the first chunk that is not one whole
  message; the counts are those of one parser fed the whole body, however it is cut
  (`RequestAccounting.request_chunk`, `response_chunk`, `grpc_response_ended`);
- the two histograms a request observes are filled as `Histogram.observe` fills them
  (`upstream_response`, `finished`, where it is written out);
- upstream_rq_active is taken back exactly once, whichever of `upstream_done` and `finished`
  comes first (`upstream_started` is also the "counted" flag);
- a success reaches outlier detection only where an endpoint has failed before, and then still
  resets the endpoint's run of failures (`_attempt`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cluster import Cluster, Target
from sidecar.http import accounting
from sidecar.http.accounting import GrpcMessages, RequestAccounting
from sidecar.http.exchange import EMPTY_BODY, RequestHead, ResponseHead
from sidecar.http.router import Route, proxy
from sidecar.observe.stats import ClusterStats, Histogram, HttpStats

# -- gRPC messages -----------------------------------------------------------------------------


def _grpc_accounting() -> tuple[RequestAccounting, ClusterStats]:
    cluster = ClusterStats("c")
    head = RequestHead(b"POST", b"http", b"a", b"/s/m", [(b"content-type", b"application/grpc")])
    acct = RequestAccounting(HttpStats("p"), cluster, head, None, None)
    assert acct.grpc
    return acct, cluster


def _message(payload: int) -> bytes:
    return b"\0" + payload.to_bytes(4, "big") + bytes(payload)


def _cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(stream)) for c in cuts})
    edges = [0, *points, len(stream)]
    return [stream[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(st.integers(0, 30), max_size=8),
    st.lists(st.integers(0, 200), max_size=8),
    st.lists(st.integers(0, 30), max_size=8),
    st.lists(st.integers(0, 200), max_size=8),
)
def test_grpc_messages_are_counted_as_one_parser_counts_the_whole_body(
    requests: list[int], request_cuts: list[int], responses: list[int], response_cuts: list[int]
) -> None:
    """Whole-message chunks first, then cut ones, then whole-looking ones again (the tail of a
    payload can look like a whole message: once a parser is made, it counts every chunk)."""
    acct, cluster = _grpc_accounting()
    request_stream = b"".join(map(_message, requests))
    response_stream = b"".join(map(_message, responses))
    reference = GrpcMessages(), GrpcMessages()
    for chunk in _cut(request_stream, request_cuts):
        acct.request_chunk(chunk)
        reference[0].feed(chunk)
    for chunk in _cut(response_stream, response_cuts):
        acct.response_chunk(chunk)
        reference[1].feed(chunk)
    acct.grpc_response_ended([], [(b"grpc-status", b"0")])
    assert cluster.grpc_request_message_count == reference[0].count == len(requests)
    assert cluster.grpc_response_message_count == reference[1].count == len(responses)


def test_a_payload_tail_that_looks_like_a_whole_message_is_not_counted() -> None:
    acct, cluster = _grpc_accounting()
    tail = _message(3)  # the last 8 bytes of the payload below: a whole message of its own
    whole = b"\0" + (len(tail) + 2).to_bytes(4, "big") + b"xy" + tail
    acct.request_chunk(_message(1))  # whole: counted without a parser
    assert acct.grpc_requests is None and acct.grpc_request_messages == 1
    acct.request_chunk(whole[:7])  # a prefix and two bytes of payload
    acct.request_chunk(whole[7:])  # the rest of the payload
    acct.response_chunk(_message(0))
    acct.response_chunk(_message(2) + _message(0))  # two messages: counted by a parser
    acct.grpc_response_ended([], [(b"grpc-status", b"0")])
    assert cluster.grpc_request_message_count == 2
    assert cluster.grpc_response_message_count == 3


def test_an_empty_or_short_chunk_is_no_whole_message() -> None:
    acct, cluster = _grpc_accounting()
    for chunk in (b"", b"\0\0", b"\0\0\0\0\0"):  # nothing, a prefix's start and its end
        acct.request_chunk(chunk)
    acct.grpc_response_ended([], None)
    assert cluster.grpc_request_message_count == 1
    assert cluster.grpc_status == {"-": 1} and cluster.grpc_failure == 1


# -- the histograms and upstream_rq_active ------------------------------------------------------


def _plain(http: HttpStats, cluster: ClusterStats) -> RequestAccounting:
    return RequestAccounting(http, cluster, RequestHead(b"GET", b"http", b"a", b"/"), None, None)


@pytest.mark.parametrize("ms", [0.0, 0.5, 250.0, 250.25, 7000.0])
def test_the_request_histograms_are_filled_as_observe_fills_them(monkeypatch, ms: float) -> None:
    """On a bucket's bound (0.5, 250) and between bounds: the same bucket, sum and count."""
    clock = iter([1.0, 2.0, 2.0 + ms / 1000, 3.0 + ms / 1000])
    monkeypatch.setattr(accounting, "_now", lambda: next(clock))
    http, cluster = HttpStats("p"), ClusterStats("c")
    acct = _plain(http, cluster)
    acct.upstream_open("h:1")
    acct.upstream_response(200)
    acct.finished(200)
    upstream, downstream = Histogram(), Histogram()
    upstream.observe(((2.0 + ms / 1000) - 2.0) * 1000)
    downstream.observe(((3.0 + ms / 1000) - 1.0) * 1000)
    for ours, theirs in (
        (cluster.upstream_rq_time, upstream),
        (http.downstream_rq_time, downstream),
    ):
        assert (ours.counts, ours.sum, ours.count) == (theirs.counts, theirs.sum, theirs.count)


@pytest.mark.parametrize("done_first", [False, True])
def test_upstream_rq_active_is_taken_back_once(done_first: bool) -> None:
    http, cluster = HttpStats("p"), ClusterStats("c")
    acct = _plain(http, cluster)
    acct.upstream_open("h:1")
    assert cluster.upstream_rq_active == 1
    if done_first:  # a failed attempt: taken back before the retry or the local reply
        acct.upstream_done()
        assert cluster.upstream_rq_active == 0
        acct.upstream_done()
        assert cluster.upstream_rq_active == 0
        acct.upstream_open("h:2")  # the retry counts again
        assert cluster.upstream_rq_active == 1 and cluster.upstream_rq_total == 2
        acct.upstream_done()
    acct.finished(503 if done_first else 200)
    assert cluster.upstream_rq_active == 0 and http.downstream_rq_active == 0
    acct.finished(200)  # (never twice in the router: nothing upstream is taken back again)
    assert cluster.upstream_rq_active == 0


def test_a_request_that_never_went_upstream_takes_nothing_back() -> None:
    http, cluster = HttpStats("p"), ClusterStats("c")
    cluster.upstream_rq_active = 3  # other requests in flight
    _plain(http, cluster).finished(503)
    assert cluster.upstream_rq_active == 3


# -- outlier detection's successes, through the router ----------------------------------------


class _Exchange:
    """The least of a downstream exchange that `proxy` needs for a bodyless request."""

    def __init__(self) -> None:
        self.request = RequestHead(b"GET", b"http", b"a", b"/")
        self.body = EMPTY_BODY
        self.peer_address = None
        self.responded = False
        self.status = 0
        self.cancelled = False
        self.answered: ResponseHead | None = None  # the head it was answered with

    def informational(self, head: ResponseHead) -> None:
        pass

    async def respond(self, head: ResponseHead, end: bool = False, last: Any = None) -> None:
        self.responded = True
        self.status = head.status
        self.answered = head


class _Upstream:
    """An upstream stream whose response (a head alone) is already there."""

    def __init__(self, status: int, fields: list[tuple[bytes, bytes]] | None = None) -> None:
        self.response_head = asyncio.get_running_loop().create_future()
        head = ResponseHead(status, [(b"content-length", b"0")] if fields is None else fields)
        self.response_head.set_result(head)
        self.body = EMPTY_BODY
        self.response_ended_with_head = True
        self.on_informational = None


class _Pool:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses

    def ready_stream(self, target: Target, head: RequestHead, end_stream: bool) -> _Upstream:
        return _Upstream(self.statuses.pop(0))


def _answer(statuses: list[int]) -> Cluster:
    """Each status in turn from the one endpoint of a cluster (threshold: Kuma's 5)."""
    cluster = Cluster("backend", ClusterStats("backend"))
    cluster.set_targets([Target("127.0.0.1", 1)])
    pool = _Pool(list(statuses))
    route = Route("l", cluster, lambda exchange: pool, request_timeout=0, stream_idle_timeout=0)

    async def run() -> None:
        for _ in statuses:
            exchange = _Exchange()
            await proxy(route, exchange)  # type: ignore[arg-type]
            assert exchange.status

    asyncio.run(run())
    assert cluster.stats.upstream_rq_active == 0
    return cluster


def test_a_success_resets_an_endpoints_run_of_failures() -> None:
    assert _answer([503] * 5).outlier.ejected  # five in a row: ejected
    cluster = _answer([503] * 4 + [200] + [503] * 4)
    assert not cluster.outlier.ejected
    assert cluster.outlier.health[Target("127.0.0.1", 1)].failures == 4


def test_successes_alone_leave_outlier_detection_untouched() -> None:
    cluster = _answer([200, 204, 404])
    assert cluster.outlier.health == {} and not cluster.outlier.ejected
    cluster.stats.settle()  # (the counts by status, into the counts by class)
    assert cluster.stats.upstream_rq_xx == {"2": 2, "4": 1}
