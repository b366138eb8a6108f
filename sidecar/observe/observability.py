"""Everything that watches a running sidecar, started and stopped with it as one object.

The runtime calls five hooks and nothing else: `start()` (after the listeners are bound),
`attach(tcp_proxy, key)` (for every listener it binds), `reload()` (after a Dataplane reload),
`draining()` (when a drain starts) and `stop()` (when it ends). From there this object runs:

- the admin API on 127.0.0.1:`networking.admin.port` (sidecar.observe.admin);
- `/ready` alone on `networking.address`:`networking.admin.port`, as Kuma's admin listener serves
  it there in plaintext (every other path gets 404); not when that address is 127.0.0.1, where
  the admin itself listens;
- the metrics endpoint on `networking.address`:`metrics.conf.port``metrics.conf.path` when the
  Dataplane has `metrics`; that server also answers `/ready`;
- the virtual probes on `probes.port` when the Dataplane has `probes`, and the service probes;
- the health document that tells the other members which inbounds are ready;
- the access log and the Kafka tap, through the TCP proxies' hooks.

It reads the runtime's state (listeners, clusters, mesh snapshot, stats) and never changes how
traffic flows, except through the health it publishes and the admin mutations Envoy also offers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar import defaults
from sidecar.addresses import canonical, host_port
from sidecar.config import model
from sidecar.config.mesh import selects
from sidecar.observe import aggregate, metrics
from sidecar.observe.accesslog import AccessLog
from sidecar.observe.httpserver import HttpServer, Request, Response, text
from sidecar.observe.kafkatap import KafkaTap
from sidecar.observe.probes import HealthReporter, ServiceProbe, VirtualProbes
from sidecar.observe.stats import StatsStore
from sidecar.observe.workerview import WorkerView
from sidecar.plan import ListenerPlan

if TYPE_CHECKING:
    from sidecar.http.accounting import RequestRecord
    from sidecar.http.exchange import RequestHead
    from sidecar.runtime import Sidecar
    from sidecar.transport.relay import Relay
    from sidecar.transport.tcp import TcpProxy

log = logging.getLogger("sidecar.observe")


def stat_name(cluster: str) -> str:
    """Envoy's stat form of a cluster name: `localhost:8080` → `localhost_8080`."""
    return cluster.replace(":", "_")


@dataclass(frozen=True)
class Host:
    """One endpoint of a cluster as /clusters shows it."""

    address: str
    port: int
    healthy: bool
    flags: str  # Envoy's health_flags: "healthy", "/failed_active_hc", "/failed_eds_health"
    zone: str = ""

    def __str__(self) -> str:
        return host_port(self.address, self.port)


