"""Clusters: a named set of upstream endpoints, balanced round robin.

An outbound's cluster is filled from the mesh directory (endpoint addresses that are DNS names are
resolved, every address an endpoint, and re-resolved periodically, keeping the last good answer
when a lookup fails). An inbound's cluster is the one local app. The data path only calls `pick`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from sidecar.config.mesh import Endpoint
from sidecar.observe.stats import ClusterStats

log = logging.getLogger("sidecar.cluster")


@dataclass(frozen=True)
class Target:
    """One dialable address of an endpoint."""

    host: str  # an IP address
    port: int
    endpoint: Endpoint | None = field(default=None, compare=False)  # None: an inbound's app

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


LB_POLICIES = ("round_robin", "least_request")


class Cluster:
    def __init__(self, name: str, stats: ClusterStats, lb: str = "round_robin") -> None:
        self.name = name
        self.stats = stats
        self.lb = lb
        self.targets: tuple[Target, ...] = ()
        self.protocol: str | None = None  # the service's protocol in the mesh (None: undeclared)
        self.active: dict[Target, int] = {}  # requests or connections in flight, per endpoint
        self._next = 0

    def set_targets(self, targets: Iterable[Target]) -> None:
        targets = tuple(targets)
        if targets != self.targets:
            log.info(
                "event=cluster_updated cluster=%s endpoints=%s",
                self.name,
                ",".join(map(str, targets)) or "-",
            )
        self.targets = targets
        self.stats.membership_total = len(targets)
        self.stats.membership_healthy = len(targets)

    def pick(self) -> Target | None:
        """The next endpoint (round robin, or the less loaded of two random ones, as Envoy's
        least_request does); None when the cluster is empty."""
        targets = self.targets
        if not targets:
            return None
        if self.lb == "least_request" and len(targets) > 1:
            a, b = random.sample(targets, 2)
            return a if self.active.get(a, 0) <= self.active.get(b, 0) else b
        self._next = (self._next + 1) % len(targets)
        return targets[self._next]

    def acquire(self, target: Target) -> None:
        self.active[target] = self.active.get(target, 0) + 1

    def release(self, target: Target) -> None:
        left = self.active.get(target, 0) - 1
        if left > 0:
            self.active[target] = left
        else:
            self.active.pop(target, None)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Resolver:
    """Resolves endpoint host names, keeping the last good addresses when a lookup fails."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, ...]] = {}

    def cached(self, host: str) -> tuple[str, ...]:
        if is_ip(host):
            return (host,)
        return self._cache.get(host, ())

    async def refresh(self, hosts: Iterable[str]) -> bool:
        """Look up every name again; True when any answer changed."""
        loop = asyncio.get_running_loop()
        changed = False
        for host in {h for h in hosts if not is_ip(h)}:
            try:
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                log.warning(
                    "event=dns_failed host=%s error=%s kept=%s",
                    host,
                    exc,
                    ",".join(self._cache.get(host, ())) or "-",
                )
                continue
            addresses = tuple(sorted({str(info[4][0]) for info in infos}))
            if self._cache.get(host) != addresses:
                self._cache[host] = addresses
                changed = True
        return changed

    def targets(self, endpoints: Iterable[Endpoint]) -> list[Target]:
        return [
            Target(address, ep.port, ep) for ep in endpoints for address in self.cached(ep.address)
        ]
