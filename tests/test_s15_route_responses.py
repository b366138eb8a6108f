"""Session 15: a response head's hop-by-hop fields are dropped by the router, except where every
response comes over HTTP/2 from a verified peer sidecar (the outbound's mesh pool under mTLS),
whose own router dropped them before the response left (`Route.strips_responses`).

- A route strips by default (the inbound toward its app, an outbound whose peers are not
  verified): Connection, what it names and the fixed hop-by-hop set are gone.
- The outbound's route strips exactly when its mesh pool is not trusted (the inbound's routes,
  the peer sidecar's that a trusting outbound relies on, keep the default).
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.cluster import Cluster, Target
from sidecar.http.exchange import RequestHead
from sidecar.http.pool import plain_connector
from sidecar.http.router import Route, proxy
from sidecar.listener import StackOptions
from sidecar.observe.stats import ClusterStats, ListenerStats
from sidecar.outbound import OutboundStack, mesh_pool
from sidecar.plan import ListenerPlan
from tests.test_s13_route_counting import _Exchange, _Upstream

# What an app may answer: the connection's own fields among the end-to-end ones.
APP_FIELDS = [
    (b"connection", b"keep-alive, x-hop"),
    (b"keep-alive", b"timeout=5"),
    (b"x-hop", b"1"),
    (b"content-length", b"0"),
    (b"x-end-to-end", b"kept"),
]
STRIPPED = [(b"content-length", b"0"), (b"x-end-to-end", b"kept")]


class _Pool:
    """Every stream answered with APP_FIELDS."""

    def ready_stream(self, target: Target, head: RequestHead, end_stream: bool) -> _Upstream:
        return _Upstream(200, list(APP_FIELDS))


def _answered(strips_responses: bool | None) -> list[tuple[bytes, bytes]]:
    """The fields of the head the client got through a route (None: the route's default)."""
    cluster = Cluster("backend", ClusterStats("backend"))
    cluster.set_targets([Target("127.0.0.1", 1)])
    pool = _Pool()
    route = Route("l", cluster, lambda exchange: pool, request_timeout=0, stream_idle_timeout=0)
    if strips_responses is not None:
        route.strips_responses = strips_responses
    exchange = _Exchange()
    asyncio.run(proxy(route, exchange))  # type: ignore[arg-type]
    assert exchange.answered is not None and exchange.status == 200
    return exchange.answered.headers


def test_a_route_strips_a_responses_hop_by_hop_fields_by_default() -> None:
    """The inbound toward its app, and any route not told otherwise."""
    assert _answered(None) == STRIPPED
    assert _answered(True) == STRIPPED


def test_a_route_over_verified_peer_sidecars_takes_their_heads_as_they_came() -> None:
    assert _answered(False) == APP_FIELDS


@pytest.mark.parametrize("trusted", [False, True])
def test_the_outbound_route_strips_unless_its_mesh_pool_is_trusted(trusted: bool) -> None:
    plan = ListenerPlan(
        "outbound:127.0.0.1:1", "outbound", "127.0.0.1", 1, "backend", "backend", None,
    )  # fmt: skip
    cluster = Cluster("backend", ClusterStats("backend"))

    async def route() -> Route:  # (a stack and its pool are made on the running loop)
        pool = mesh_pool(plain_connector(5.0), trusted=trusted)
        stack = OutboundStack(
            plan, cluster, ListenerStats("127.0.0.1_1", "outbound"), StackOptions(),
            lambda: "http", pool,
        )  # fmt: skip
        return stack.route()

    assert asyncio.run(route()).strips_responses is not trusted