class Observability:
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.started_wall = time.time()
        self._started = time.monotonic()
        self.hc_failed = False  # POST /healthcheck/fail
        # POST /drain_listeners: the inbounds are listed not ready in the health document (their
        # listeners close); /ready does not change, as in Envoy.
        self.listeners_drained = False
        self._drain_period: asyncio.Task[None] | None = None  # a graceful /drain_listeners
        self.admin = HttpServer("admin", self._admin_handler())
        self.ready_server: HttpServer | None = None  # /ready on networking.address:admin port
        self._ready_conf: tuple[str, int] | None = None
        self.metrics_server: HttpServer | None = None
        self._metrics_conf: tuple[str, int, str] | None = None
        self.probes_server: HttpServer | None = None
        self._probes_conf: tuple[str, int, model.Probes] | None = None
        self.service_probes: dict[int, ServiceProbe] = {}
        self.health: HealthReporter | None = None
        self.access_log: AccessLog | None = None
        self.closed_by_host: dict[str, dict[str, int]] = {}  # cluster → host → ended connections
        self.used: set[str] = set()  # stats seen used at some read: Envoy's sticky flag (usedonly)
        # --workers: worker 0 serves everything for the whole sidecar, the others only answer it.
        info = getattr(sidecar.options, "worker", None)
        self.workers = WorkerView(self, info) if info is not None else None

    @property
    def primary(self) -> bool:
        """This process serves admin, metrics, probes and health (always, but with --workers)."""
        return self.workers is None or self.workers.primary

    def _admin_handler(self) -> Callable[[Request], Any]:
        from sidecar.observe.admin import Admin

        return Admin(self).handle

    # -- lifecycle (called by the runtime) ---------------------------------------------------

    async def start(self) -> None:
        """Bind admin, metrics and probes; publish health. Raises BindError naming the listener."""
        from sidecar.runtime import BindError

        dataplane = self._dataplane
        target = getattr(self.sidecar.options, "access_log", None)
        if target:
            try:
                self.access_log = AccessLog(target)
            except OSError as exc:
                reason = exc.strerror or exc
                raise BindError(f"access log {target}: cannot open: {reason}") from None
            for running in self.sidecar.listeners.values():  # bound before the log was open
                running.stack.on_request_done = self.request_logger(running.plan)
        if self.workers is not None:
            await self.workers.start()
            if not self.primary:
                return
        try:
            await self._bind(
                self.admin, "admin", defaults.ADMIN_ADDRESS, dataplane.networking.admin_port
            )
            await self._configure(strict=True)
        except Exception:
            await self.stop()
            raise
        ready_at = host_port(*self._ready_conf) if self._ready_conf else "-"
        metrics_at = "{}:{}{}".format(*self._metrics_conf) if self._metrics_conf else "-"
        probes_at = "{}:{}".format(*self._probes_conf[:2]) if self._probes_conf else "-"
        log.info(
            "event=admin_ready admin=%s:%d ready=%s metrics=%s probes=%s access_log=%s",
            defaults.ADMIN_ADDRESS,
            self.admin.port,
            ready_at,
            metrics_at,
            probes_at,
            self.access_log.target if self.access_log else "-",
        )

    async def reload(self) -> None:
        """The Dataplane changed: follow its metrics, probes and service probes."""
        if self.primary:
            await self._configure(strict=False)

    def draining(self) -> None:
        """A drain started: every inbound goes unhealthy for the other members (Kuma's drain)."""
        self.publish_health()

    async def stop(self) -> None:
        if self._drain_period is not None:
            self._drain_period.cancel()
        if self.workers is not None:
            await self.workers.stop()
        for probe in self.service_probes.values():
            probe.stop()
        self.service_probes.clear()
        for server in (self.ready_server, self.metrics_server, self.probes_server, self.admin):
            if server is not None:
                await server.close()
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None

    # -- state Envoy's admin shows -----------------------------------------------------------

    @property
    def _dataplane(self) -> model.Dataplane:
        assert self.sidecar.dataplane is not None
        return self.sidecar.dataplane

    @property
    def live(self) -> bool:
        """/ready: false during the SIGTERM drain (Kuma's kuma-dp fails the health check then)
        and after /healthcheck/fail; as in Envoy, /drain_listeners leaves it as it is."""
        return not (self.sidecar.draining or self.hc_failed)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started

    def refresh(self) -> None:
        """Bring the values computed on read (server, membership) up to date before a read."""
        server = self.sidecar.stats.server
        server.live = 1 if self.live else 0
        server.state = 0 if self.live else 1
        server.uptime = int(self.uptime)
        server.memory_allocated, server.memory_heap_size = _memory()
        server.total_connections = self.sidecar.active_connections()
        security = getattr(self.sidecar, "security", None)  # mesh mTLS, when it is on
        if security is not None:
            server.days_until_first_cert_expiring = security.store.days_until_first_expiring()
            server.seconds_until_first_cert_expiring = security.store.seconds_until_first_expiring()
        self._count_open_connections()
        for name, cluster in self.sidecar.clusters.items():
            hosts = self.hosts(name)
            cluster.stats.membership_total = len(hosts)
            cluster.stats.membership_healthy = sum(h.healthy for h in hosts)

    def _count_open_connections(self) -> None:
        stats = self.sidecar.stats
        for lst in stats.listeners.values():
            lst.open_rx_bytes = lst.open_tx_bytes = 0
        for cst in stats.clusters.values():
            cst.open_rx_bytes = cst.open_tx_bytes = 0
        for running in self.sidecar.listeners.values():
            # Open connections of every kind (relays and HTTP), as the stack counts them.
            running.stack.stats.downstream_cx_active = running.stack.active
            proxy = running.stack.tcp
            lst, cst = proxy.stats, proxy.cluster.stats
            for relay in proxy.relays:
                down, up = relay.downstream.rx_bytes, relay.upstream.rx_bytes
                lst.open_rx_bytes += down
                lst.open_tx_bytes += up
                if relay.target is not None and relay.linked:
                    cst.open_rx_bytes += up
                    cst.open_tx_bytes += down
        # The HTTP pools' open upstream connections, each counting its own bytes as a relay does.
        for _, pool in self._http_pools():
            cst = pool.stats
            if cst is not None:
                rx, tx = pool.open_bytes()
                cst.open_rx_bytes += rx
                cst.open_tx_bytes += tx

    def _http_pools(self) -> list[tuple[str, Any]]:
        """Every HTTP upstream pool (H1Pool, H2Pool) with its cluster's name: the mesh pools,
        HTTP/2 to the peer sidecars, and each inbound's, HTTP/1.1 and h2c to its app."""
        pools: list[tuple[str, Any]] = [*self.sidecar.mesh_pools.items()]
        for running in self.sidecar.listeners.values():
            pools.extend((running.plan.cluster, pool) for pool in running.stack.upstream_pools())
        return pools

    def samples(self, query: dict[str, str]) -> list[metrics.Sample]:
        """The samples a /stats query asks for; raises ValueError for a bad `filter` regex."""
        import re

        self.refresh()
        pattern = None
        if query.get("filter"):
            try:
                pattern = re.compile(query["filter"])
            except re.error as exc:
                raise ValueError(f"invalid regex in filter: {exc}") from None
        return metrics.select(
            self.store(), usedonly="usedonly" in query, pattern=pattern, used=self.used
        )

    async def collect(self) -> None:
        """Before a read of stats: with --workers, fetch every other worker's (see `store`)."""
        if self.workers is not None and self.workers.primary:
            await self.workers.collect()

    def store(self) -> StatsStore:
        """The stats to show, refreshed: this process's, or with --workers the sum over every
        worker as of the last `collect`."""
        if self.workers is not None and self.workers.primary:
            return self.workers.merged(self.sidecar.stats)
        return self.sidecar.stats

    def local_host_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """cluster → endpoint → open (`cx_active`) and all (`cx_total`) relayed connections."""
        active: dict[str, dict[str, int]] = {}
        for running in self.sidecar.listeners.values():
            per_host = active.setdefault(running.plan.cluster, {})
            for relay in running.stack.tcp.relays:
                if relay.target is not None and relay.linked:
                    key = str(relay.target)
                    per_host[key] = per_host.get(key, 0) + 1
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for cluster in set(active) | set(self.closed_by_host):
            now, ended = active.get(cluster, {}), self.closed_by_host.get(cluster, {})
            counts[cluster] = {
                h: {"cx_active": now.get(h, 0), "cx_total": now.get(h, 0) + ended.get(h, 0)}
                for h in set(now) | set(ended)
            }
        # The HTTP pools' connections and requests, per endpoint.
        for cluster, pool in self._http_pools():
            into = counts.setdefault(cluster, {})
            for host, values in pool.host_counts().items():
                aggregate.add_counts(into.setdefault(host, {}), values)
        return counts

    def host_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """`local_host_counts`, summed over the workers as of the last `collect`."""
        local = self.local_host_counts()
        if self.workers is not None and self.workers.primary:
            return self.workers.host_counts(local)
        return local

    def plans(self) -> list[ListenerPlan]:
        return [running.plan for running in self.sidecar.listeners.values()]

    def protocol_of(self, plan: ListenerPlan) -> str:
        """The listener's protocol: an inbound's declared one, an outbound's service protocol
        (from its endpoints in the mesh); `auto` when undeclared (the stack sniffs)."""
        if plan.direction == "inbound":
            return plan.protocol or "auto"
        cluster = self.sidecar.clusters.get(plan.cluster)
        return (cluster.protocol if cluster is not None else None) or "auto"

    def hosts(self, cluster_name: str) -> list[Host]:
        """A cluster's endpoints with their health, the way /clusters and membership show them."""
        cluster = self.sidecar.clusters.get(cluster_name)
        if cluster is None:
            return []
        plan = next((p for p in self.plans() if p.cluster == cluster_name), None)
        ejected = cluster.outlier.ejected  # passive outlier detection: Envoy's flag for them
        if plan is not None and plan.direction == "inbound":
            probe = self.service_probes.get(plan.port)
            ok = probe is None or probe.healthy
            return [
                Host(
                    t.host,
                    t.port,
                    ok and t not in ejected,
                    ("" if ok else "/failed_active_hc")
                    + ("/failed_outlier_check" if t in ejected else "")
                    or "healthy",
                )
                for t in cluster.targets
            ]
        hosts = [
            Host(
                t.host,
                t.port,
                t not in ejected,
                "/failed_outlier_check" if t in ejected else "healthy",
                t.endpoint.tags.get(model.ZONE_TAG, "") if t.endpoint else "",
            )
            for t in cluster.targets
        ]
        mesh = self.sidecar.mesh
        if plan is None or plan.selector is None or mesh is None:
            return hosts
        # Endpoints the mesh knows but leaves out: not ready in their Dataplane or health document.
        snapshot = mesh.snapshot
        not_ready = snapshot.not_ready
        for member in snapshot.members:
            net = member.networking
            for inbound in net.inbound:
                if not selects(plan.selector, inbound.tags):
                    continue
                if inbound.serving and (member.name, inbound.port) not in not_ready:
                    continue
                address = net.advertised_address or inbound.address
                hosts.append(Host(address, inbound.port, False, "/failed_eds_health"))
        return hosts

    # -- hooks on the data path --------------------------------------------------------------

    def attach(self, proxy: TcpProxy, key: tuple[str, int]) -> None:
        """Hook a TCP listener's proxy: Kafka tap per connection, access log and counts at close."""
        stats = self.sidecar.stats

        def on_connection(relay: Relay) -> None:
            running = self.sidecar.listeners.get(key)
            if running is None or running.stack.tcp is not proxy:
                return
            if self.protocol_of(running.plan) == "kafka":
                KafkaTap(stats.kafka(stat_name(proxy.cluster.name)), relay)

        def on_close(relay: Relay) -> None:
            try:
                self._connection_closed(proxy, relay)
            except Exception:  # observability must never break the data path
                log.exception("event=access_log_failed listener=%s", proxy.name)

        proxy.on_connection = on_connection
        proxy.on_close = on_close

    def request_logger(self, plan: ListenerPlan) -> Callable[[RequestRecord], None] | None:
        """The L7 path's access-log hook for one listener (None when the log is off). At an
        inbound the source is the caller's verified identity, which the inbound has just put
        in x-forwarded-client-cert (replacing whatever the caller sent)."""
        access_log = self.access_log
        if access_log is None:
            return None
        cluster = plan.cluster
        inbound = plan.direction == "inbound"

        def done(record: RequestRecord) -> None:
            head = record.request
            try:
                access_log.http(
                    start=record.start,
                    method=head.method.decode(errors="replace"),
                    path=head.path.decode(errors="replace") or "-",
                    protocol="HTTP/" + head.http_version.decode(),
                    status=record.status,
                    flags=record.flags,
                    received=record.received,
                    sent=record.sent,
                    duration_ms=record.duration_ms,
                    upstream_time_ms=record.upstream_time_ms,
                    forwarded_for=_header(head, b"x-forwarded-for"),
                    user_agent=_header(head, b"user-agent"),
                    request_id=_header(head, b"x-request-id"),
                    authority=head.authority.decode(errors="replace"),
                    upstream_host=record.upstream_host,
                    downstream=record.downstream,
                    source=_caller(head) if inbound else None,
                    cluster=cluster,
                )
            except Exception:  # observability must never break the data path
                log.exception("event=access_log_failed cluster=%s", cluster)

        return done

    def _connection_closed(self, proxy: TcpProxy, relay: Relay) -> None:
        target = relay.target
        upstream = str(target) if target is not None else None
        if upstream is not None:
            per_host = self.closed_by_host.setdefault(proxy.cluster.name, {})
            per_host[upstream] = per_host.get(upstream, 0) + 1
        if self.access_log is None:
            return
        loop_now = relay.loop.time()
        duration = loop_now - relay.started
        peer = relay.peername
        downstream = f"{peer[0]}:{peer[1]}" if peer else None
        self.access_log.tcp(
            start=time.time() - duration,
            flags=relay.response_flags,
            received=relay.downstream.rx_bytes,
            sent=relay.upstream.rx_bytes,
            duration_ms=int(duration * 1000),
            upstream_host=upstream,
            downstream=downstream,
            source=None,  # the caller's SPIFFE ID once mTLS is in
            cluster=proxy.cluster.name,
        )

    # -- health ------------------------------------------------------------------------------

    def publish_health(self) -> None:
        if self.health is None:
            return
        dataplane = self._dataplane
        live = self.live and not self.listeners_drained
        ready = {}
        for inbound in dataplane.networking.inbound:
            probe = self.service_probes.get(inbound.port)
            ready[inbound.port] = live and (probe is None or probe.healthy)
        self.health.publish(dataplane.mesh, dataplane.name, ready)

    def _probe_changed(self, port: int, healthy: bool) -> None:
        self.publish_health()

    # -- servers -----------------------------------------------------------------------------

    async def _bind(self, server: HttpServer, what: str, host: str | list[str], port: int) -> None:
        from sidecar.runtime import BindError

        try:
            await server.start(host, port)
        except OSError as exc:
            where = ", ".join(
                host_port(h, port) for h in ([host] if isinstance(host, str) else host)
            )
            raise BindError(
                f"listener {what}: cannot bind {where}: {exc.strerror or exc}"
            ) from None

    async def _configure(self, strict: bool) -> None:
        """Start, move or stop the metrics and probes servers and the service probes."""
        dataplane = self._dataplane
        address = dataplane.networking.address
        await self._configure_ready(address, strict)
        metrics_conf = None
        if dataplane.metrics is not None:
            metrics_conf = (address, dataplane.metrics.port, dataplane.metrics.path)
        if metrics_conf != self._metrics_conf:
            if self.metrics_server is not None:
                await self.metrics_server.close()
                self.metrics_server = None
            self._metrics_conf = None
            if metrics_conf is not None:
                server = HttpServer("metrics", self._metrics_handler(metrics_conf[2]))
                if await self._try_bind(server, "metrics", metrics_conf, strict):
                    self.metrics_server, self._metrics_conf = server, metrics_conf
        probes_conf = None
        if dataplane.probes is not None:
            probes_conf = (address, dataplane.probes.port, dataplane.probes)
        if probes_conf != self._probes_conf:
            if self.probes_server is not None:
                await self.probes_server.close()
                self.probes_server = None
            self._probes_conf = None
            if probes_conf is not None:
                server = HttpServer("probes", VirtualProbes(probes_conf[2]).handle)
                if await self._try_bind(server, "probes", probes_conf, strict):
                    self.probes_server, self._probes_conf = server, probes_conf
        self._configure_service_probes(dataplane)
        mesh = self.sidecar.mesh
        if self.health is None and mesh is not None:
            self.health = HealthReporter(Path(mesh.directory))
        self.publish_health()

    async def _configure_ready(self, address: str, strict: bool) -> None:
        """Start, move or stop the /ready listener on networking.address at the admin's port."""
        ready_conf = (address, self.admin.port)
        if ready_conf == self._ready_conf:
            return
        if self.ready_server is not None:
            await self.ready_server.close()
            self.ready_server = None
        self._ready_conf = None
        try:
            hosts = await _hosts_besides_admin(address, self.admin.port)
        except OSError as exc:
            from sidecar.runtime import BindError

            error = BindError(
                f"listener ready: cannot bind {host_port(*ready_conf)}: {exc.strerror or exc}"
            )
            if strict:
                raise error from None
            log.error("event=listener_failed error=%r", str(error))
            return
        if not hosts:  # 127.0.0.1: the admin answers /ready there itself
            return
        server = HttpServer("ready", self._ready_handler)
        if await self._try_bind(server, "ready", (hosts, ready_conf[1]), strict):
            self.ready_server, self._ready_conf = server, ready_conf

    async def _ready_handler(self, request: Request) -> Response:
        if request.path == "/ready":
            return self.ready_response()
        return text(404, f"not found: {request.path} (only /ready is served on this address)\n")

    async def _try_bind(
        self, server: HttpServer, what: str, conf: tuple[Any, ...], strict: bool
    ) -> bool:
        try:
            await self._bind(server, what, conf[0], conf[1])
        except Exception as exc:
            if strict:
                raise
            log.error("event=listener_failed error=%r", str(exc))
            return False
        return True

    def _configure_service_probes(self, dataplane: model.Dataplane) -> None:
        wanted = {i.port: i for i in dataplane.networking.inbound if i.service_probe is not None}
        for port in list(self.service_probes):
            probe = self.service_probes[port]
            if wanted.get(port) != probe.inbound:
                probe.stop()
                del self.service_probes[port]
        for port, inbound in wanted.items():
            if port not in self.service_probes:
                probe = ServiceProbe(inbound, self._probe_changed)
                self.service_probes[port] = probe
                probe.start()

    def _metrics_handler(self, path: str) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            if request.path == path:
                await self.collect()
                return Response(
                    200,
                    metrics.render_prometheus(self.samples(request.query)),
                    content_type=metrics.CONTENT_TYPE,
                )
            if request.path == "/ready":
                return self.ready_response()
            return text(404, f"not found: {request.path} (metrics are at {path})\n")

        return handle

    def ready_response(self) -> Response:
        if self.live:
            return text(200, "LIVE\n")
        return text(503, "DRAINING\n")

    # -- admin mutations ---------------------------------------------------------------------

    def quit(self) -> None:
        """/quitquitquit: stop gracefully, exactly as SIGTERM does (drain, then exit)."""
        log.info("event=quit_requested")
        # With --workers the supervisor stops every worker, this one included.
        os.kill(self.workers.info.parent if self.workers else os.getpid(), signal.SIGTERM)

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.hc_failed = failed
        log.info("event=healthcheck_%s", "failed" if failed else "ok")
        self.publish_health()

    async def drain_listeners(
        self,
        inbound_only: bool,
        graceful: bool = False,
        skip_exit: bool = False,
        broadcast: bool = True,
    ) -> None:
        """/drain_listeners (Envoy's): the listeners (`inbound_only`: the inbound ones) stop
        accepting at once, their open connections living on. `graceful`: first a drain period
        (the drain timeout, Envoy's drain time) in which they still accept, and every HTTP
        connection is told to close (`Connection: close`, GOAWAY), as in the SIGTERM drain; they
        stop accepting when it ends, unless `skip_exit`. /ready does not change (Envoy's does
        not); the health document lists the inbounds not ready, as their listeners close.
        With --workers every worker does (`broadcast`)."""
        chosen = [
            running
            for running in self.sidecar.listeners.values()
            if not inbound_only or running.plan.direction == "inbound"
        ]
        self.listeners_drained = True
        period = self.sidecar.options.drain_timeout
        log.info(
            "event=listeners_drained inbound_only=%s graceful=%s skip_exit=%s period=%s",
            inbound_only,
            graceful,
            skip_exit,
            f"{period:g}s" if graceful else "-",
        )
        if graceful:
            for running in chosen:
                running.stack.drain()
            if self._drain_period is not None:
                self._drain_period.cancel()
            self._drain_period = asyncio.get_running_loop().create_task(
                self._drain_period_ends(chosen, period, close=not skip_exit)
            )
        else:
            for running in chosen:
                running.server.close()
        self.publish_health()
        if broadcast and self.workers is not None:
            await self.workers.broadcast(
                {
                    "op": "drain_listeners",
                    "inbound_only": inbound_only,
                    "graceful": graceful,
                    "skip_exit": skip_exit,
                }
            )

    async def _drain_period_ends(self, chosen: list[Any], period: float, close: bool) -> None:
        """The graceful drain period of /drain_listeners ended: stop accepting (`close`, no
        `skip_exit`), or go on accepting, still draining each connection."""
        await asyncio.sleep(period)
        if close:
            for running in chosen:
                running.server.close()
        log.info("event=drain_period_ended listeners=%d closed=%s", len(chosen), close)


async def _hosts_besides_admin(address: str, port: int) -> list[str]:
    """The addresses `address` stands for (itself when an IP; what a host name resolves to, as
    the metrics server's bind resolves it), less 127.0.0.1, where the admin listens on `port`."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    hosts: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        host = canonical(str(sockaddr[0]))
        if host != defaults.ADMIN_ADDRESS and host not in hosts:
            hosts.append(host)
    return hosts


def _memory() -> tuple[int, int]:
    """(resident, virtual) bytes of this process."""
    try:
        with open("/proc/self/statm") as f:
            size, resident = (int(x) for x in f.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        return resident * page, size * page
    except (OSError, ValueError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return rss, rss


def _header(head: RequestHead, name: bytes) -> str | None:
    value = head.header(name)
    return value.decode(errors="replace") if value is not None else None


def _caller(head: RequestHead) -> str | None:
    xfcc = _header(head, b"x-forwarded-client-cert")
    return xfcc.removeprefix("URI=") if xfcc else None
