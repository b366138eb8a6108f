"""How each way an attempt on an upstream stream ends is counted and answered, through the
router with fake streams (session 16: before these, dropping the retry's `upstream_done` left
upstream_rq_active one too high and broke no test).

- A refused stream is retried on the next endpoint, and the refused attempt is no longer in
  upstream_rq_active when the retry is counted, checked against the circuit breakers and opened
  (a breaker of one request in flight lets the retry through).
- Refused on every attempt: 503, with nothing left in upstream_rq_active by the local reply.
- A reset before the response head: 503 (remote reset), counted against the endpoint.
- No head within the request timeout: 504, the upstream stream reset.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.cluster import Cluster, Target
from sidecar.http.exchange import (
    EMPTY_BODY,
    RefusedStream,
    RequestHead,
    ResponseHead,
    StreamReset,
)
from sidecar.http.router import CONNECT_FAILURE, REMOTE_RESET, REQUEST_TIMEOUT, Route, proxy
from sidecar.observe.stats import ClusterStats, HttpStats
from tests.test_s13_route_counting import _Exchange as _BareExchange


class _Exchange(_BareExchange):
    """The route-counting test's exchange, noting upstream_rq_active when answered."""

    def __init__(self, stats: ClusterStats) -> None:
        super().__init__()
        self.text = b""
        self.stats = stats
        self.active_when_answered = -1

    async def respond(self, head: ResponseHead, end: bool = False, last: Any = None) -> None:
        await super().respond(head, end, last)
        self.text = last or b""
        self.active_when_answered = self.stats.upstream_rq_active

    def reset(self) -> None:
        raise AssertionError("not reset in these cases")


class _Upstream:
    """A stream whose response head is the given outcome (None: never comes)."""

    def __init__(self, outcome: int | BaseException | None) -> None:
        self.response_head: asyncio.Future[ResponseHead] = (
            asyncio.get_running_loop().create_future()
        )
        if isinstance(outcome, int):
            self.response_head.set_result(ResponseHead(outcome, [(b"content-length", b"0")]))
        elif outcome is not None:
            self.response_head.set_exception(outcome)
        self.body = EMPTY_BODY
        self.response_ended_with_head = True
        self.on_informational = None
        self.was_reset = False

    def reset(self) -> None:
        self.was_reset = True


class _Pool:
    def __init__(self, outcomes: list[int | BaseException | None]) -> None:
        self.outcomes = outcomes
        self.streams: list[_Upstream] = []

    def ready_stream(self, target: Target, head: RequestHead, end_stream: bool) -> _Upstream:
        self.streams.append(_Upstream(self.outcomes.pop(0)))
        return self.streams[-1]


def _through(
    outcomes: list[int | BaseException | None], max_requests: int = 1024, timeout: float = 0
) -> tuple[_Exchange, ClusterStats, HttpStats, _Pool]:
    stats = ClusterStats("backend")
    stats.cb_max_requests = max_requests
    cluster = Cluster("backend", stats)
    cluster.set_targets([Target("127.0.0.1", 1), Target("127.0.0.1", 2)])
    pool = _Pool(outcomes)
    http = HttpStats("l")
    route = Route(
        "l", cluster, lambda exchange: pool, request_timeout=timeout, stream_idle_timeout=0,
        connect_attempts=2, http_stats=http,
    )  # fmt: skip
    exchange = _Exchange(stats)

    async def run() -> None:
        await proxy(route, exchange)  # type: ignore[arg-type]

    asyncio.run(run())
    assert stats.upstream_rq_active == 0 and http.downstream_rq_active == 0
    return exchange, stats, http, pool


def test_a_refused_stream_is_retried_and_no_longer_counted_active() -> None:
    exchange, stats, _, pool = _through([RefusedStream("refused"), 200], max_requests=1)
    assert exchange.status == 200 and exchange.active_when_answered == 1
    assert stats.upstream_rq_total == 2 and stats.upstream_rq_retry == 1
    assert stats.upstream_rq_pending_overflow == 0 and len(pool.streams) == 2


def test_refused_on_every_attempt_is_a_503_with_nothing_active() -> None:
    exchange, stats, _, _ = _through([RefusedStream("refused"), RefusedStream("refused")])
    assert exchange.status == 503 and exchange.text == CONNECT_FAILURE.encode()
    assert exchange.active_when_answered == 0
    assert stats.upstream_rq_total == 2 and stats.upstream_rq_retry == 1


def test_a_reset_before_the_head_is_a_503_counted_against_the_endpoint() -> None:
    exchange, stats, _, pool = _through([StreamReset("reset")])
    assert exchange.status == 503 and exchange.text == REMOTE_RESET.encode()
    assert exchange.active_when_answered == 0 and len(pool.streams) == 1
    assert stats.upstream_rq_rx_reset == 1 and stats.upstream_rq_retry == 0


def test_no_head_within_the_request_timeout_is_a_504_and_a_reset_stream() -> None:
    exchange, stats, _, pool = _through([None], timeout=0.01)
    assert exchange.status == 504 and exchange.text == REQUEST_TIMEOUT.encode()
    assert stats.upstream_rq_timeout == 1 and pool.streams[0].was_reset
