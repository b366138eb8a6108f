"""An inbound HTTP connection keeps its caller's MeshTrafficPermission verdict between requests.

A plainly allowed caller (not denied, not shadow-denied) is decided once per connection and its
requests are only counted; the verdict is decided again as soon as the policies or the
listener's plan are replaced, so that each request is still judged by what is in force when it
arrives. Every count and log line stays as `Authorizer.allows` writes it: allowed (debug, each
request while debug is on), denied and shadow-denied (info).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.cluster import Cluster, Target
from sidecar.identity.mesh import Authorizer, Peer
from sidecar.inbound import InboundStack
from sidecar.listener import StackOptions
from sidecar.observe.stats import ClusterStats, ListenerStats
from sidecar.plan import ListenerPlan
from tests.test_s13_route_counting import _Exchange, _Pool

LISTENER = "inbound:127.0.0.1:1"


def _policy(action: str) -> list[tuple[str, dict[str, Any]]]:
    spec = {
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": action}}],
    }
    return [("p.yaml", {"type": "MeshTrafficPermission", "name": "p1", "spec": spec})]


class _Inbound:
    """An inbound stack of service `backend` under mTLS whose app answers 200, with a policy of
    `action` toward it, the handler of one connection from `web`, and how many decisions it
    asked of the authorizer."""

    def __init__(self, action: str) -> None:
        self.authorizer = Authorizer("default")
        self.authorizer.update(_policy(action))
        self.lookups = 0  # decisions asked of the authorizer: made, or looked up in its cache
        for name in ("decide", "allows"):
            setattr(self.authorizer, name, self._counted(getattr(self.authorizer, name)))
        self.plan = ListenerPlan(
            LISTENER, "inbound", "127.0.0.1", 1, "localhost:2", "backend", "http",
            target=("127.0.0.1", 2),
        )  # fmt: skip
        cluster = Cluster("localhost:2", ClusterStats("localhost:2"))
        cluster.set_targets([Target("127.0.0.1", 2)])
        self.stats = ListenerStats("127.0.0.1_1", "inbound")
        self.stack = InboundStack(
            self.plan, cluster, self.stats, StackOptions(), authorizer=self.authorizer
        )
        self.stack.h1_pool = _Pool([200] * 100)  # type: ignore[assignment]
        self.handle: Callable[[Any], Any] = self.stack.handler(
            Peer.from_uris(["spiffe://default/web"], "default")
        )

    def _counted(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            self.lookups += 1
            return method(*args)

        return counted

    async def request(self) -> int:
        exchange = _Exchange()
        await self.handle(exchange)
        return exchange.status

    def counts(self) -> tuple[int, int, int]:
        stats = self.stats
        return stats.rbac_allowed, stats.rbac_denied, stats.rbac_shadow_denied


@pytest.fixture
def rbac_lines(caplog: pytest.LogCaptureFixture) -> Callable[[], list[tuple[int, str]]]:
    """The RBAC lines logged so far (info level and up, unless a test turns on debug)."""
    caplog.set_level(logging.INFO, "sidecar.mtls")
    return lambda: [
        (r.levelno, r.getMessage()) for r in caplog.records if "event=rbac" in r.getMessage()
    ]


def test_a_plainly_allowed_caller_is_decided_once_and_each_request_counted(rbac_lines) -> None:
    async def run() -> None:
        inbound = _Inbound("Allow")
        assert [await inbound.request() for _ in range(3)] == [200, 200, 200]
        assert inbound.lookups == 1
        assert inbound.counts() == (3, 0, 0)
        assert inbound.stats.source("web").downstream_rq_total == 3
        assert rbac_lines() == []

    asyncio.run(run())


def test_replaced_policies_judge_the_connections_next_request(rbac_lines) -> None:
    async def run() -> None:
        inbound = _Inbound("Allow")
        assert await inbound.request() == 200
        inbound.authorizer.update(_policy("Deny"))
        assert [await inbound.request() for _ in range(2)] == [403, 403]
        inbound.authorizer.update(_policy("AllowWithShadowDeny"))
        assert await inbound.request() == 200
        inbound.authorizer.update(_policy("Allow"))
        assert await inbound.request() == 200
        assert inbound.counts() == (3, 2, 1)
        source = "source=spiffe://default/web policy=p1"
        assert rbac_lines() == [
            (logging.INFO, f"event=rbac_denied listener={LISTENER} protocol=http "
             f"service=backend {source}"),
        ] * 2 + [
            (logging.INFO, f"event=rbac_shadow_denied listener={LISTENER} protocol=http "
             f"service=backend {source}"),
        ]  # fmt: skip

    asyncio.run(run())


def test_a_replaced_plan_is_decided_again() -> None:
    """A reload that gives the listener another service: the policy that allows calls to
    `backend` no longer applies to the connection's requests (and no policy allows them)."""

    async def run() -> None:
        inbound = _Inbound("Allow")
        assert await inbound.request() == 200
        cluster = inbound.stack.cluster
        inbound.stack.update(dataclasses.replace(inbound.plan, service="other"), cluster)
        assert await inbound.request() == 403
        assert inbound.counts() == (1, 1, 0)

    asyncio.run(run())


def test_each_allowed_request_is_logged_while_debug_is_on(
    caplog: pytest.LogCaptureFixture, rbac_lines
) -> None:
    async def run() -> None:
        inbound = _Inbound("Allow")
        assert await inbound.request() == 200
        caplog.set_level(logging.DEBUG, "sidecar.mtls")  # turned on at run time (`/logging`)
        assert [await inbound.request() for _ in range(2)] == [200, 200]
        caplog.set_level(logging.INFO, "sidecar.mtls")
        assert await inbound.request() == 200
        line = (
            f"event=rbac_allowed listener={LISTENER} protocol=http service=backend "
            "source=spiffe://default/web policy=p1"
        )
        assert rbac_lines() == [(logging.DEBUG, line)] * 2
        assert inbound.counts() == (4, 0, 0)

    asyncio.run(run())
