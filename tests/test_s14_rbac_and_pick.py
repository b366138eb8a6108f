"""Two per-request shortcuts, and the behaviour they must keep.

- `Authorizer.allows`: the usual verdict (allowed, no shadow deny) is counted and returned before
  anything else; the caller's SPIFFE id is looked up only for a line that is logged. Every line
  and count stays as it was: allowed (debug), denied and shadow-denied (info).
- `Cluster.pick`: a cluster of one endpoint returns it at once, and leaves the round robin where
  the modulo would have (at 0), so that it goes on the same way once endpoints are added.
"""

from __future__ import annotations

import logging

import pytest

from sidecar.cluster import Cluster, Target
from sidecar.identity.mesh import Authorizer, Peer
from sidecar.observe.stats import ClusterStats, ListenerStats


def _peer(service: str, *tags: str) -> Peer:
    uris = [f"spiffe://default/{service}", *tags]
    return Peer.from_uris(uris, "default")


def _policy(action: str) -> list[tuple[str, dict]]:
    spec = {
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": action}}],
    }
    return [("p.yaml", {"type": "MeshTrafficPermission", "name": "p1", "spec": spec})]


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "event=rbac" in r.getMessage()]


def test_allowed_requests_count_and_log_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    authz, stats = Authorizer("default"), ListenerStats("l", "inbound_l")
    authz.update(_policy("Allow"))
    caplog.set_level(logging.INFO, "sidecar.mtls")
    assert authz.allows("backend", _peer("web"), stats, "inbound:x", "protocol=http")
    assert _lines(caplog) == []
    caplog.set_level(logging.DEBUG, "sidecar.mtls")  # a log level changed at run time
    assert authz.allows("backend", _peer("web"), stats, "inbound:x", "protocol=http")
    assert authz.allows("backend", None, stats, "inbound:x", "protocol=tcp")
    assert _lines(caplog) == [
        (
            logging.DEBUG,
            "event=rbac_allowed listener=inbound:x protocol=http service=backend "
            "source=spiffe://default/web policy=p1",
        ),
        (
            logging.DEBUG,
            "event=rbac_allowed listener=inbound:x protocol=tcp service=backend "
            "source=plaintext policy=p1",
        ),
    ]
    assert (stats.rbac_allowed, stats.rbac_denied, stats.rbac_shadow_denied) == (3, 0, 0)
    caplog.clear()
    authz.update([])  # no policy: allowed by none, named "-"
    assert authz.allows("backend", None, stats, "inbound:x", "protocol=tcp")
    assert _lines(caplog)[0][1].endswith(" source=plaintext policy=-")


def test_denied_and_shadow_denied_requests_count_and_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidecar.mtls")
    authz, stats = Authorizer("default"), ListenerStats("l", "inbound_l")
    authz.update(_policy("Deny"))
    assert not authz.allows("backend", _peer("web"), stats, "inbound:x", "protocol=http")
    assert not authz.allows("backend", None, stats, "inbound:x", "protocol=http")
    authz.update(_policy("AllowWithShadowDeny"))  # takes effect on the next request
    assert authz.allows("backend", _peer("web"), stats, "inbound:x", "protocol=tcp")
    assert (stats.rbac_allowed, stats.rbac_denied, stats.rbac_shadow_denied) == (1, 2, 1)
    assert _lines(caplog) == [
        (
            logging.INFO,
            "event=rbac_denied listener=inbound:x protocol=http service=backend "
            "source=spiffe://default/web policy=p1",
        ),
        (
            logging.INFO,
            "event=rbac_denied listener=inbound:x protocol=http service=backend "
            "source=plaintext policy=p1",
        ),
        (
            logging.INFO,
            "event=rbac_shadow_denied listener=inbound:x protocol=tcp service=backend "
            "source=spiffe://default/web policy=p1",
        ),
    ]
    authz.update(_policy("Allow"))
    assert authz.allows("backend", _peer("web"), stats, "inbound:x", "protocol=tcp")
    assert (stats.rbac_allowed, stats.rbac_shadow_denied) == (2, 1)


def _targets(n: int) -> list[Target]:
    return [Target("127.0.0.1", 1000 + i) for i in range(n)]


@pytest.mark.parametrize("lb", ["round_robin", "least_request"])
def test_a_cluster_of_one_endpoint_picks_it_and_none_of_none(lb: str) -> None:
    cluster = Cluster("c", ClusterStats("c"), lb=lb)
    assert cluster.pick() is None
    cluster.set_targets(_targets(1))
    assert [cluster.pick() for _ in range(3)] == _targets(1) * 3


def test_the_round_robin_goes_on_as_before_across_a_single_endpoint() -> None:
    a, b, c = _targets(3)
    cluster = Cluster("c", ClusterStats("c"))
    cluster.set_targets([a, b, c])
    assert [cluster.pick() for _ in range(2)] == [b, c]
    cluster.set_targets([a])
    assert cluster.pick() == a
    cluster.set_targets([a, b, c])
    assert [cluster.pick() for _ in range(4)] == [b, c, a, b]  # from the start, as `% 1` left it
