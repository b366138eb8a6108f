"""A verified peer sidecar's requests are not checked again at the inbound (issue 8: no second
validation on the hop between two sidecars): the peer's own router checked each head before it
left (`sidecar.http.rules`). Plaintext callers' requests, and every outbound's, still are."""

from __future__ import annotations

import asyncio

from sidecar.cluster import Cluster, Target
from sidecar.http.exchange import RequestHead
from sidecar.http.router import Route, proxy
from sidecar.identity.mesh import Peer
from sidecar.inbound import InboundStack
from sidecar.listener import StackOptions
from sidecar.observe.stats import ClusterStats, ListenerStats
from sidecar.plan import ListenerPlan
from tests.test_s13_route_counting import _Exchange, _Pool

BAD_AUTHORITY = RequestHead(b"GET", b"http", b"a b", b"/")  # a space: never forwarded unchecked


def _status(checks_requests: bool) -> tuple[int, int]:
    """(the status the client got, the requests that reached the upstream)."""
    cluster = Cluster("backend", ClusterStats("backend"))
    cluster.set_targets([Target("127.0.0.1", 1)])
    pool = _Pool([200])
    route = Route(
        "l", cluster, lambda exchange: pool, request_timeout=0, stream_idle_timeout=0,
        checks_requests=checks_requests,
    )  # fmt: skip
    exchange = _Exchange()
    exchange.request = BAD_AUTHORITY
    asyncio.run(proxy(route, exchange))  # type: ignore[arg-type]
    return exchange.status, cluster.stats.upstream_rq_total


def test_a_checked_route_answers_a_bad_head_400_without_an_upstream() -> None:
    assert _status(checks_requests=True) == (400, 0)


def test_a_peer_route_forwards_what_the_peer_already_checked() -> None:
    assert _status(checks_requests=False) == (200, 1)


def _inbound() -> InboundStack:
    plan = ListenerPlan(
        "inbound:127.0.0.1:1", "inbound", "127.0.0.1", 1, "localhost:2", "backend", "http",
        target=("127.0.0.1", 2),
    )  # fmt: skip
    cluster = Cluster("localhost:2", ClusterStats("localhost:2"))
    return InboundStack(plan, cluster, ListenerStats("127.0.0.1_1", "inbound"), StackOptions())


def test_only_a_verified_peers_route_skips_the_checks() -> None:
    async def routes() -> tuple[Route, Route]:  # (a stack is made on the running loop)
        stack = _inbound()
        peer = Peer.from_uris(["spiffe://default/web"], "default")
        return stack.route(None), stack.route(peer)

    plaintext, verified = asyncio.run(routes())
    assert plaintext.checks_requests
    assert not verified.checks_requests
