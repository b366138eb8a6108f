"""Clusters: a named set of upstream endpoints, balanced round robin.

An outbound's cluster is filled from the mesh directory (endpoint addresses that are DNS names are
resolved, every address an endpoint, and re-resolved periodically, keeping the last good answer
when a lookup fails). An inbound's cluster is the one local app. The data path calls `pick`, and
reports how each endpoint did (`outlier.success` / `outlier.failure`): passive outlier detection
ejects an endpoint that keeps failing and lets it back by itself. A cluster also carries its
circuit-breaker thresholds (Kuma's defaults), which the router, the pools and the TCP proxy check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Iterable
from operator import itemgetter

from sidecar.addresses import host_port
from sidecar.config.mesh import Endpoint
from sidecar.limits import Limits
from sidecar.observe.stats import ClusterStats

log = logging.getLogger("sidecar.cluster")


class Target(tuple[str, int]):
    """One dialable address of an endpoint: the tuple `(host, port)`, with the endpoint it came
    from alongside (None: an inbound's app) and the address as text (`address`).

    A tuple, so that hashing and comparing one, which the data path does several times per
    request (balancing, circuit breakers, outlier detection, pools), runs in C rather than in a
    dataclass's generated Python methods. Two targets are equal when their addresses are,
    whatever their endpoints."""

    host: str = property(itemgetter(0))  # type: ignore[assignment]  # an IP address
    port: int = property(itemgetter(1))  # type: ignore[assignment]
    endpoint: Endpoint | None
    address: str  # "host:port", made once

    def __new__(cls, host: str, port: int, endpoint: Endpoint | None = None) -> Target:
        target = super().__new__(cls, (host, port))
        target.endpoint = endpoint
        target.address = host_port(host, port)
        return target

    def __getnewargs__(self) -> tuple[str, int, Endpoint | None]:  # copy and pickle
        return (self[0], self[1], self.endpoint)

    def __repr__(self) -> str:
        return f"Target({self[0]!r}, {self[1]!r})"

    def __str__(self) -> str:
        return self.address


LB_POLICIES = ("round_robin", "least_request")


class Cluster:
    def __init__(
        self,
        name: str,
        stats: ClusterStats,
        lb: str = "round_robin",
        limits: Limits | None = None,
    ) -> None:
        limits = limits or Limits()
        self.name = name
        self.stats = stats
        self.lb = lb
        self.targets: tuple[Target, ...] = ()
        self.healthy: tuple[Target, ...] = ()  # targets less the ejected ones
        self.protocol: str | None = None  # the service's protocol in the mesh (None: undeclared)
        self.active: dict[Target, int] = {}  # requests in flight per endpoint (least_request)
        # Whether the router counts requests per endpoint: only least_request reads the counts.
        self.counts_active = lb == "least_request"
        self._next = 0
        self.outlier = OutlierDetector(self, limits)
        self.set_limits(limits)

    def set_limits(self, limits: Limits) -> None:
        """The circuit breakers' thresholds and outlier detection's (at start, and when the
        limits are read again)."""
        stats = self.stats
        stats.cb_max_connections = limits.max_upstream_connections
        stats.cb_max_pending_requests = limits.max_pending_requests
        stats.cb_max_requests = limits.max_requests
        stats.cb_max_retries = limits.max_retries
        self.outlier.set_limits(limits)

    def set_targets(self, targets: Iterable[Target]) -> None:
        targets = tuple(targets)
        if targets != self.targets:
            log.info(
                "event=cluster_updated cluster=%s endpoints=%s",
                self.name,
                ",".join(map(str, targets)) or "-",
            )
        self.targets = targets
        self.outlier.forget_others(targets)
        self.update_healthy()

    def update_healthy(self) -> None:
        ejected = self.outlier.ejected
        self.healthy = tuple(t for t in self.targets if t not in ejected)
        self.stats.membership_total = len(self.targets)
        self.stats.membership_healthy = len(self.healthy)

    def pick(self) -> Target | None:
        """The next endpoint (round robin, or the less loaded of two random ones, as Envoy's
        least_request does) among those not ejected, or among all when every one is (Envoy's
        panic mode); None when the cluster is empty."""
        targets = self.healthy or self.targets
        count = len(targets)
        if count == 1:  # a service of one endpoint, the usual sidecar's app: no choice to make
            self._next = 0  # (where the round robin below would be: it goes on from there)
            return targets[0]
        if not count:
            return None
        if self.lb == "least_request":
            a, b = random.sample(targets, 2)
            return a if self.active.get(a, 0) <= self.active.get(b, 0) else b
        self._next = (self._next + 1) % count
        return targets[self._next]

    def acquire(self, target: Target) -> None:
        self.active[target] = self.active.get(target, 0) + 1

    def release(self, target: Target) -> None:
        left = self.active.get(target, 0) - 1
        if left > 0:
            self.active[target] = left
        else:
            self.active.pop(target, None)


class _EndpointHealth:
    __slots__ = ("failures", "ejections", "ejected_until", "timer", "last_return")

    def __init__(self) -> None:
        self.failures = 0  # consecutive
        self.ejections = 0  # Envoy's ejection multiplier
        self.ejected_until = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.last_return = 0.0


class OutlierDetector:
    """Passive outlier detection, Envoy's consecutive_5xx in its default (non-split) mode: 5xx
    answers and locally seen failures (connect failure, reset or timeout before an answer) of an
    endpoint count together; a success resets the count. An endpoint that reaches the threshold is
    ejected for base × its number of ejections (capped), unless the cluster already has its max
    ejection percent out (at least one endpoint may always be ejected). It returns by itself; the
    multiplier drops by one for each base interval it then stays in."""

    def __init__(self, cluster: Cluster, limits: Limits) -> None:
        self.cluster = cluster
        self.enabled = True  # False: never ejects, whatever the limits say (`disable`)
        self.health: dict[Target, _EndpointHealth] = {}
        self.ejected: set[Target] = set()
        self.set_limits(limits)

    def disable(self) -> None:
        """Never eject, now or after the limits are read again."""
        self.enabled = False
        self.threshold = 0

    def set_limits(self, limits: Limits) -> None:
        """The thresholds; an endpoint's count so far and an ejection under way are kept."""
        self.threshold = limits.outlier_consecutive_5xx if self.enabled else 0
        self.base = limits.outlier_base_ejection_time
        self.max_time = limits.outlier_max_ejection_time
        self.max_percent = limits.outlier_max_ejection_percent

    def success(self, target: Target) -> None:
        health = self.health.get(target)
        if health is not None and health.failures:
            health.failures = 0

    def failure(self, target: Target) -> None:
        if self.threshold <= 0:
            return
        health = self.health.get(target)
        if health is None:
            health = self.health[target] = _EndpointHealth()
        health.failures += 1
        if health.failures >= self.threshold and target not in self.ejected:
            self._eject(target, health)

    def _eject(self, target: Target, health: _EndpointHealth) -> None:
        cluster = self.cluster
        stats = cluster.stats
        allowed = max(1, len(cluster.targets) * self.max_percent // 100)
        if len(self.ejected) >= allowed:
            stats.outlier_detection_ejections_overflow += 1
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if health.ejections:
            # In since it last came back: Envoy lowers the multiplier once per base interval.
            intervals_in = int((now - health.last_return) // self.base)
            health.ejections = max(0, health.ejections - intervals_in)
        health.ejections += 1
        duration = min(self.base * health.ejections, max(self.max_time, self.base))
        health.failures = 0
        health.ejected_until = now + duration
        health.timer = loop.call_later(duration, self._return, target)
        self.ejected.add(target)
        stats.outlier_detection_ejections_active = len(self.ejected)
        stats.outlier_detection_ejections_enforced_total += 1
        stats.outlier_detection_ejections_enforced_consecutive_5xx += 1
        cluster.update_healthy()
        log.warning(
            "event=outlier_ejected cluster=%s endpoint=%s consecutive_failures=%d "
            "ejections=%d for_s=%g",
            cluster.name,
            target,
            self.threshold,
            health.ejections,
            duration,
        )

    def _return(self, target: Target) -> None:
        health = self.health.get(target)
        if health is not None:
            health.timer = None
            health.failures = 0
            health.last_return = asyncio.get_running_loop().time()
        if target in self.ejected:
            self.ejected.discard(target)
            self.cluster.stats.outlier_detection_ejections_active = len(self.ejected)
            self.cluster.update_healthy()
            log.info(
                "event=outlier_returned cluster=%s endpoint=%s",
                self.cluster.name,
                target,
            )

    def forget_others(self, targets: Iterable[Target]) -> None:
        """Endpoints that left the cluster take their state with them."""
        keep = set(targets)
        for key in [k for k in self.health if k not in keep]:
            health = self.health.pop(key)
            if health.timer is not None:
                health.timer.cancel()
        if self.ejected - keep:
            self.ejected &= keep
            self.cluster.stats.outlier_detection_ejections_active = len(self.ejected)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# host → its addresses; raises OSError (or UnicodeError) when the name does not resolve.
Lookup = Callable[[str], Awaitable[Iterable[str]]]


async def system_lookup(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Resolver:
    """Resolves endpoint host names, keeping the last good addresses when a lookup fails.

    `lookup` is the system resolver unless given (tests inject one that fails on demand)."""

    def __init__(self, lookup: Lookup | None = None) -> None:
        self._cache: dict[str, tuple[str, ...]] = {}
        self.lookup = lookup or system_lookup
        self.failures = 0  # lookups that failed, for tests and logs
        self._failing: set[str] = set()  # names whose last lookup failed: logged once

    def cached(self, host: str) -> tuple[str, ...]:
        if is_ip(host):
            return (host,)
        return self._cache.get(host, ())

    async def refresh(self, hosts: Iterable[str]) -> bool:
        """Look up every name again; True when any answer changed."""
        changed = False
        for host in {h for h in hosts if not is_ip(h)}:
            try:
                found = await self.lookup(host)
            except (OSError, UnicodeError) as exc:
                self.failures += 1
                if host not in self._failing:  # once per outage, not once per refresh
                    self._failing.add(host)
                    log.warning(
                        "event=dns_failed host=%s error=%r kept=%s",
                        host,
                        str(exc),
                        ",".join(self._cache.get(host, ())) or "-",
                    )
                continue
            addresses = tuple(sorted(set(found)))
            if not addresses:
                continue  # an empty answer is no better than a failed one: keep the last good
            if host in self._failing:
                self._failing.discard(host)
                log.info("event=dns_recovered host=%s addresses=%s", host, ",".join(addresses))
            if self._cache.get(host) != addresses:
                self._cache[host] = addresses
                changed = True
        return changed

    def targets(self, endpoints: Iterable[Endpoint]) -> list[Target]:
        return [
            Target(address, ep.port, ep) for ep in endpoints for address in self.cached(ep.address)
        ]
