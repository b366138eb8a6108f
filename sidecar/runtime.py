"""The runtime of one sidecar: bind what the plan asks for, keep clusters current, reload, drain.

It owns the lifecycle and nothing else: which bytes go where is the data path's business
(`sidecar.transport`), what to run is the plan's (`sidecar.plan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sidecar import defaults
from sidecar.addresses import host_port
from sidecar.cluster import Cluster, Resolver, Target
from sidecar.config import model
from sidecar.config.dataplane import ConfigError, load_dataplane
from sidecar.config.mesh import MeshDirectory
from sidecar.dns.server import DnsProxy
from sidecar.dns.table import dns_table
from sidecar.dns.upstreams import Upstream, upstreams_from_resolv_conf
from sidecar.http.pool import H2Pool, plain_connector
from sidecar.identity.mesh import MeshListener, MeshSecurity, MtlsOptions
from sidecar.inbound import InboundStack
from sidecar.limits import Limits, LimitsError, load_limits, settings_line
from sidecar.listener import ListenerStack, StackOptions
from sidecar.observe.observability import Observability
from sidecar.observe.stats import StatsStore
from sidecar.outbound import OutboundStack, mesh_pool
from sidecar.plan import ListenerPlan, Timeouts, plan_listeners, redirects_ipv6
from sidecar.policy import POLICY_TYPE
from sidecar.transparent import passthrough
from sidecar.transparent.redirect import Adopt, RedirectStack, Unbound, missing_source_v6
from sidecar.transport.acceptor import Acceptor
from sidecar.transport.connect import Connector
from sidecar.transport.fds import FdGuard, loop_exception_handler
from sidecar.workers import WorkerInfo

log = logging.getLogger("sidecar.runtime")


class BindError(Exception):
    """A listener could not bind; the message names the listener and the address."""


@dataclass
class Options:
    dataplane: Path
    variables: dict[str, str] = field(default_factory=dict)
    mesh_dir: Path | None = None  # default: the Dataplane file's directory
    drain_timeout: float = defaults.DRAIN_TIMEOUT
    poll_interval: float = defaults.MESH_POLL_INTERVAL
    dns_refresh_interval: float = defaults.DNS_REFRESH_INTERVAL
    stack: StackOptions = field(default_factory=StackOptions)  # with the limits
    # Where the limits came from (`--limits FILE`, `--limit NAME=VALUE`): the file is read again
    # on a reload and when it changes.
    limits_file: Path | None = None
    limit_flags: tuple[str, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    lb: str = "round_robin"
    access_log: str | None = None  # a file, or "-" for stdout; None: off
    mtls: MtlsOptions = field(default_factory=MtlsOptions)  # no credentials: plaintext hops
    reuse_port: bool = False  # SO_REUSEPORT on every listener: one of several worker processes
    worker: WorkerInfo | None = None  # --workers: this process's place among them
    # The DNS proxy, run with transparent proxying (sidecar.dns); port 0: off.
    dns_port: int = defaults.DNS_PORT
    dns_upstreams: tuple[Upstream, ...] = ()  # none: /etc/resolv.conf's nameservers


@dataclass
class RunningListener:
    plan: ListenerPlan
    server: asyncio.Server | MeshListener | Acceptor | Unbound
    stack: ListenerStack
    # Serves a socket accepted elsewhere: a redirect listener's connection meant for this one.
    adopt: Adopt


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Sidecar:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.limits = options.stack.limits
        self.fds = FdGuard(self.limits.fd_reserve)
        self.stack_options = dataclasses.replace(options.stack, fds=self.fds)
        self.stats = StatsStore()
        self.resolver = Resolver()
        self.listeners: dict[tuple[str, int], RunningListener] = {}
        self.clusters: dict[str, Cluster] = {}
        self.mesh_pools: dict[str, H2Pool] = {}
        self.dataplane: model.Dataplane | None = None
        self.mesh: MeshDirectory | None = None
        self.security: MeshSecurity | None = None  # mesh mTLS, when there are credentials
        self.dns: DnsProxy | None = None  # with transparent proxying
        self.draining = False
        self._dataplane_signature: tuple[int, int, int] | None = None
        self._limits_signature = _signature(options.limits_file) if options.limits_file else None
        self._tasks: list[asyncio.Task[None]] = []
        self._policies_ignored_logged = False
        # What the app may reach outside the mesh (transparent proxying), worked out again when
        # the mesh directory or the Dataplane changes, not per connection.
        self.passthrough_policies = passthrough.passthrough_policies()
        self.passthrough = passthrough.MESH_ALLOWS
        self.observability = Observability(self)  # admin, metrics, probes, access log

    # -- start and reload ------------------------------------------------------------------

    async def start(self) -> None:
        """Load, bind every listener, start watching.

        Raises ConfigError, BindError, or CredentialsError (naming the credential file at fault).
        """
        path = self.options.dataplane
        self._dataplane_signature = _signature(path)
        self.dataplane = load_dataplane(path, self.options.variables)
        if self.options.mtls.enabled:
            self.security = MeshSecurity.create(self._mtls_options(), self.dataplane)
            self.stats.server.days_until_first_cert_expiring = (
                self.security.store.days_until_first_expiring()
            )
        tp = self.dataplane.networking.transparent_proxying
        if tp is not None and redirects_ipv6(tp) and (error := missing_source_v6()) is not None:
            log.warning(
                "event=transparent_source_missing address=%s error=%r fix=%r reason=%r",
                defaults.TRANSPARENT_SOURCE_ADDRESS_V6,
                error,
                f"ip -6 addr add {defaults.TRANSPARENT_SOURCE_ADDRESS_V6}/128 dev lo",
                "connections to an app on an IPv6 address leave from it, and will fail",
            )
        mesh_dir = self.options.mesh_dir or path.resolve().parent
        self.mesh = MeshDirectory(mesh_dir, self.dataplane.mesh)
        self.mesh.scan()
        self._update_policies()
        await self.resolver.refresh(self._endpoint_hosts())
        try:
            await self._apply(plan_listeners(self.dataplane, self.options.timeouts), strict=True)
            await self._update_dns(strict=True)
            await self.observability.start()
        except BindError:
            await self.stop_listeners()
            self._stop_dns()
            raise
        self._tasks.append(asyncio.create_task(self._watch()))
        self._tasks.append(asyncio.create_task(self._refresh_dns()))
        self._tasks.append(asyncio.create_task(self._sweep()))
        self._tasks.append(asyncio.create_task(self.fds.watch()))
        # asyncio logs every accept that fails for want of descriptors (thousands a second):
        # the guard folds them into one episode, logged once.
        asyncio.get_running_loop().set_exception_handler(loop_exception_handler(self.fds))
        if self.limits.changed():
            log.info("event=limits %s", settings_line(self.limits.changed()))
        if self.security is not None:
            self._tasks.append(self.security.start())
        log.info(
            "event=%s dataplane=%s mesh=%s listeners=%s",
            "ready" if self.options.worker is None else "worker_serving",
            self.dataplane.name,
            self.dataplane.mesh,
            ",".join(lst.plan.name for lst in self.listeners.values()) or "-",
        )

    def _mtls_options(self) -> MtlsOptions:
        """Dev mode with --workers: worker 0 issues and renews the certificate, the others read
        its files (and follow its renewals as any rotation: each worker watches the files)."""
        mtls, worker = self.options.mtls, self.options.worker
        if mtls.ca_key is None or worker is None or worker.primary:
            return mtls
        assert self.dataplane is not None
        ca, cert, key = mtls.paths(self.dataplane.name)
        return dataclasses.replace(mtls, ca=ca, cert=cert, key=key, certs_dir=None, ca_key=None)

    async def reload(self) -> None:
        """Re-read the limits and the Dataplane file and apply only the difference; a bad file
        changes nothing."""
        self.reload_limits()
        try:
            dataplane = load_dataplane(self.options.dataplane, self.options.variables)
        except ConfigError as exc:
            log.error("event=reload_rejected error=%r", str(exc))
            return
        except Exception as exc:  # a reload must never take the running sidecar down
            log.exception("event=reload_rejected error=%r", str(exc))
            return
        self.dataplane = dataplane
        self._update_passthrough()  # its labels and tags select policies
        await self._apply(plan_listeners(dataplane, self.options.timeouts), strict=False)
        await self._update_dns(strict=False)
        await self.observability.reload()
        log.info("event=reloaded dataplane=%s listeners=%d", dataplane.name, len(self.listeners))

    def reload_limits(self) -> None:
        """Read `--limits FILE` again (the `--limit` flags still win over it). New connections,
        requests and pools take the new values, as do the circuit breakers and outlier
        detection; open connections keep those they started with. The stream idle timeouts
        reach the listeners with the Dataplane's re-plan that follows."""
        path = self.options.limits_file
        if path is None:
            return
        self._limits_signature = _signature(path)
        try:
            limits = load_limits(path, self.options.limit_flags)
        except LimitsError as exc:
            log.error("event=limits_rejected error=%r kept=%r", str(exc), "the limits in force")
            return
        changed = limits.changed(since=self.limits)
        if not changed:
            return
        self._set_limits(limits)
        log.info("event=limits_reloaded %s", settings_line(changed))

    def _set_limits(self, limits: Limits) -> None:
        self.limits = limits
        self.fds.reserve = limits.fd_reserve
        self.stack_options = dataclasses.replace(self.stack_options, limits=limits)
        self.options.timeouts = dataclasses.replace(
            self.options.timeouts,
            inbound_stream_idle=limits.inbound_stream_idle_timeout,
            outbound_stream_idle=limits.outbound_stream_idle_timeout,
        )
        for running in self.listeners.values():
            running.stack.reconfigure(self.stack_options)
        for cluster in self.clusters.values():
            cluster.set_limits(limits)
        for pool in self.mesh_pools.values():
            pool.limits = limits

    async def _apply(self, plans: dict[tuple[str, int], ListenerPlan], strict: bool) -> None:
        for key in [k for k in self.listeners if k not in plans]:
            running = self.listeners.pop(key)
            running.server.close()  # open connections live on until they end by themselves
            log.info("event=listener_removed listener=%s", running.plan.name)
        for key, plan in plans.items():
            running = self.listeners.get(key)
            if running is not None and (running.plan.bound, running.plan.redirect) != (
                plan.bound,
                plan.redirect,
            ):
                # Transparent proxying turned on or off: the same address, another kind of server.
                running.server.close()
                del self.listeners[key]
                running = None
            if running is None:
                try:
                    self.listeners[key] = await self._bind(plan)
                except BindError as exc:
                    if strict:
                        raise
                    log.error("event=listener_failed error=%r", str(exc))
                continue
            if running.plan != plan:
                running.plan = plan
                cluster = self._cluster_for(plan)
                if isinstance(running.stack, OutboundStack):
                    running.stack.update(plan, cluster, self._mesh_connector(plan, cluster))
                    running.stack.mesh_pool = self._mesh_pool(plan, cluster)
                else:
                    running.stack.update(plan, cluster)
                log.info("event=listener_updated listener=%s", plan.name)
        self._update_clusters()

    async def _bind(self, plan: ListenerPlan) -> RunningListener:
        stats = self.stats.listener(plan.stat_address, f"{plan.direction}_{plan.stat_address}")
        cluster = self._cluster_for(plan)
        security = self.security
        stack: ListenerStack
        inbound: InboundStack | None = None
        if plan.redirect:
            stack = RedirectStack(
                plan, cluster, stats, self.stack_options, self._redirected, self._passthrough
            )
        elif plan.direction == "inbound":
            inbound = InboundStack(
                plan,
                cluster,
                stats,
                self.stack_options,
                security.authorizer if security is not None else None,
            )
            stack = inbound
        else:
            stack = OutboundStack(
                plan,
                cluster,
                stats,
                self.stack_options,
                lambda: cluster.protocol,
                self._mesh_pool(plan, cluster),
                self._mesh_connector(plan, cluster),
            )
        self.observability.attach(stack.tcp, plan.key)
        stack.http_stats = self.stats.http(f"{plan.direction}_{plan.stat_address}")
        stack.on_request_done = self.observability.request_logger(plan)
        loop = asyncio.get_running_loop()
        server: asyncio.Server | MeshListener | Acceptor | Unbound
        adopt: Adopt = stack.accept_socket
        if plan.selector is not None and self.mesh is not None:
            cluster.protocol = self.mesh.snapshot.service_protocol(plan.service)
        reuse_port = self.options.reuse_port
        try:
            if inbound is not None and security is not None:  # peers reach us over mTLS
                server = await security.listen(
                    inbound,
                    plan.name,
                    plan.address,
                    plan.port,
                    stats,
                    reuse_port=reuse_port,
                    bind=plan.bound,
                )
                adopt = server.adopt
            elif not plan.bound:
                server = Unbound()
            elif plan.redirect or stack.splices():
                # Plain TCP both ways: accept raw sockets for the splice relay (should the
                # protocol change, other connections still get theirs: accept_socket). A redirect
                # listener reads each raw socket's original destination first.
                server = Acceptor.bind(
                    loop,
                    plan.address,
                    plan.port,
                    stack.accept_socket,
                    reuse_port=reuse_port,
                    backlog=1024,
                    failed=stack.accept_failed,
                )
            else:
                server = await loop.create_server(
                    stack,
                    plan.address,
                    plan.port,
                    reuse_address=True,
                    reuse_port=reuse_port or None,
                    backlog=1024,
                )
        except OSError as exc:
            raise BindError(
                f"listener {plan.name}: cannot bind {plan.address}:{plan.port}: "
                f"{exc.strerror or exc}"
            ) from None
        accept = "raw" if isinstance(server, Acceptor) else "transport"
        log.info(
            "event=listener_bound listener=%s cluster=%s accept=%s",
            plan.name,
            plan.cluster,
            accept if plan.bound else "redirected",  # no socket: only what is redirected to it
        )
        return RunningListener(plan, server, stack, adopt)

    async def _update_dns(self, strict: bool) -> None:
        """Run the DNS proxy while the Dataplane asks for transparent proxying, with the names of
        its current outbounds (`sidecar.dns`)."""
        assert self.dataplane is not None
        tp = self.dataplane.networking.transparent_proxying
        if not self.options.dns_port or tp is None:
            self._stop_dns()
            return
        addresses = (defaults.DNS_ADDRESS,)
        if redirects_ipv6(tp):  # where ip6tables' REDIRECT sends the app's queries
            addresses += (defaults.DNS_ADDRESS_V6,)
        table = dns_table(self.dataplane)
        if self.dns is not None and self.dns.addresses == addresses:
            self.dns.table = table
            return
        self._stop_dns()
        upstreams = self.options.dns_upstreams or upstreams_from_resolv_conf()
        dns = DnsProxy(table, upstreams, self.stats.dns(defaults.DNS_STAT_PREFIX))
        port = self.options.dns_port
        try:
            await dns.start(addresses, port, reuse_port=self.options.reuse_port)
        except OSError as exc:
            where = " and ".join(host_port(a, port) for a in addresses)
            error = f"DNS proxy: cannot bind {where}: {exc.strerror or exc}"
            if strict:
                raise BindError(error) from None
            log.error("event=dns_failed error=%r", error)
            return
        self.dns = dns
        log.info(
            "event=dns_bound address=%s names=%d upstreams=%s",
            ",".join(host_port(a, dns.port) for a in addresses),
            len(table.names),
            ",".join(host_port(h, p) for h, p in upstreams),
        )

    def _stop_dns(self) -> None:
        if self.dns is not None:
            self.dns.close()
            self.dns = None

    def _passthrough(self) -> passthrough.Passthrough:
        """What the mesh lets the app reach outside it (`_update_passthrough`)."""
        return self.passthrough

    def _redirected(self, redirect: ListenerPlan, destination: tuple[str, int]) -> Adopt | None:
        """The listener a redirect listener's connection is meant for (`sidecar.transparent`):
        the outbound at its original address and port, or the inbound on its port."""
        if redirect.direction == "outbound":
            running = self.listeners.get(destination)  # keyed by the kernel's spelling
            if running is not None and running.plan.direction == "outbound":
                return running.adopt
            return None
        port = destination[1]
        for running in self.listeners.values():
            plan = running.plan
            if plan.direction == "inbound" and not plan.redirect and plan.port == port:
                return running.adopt
        return None

    # -- clusters --------------------------------------------------------------------------

    def _cluster_for(self, plan: ListenerPlan) -> Cluster:
        cluster = self.clusters.get(plan.cluster)
        if cluster is None:
            stat_name = plan.cluster.replace(":", "_")
            cluster = self.clusters[plan.cluster] = Cluster(
                plan.cluster, self.stats.cluster(stat_name), self.options.lb, self.limits
            )
        return cluster

    def _mesh_connector(self, plan: ListenerPlan, cluster: Cluster) -> Connector:
        """How an outbound reaches its service's sidecars: mTLS with credentials, else TCP."""
        if self.security is None:
            return plain_connector(plan.connect_timeout, cluster.stats)
        extra = {k: v for k, v in (plan.selector or {}).items() if k != model.SERVICE_TAG}
        return self.security.connector(plan.service, plan.connect_timeout, cluster.stats, extra)

    def _mesh_pool(self, plan: ListenerPlan, cluster: Cluster) -> H2Pool:
        pool = self.mesh_pools.get(cluster.name)
        if pool is None:
            pool = self.mesh_pools[cluster.name] = mesh_pool(
                self._mesh_connector(plan, cluster),
                trusted=self.security is not None,
                stats=cluster.stats,
                limits=self.limits,
            )
            if self.options.worker is not None:  # the peers have workers too: spread over them
                pool.spread = self.options.worker.count
        return pool

    def _update_policies(self) -> None:
        """Policies from the mesh directory: MeshPassthrough, and MeshTrafficPermission (they
        need identities, so mTLS)."""
        assert self.mesh is not None
        self._update_passthrough()
        documents = self.mesh.snapshot.documents_of_kind(POLICY_TYPE)
        if self.security is not None:
            self.security.authorizer.update(documents)
        elif documents and not self._policies_ignored_logged:
            self._policies_ignored_logged = True
            log.warning(
                "event=policies_ignored kind=%s count=%d reason=%r",
                POLICY_TYPE,
                len(documents),
                "mTLS is off (no mesh credentials): callers have no identity to authorize",
            )

    def _update_passthrough(self) -> None:
        """The MeshPassthrough policies that select this sidecar, merged, or the Mesh's switch
        where none does (`sidecar.transparent.passthrough`)."""
        assert self.mesh is not None and self.dataplane is not None
        snapshot = self.mesh.snapshot
        self.passthrough_policies.update(snapshot.documents_of_kind(passthrough.POLICY_TYPE))
        found = passthrough.in_force(self.passthrough_policies.policies, self.dataplane)
        if found is None:
            found = passthrough.MESH_ALLOWS if snapshot.passthrough else passthrough.MESH_FORBIDS
        if found != self.passthrough:
            log.info(
                "event=passthrough_changed mode=%s matches=%s policies=%s",
                found.mode,
                ",".join(map(str, found.matches)) or "-",
                ",".join(found.policies) or "-",
            )
        self.passthrough = found

    def _update_clusters(self) -> None:
        assert self.mesh is not None
        snapshot = self.mesh.snapshot
        for running in self.listeners.values():
            plan = running.plan
            if plan.redirect:
                continue  # passthrough: each connection's own destination, no endpoints
            cluster = self._cluster_for(plan)
            if plan.target is not None:
                cluster.set_targets([Target(*plan.target)])
            else:
                assert plan.selector is not None
                cluster.set_targets(self.resolver.targets(snapshot.endpoints(plan.selector)))
                cluster.protocol = snapshot.service_protocol(plan.service)

    def _endpoint_hosts(self) -> set[str]:
        assert self.mesh is not None
        return {
            member.networking.advertised_address or inbound.address
            for member in self.mesh.snapshot.members
            for inbound in member.networking.inbound
        }

    # -- watching --------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Poll the Dataplane file, the limits file and the mesh directory (changes apply within
        a second)."""
        assert self.mesh is not None
        while True:
            await asyncio.sleep(self.options.poll_interval)
            try:
                signature = _signature(self.options.dataplane)
                limits_file = self.options.limits_file
                if signature != self._dataplane_signature or (
                    limits_file is not None and _signature(limits_file) != self._limits_signature
                ):
                    self._dataplane_signature = signature
                    await self.reload()  # reads the limits file again too
                if self.security is not None:
                    self.stats.server.days_until_first_cert_expiring = (
                        self.security.store.days_until_first_expiring()
                    )
                if self.mesh.scan():
                    self._update_policies()
                    await self.resolver.refresh(self._endpoint_hosts())
                    self._update_clusters()
            except Exception:  # a watcher that dies silently would freeze the mesh view
                log.exception("event=watch_failed")

    async def _sweep(self) -> None:
        """The HTTP connections' timeouts (request headers, idle; the pools' upstream idle),
        checked a few times per the shortest of them by one task rather than a timer per
        connection."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.limits.sweep_interval())
            now = loop.time()
            for running in list(self.listeners.values()):
                try:
                    running.stack.sweep(now)
                except Exception:  # one bad connection must not stop the checks
                    log.exception("event=sweep_failed listener=%s", running.plan.name)
            for name, pool in list(self.mesh_pools.items()):
                try:
                    pool.sweep(now)
                except Exception:
                    log.exception("event=sweep_failed cluster=%s", name)

    async def _refresh_dns(self) -> None:
        while True:
            await asyncio.sleep(self.options.dns_refresh_interval)
            if await self.resolver.refresh(self._endpoint_hosts()):
                self._update_clusters()

    # -- stop ------------------------------------------------------------------------------

    async def stop_listeners(self) -> None:
        for running in self.listeners.values():
            running.server.close()

    def active_connections(self) -> int:
        return sum(r.stack.active for r in self.listeners.values())

    async def drain(self) -> None:
        """Stop accepting, let open connections finish up to the drain timeout, then close them."""
        self.draining = True
        self.observability.draining()  # /ready fails, every inbound reported not ready
        for task in self._tasks:
            task.cancel()
        await self.stop_listeners()
        stacks = [r.stack for r in self.listeners.values()]
        for stack in stacks:
            stack.drain()
        log.info(
            "event=draining connections=%d timeout=%s",
            self.active_connections(),
            self.options.drain_timeout,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.drain_timeout
        while any(s.active for s in stacks) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = sum(s.active for s in stacks)
        for stack in stacks:
            stack.close_all()
        for pool in self.mesh_pools.values():
            pool.close()
        log.info("event=drained closed_at_deadline=%d", left)
        self._stop_dns()  # the app may look names up until its connections are done
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.observability.stop()
