"""The admin API, Envoy's paths on 127.0.0.1:`networking.admin.port` (default 9901).

Read-only paths answer any method; the mutations (`/quitquitquit`, `/healthcheck/fail`,
`/healthcheck/ok`, `/drain_listeners`, `/reset_counters`, `/logging`) need POST and answer a GET
with 400, as Envoy does. Output formats follow Envoy's, so scripts written against Envoy's admin
keep working: `/stats` is `name: value` lines (`?format=json|prometheus`, `?filter=<regex>`,
`?usedonly`), `/clusters` is `cluster::host:port::stat::value` lines (`?format=json`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sidecar import __version__, defaults
from sidecar.addresses import host_port
from sidecar.observe import metrics
from sidecar.observe.httpserver import Request, Response, text
from sidecar.observe.stats import ClusterStats

if TYPE_CHECKING:
    from sidecar.observe.observability import Observability

log = logging.getLogger("sidecar.admin")

JSON = "application/json"
# Envoy's circuit-breaker thresholds, as /clusters names them (ClusterStats' `cb_<name>`).
_BREAKERS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
# A host's counts in /clusters, as Envoy names them (those kept here: not rq_success/_error).
_HOST_STATS = ("cx_active", "cx_total", "rq_active", "rq_total")
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")
_PY_LEVEL = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}

Route = Callable[[Request], Awaitable[Response]]


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(doc, indent=2, default=str) + "\n", content_type=JSON)


def plain(doc: Any) -> Any:
    """A model object as JSON-able data (dataclasses, read-only mappings, tuples)."""
    if dataclasses.is_dataclass(doc) and not isinstance(doc, type):
        return {f.name: plain(getattr(doc, f.name)) for f in dataclasses.fields(doc)}
    if isinstance(doc, (Mapping, MappingProxyType)):
        return {str(k): plain(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [plain(v) for v in doc]
    return doc


def _socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


class Admin:
    def __init__(self, observability: Observability) -> None:
        self.obs = observability
        self.sidecar = observability.sidecar
        # path → (handler, mutates, help), as Envoy's /help lists them
        self.routes: dict[str, tuple[Route, bool, str]] = {
            "/": (self.help, False, "Admin home page"),
            "/help": (self.help, False, "print out list of admin commands"),
            "/ready": (self.ready, False, "print server state, return 200 if LIVE, otherwise 503"),
            "/stats": (
                self.stats,
                False,
                "print server stats (?format=json|prometheus, ?filter=<regex>, ?usedonly)",
            ),
            "/stats/prometheus": (self.prometheus, False, "server stats in prometheus format"),
            "/config_dump": (self.config_dump, False, "dump current configuration"),
            "/clusters": (self.clusters, False, "upstream cluster status (?format=json)"),
            "/listeners": (self.listeners, False, "print listener info (?format=json)"),
            "/server_info": (self.server_info, False, "print server version/status information"),
            "/certs": (self.certs, False, "print certs on machine"),
            "/memory": (self.memory, False, "print current allocation/heap usage"),
            "/workers": (self.workers, False, "the worker processes (--workers) and their counts"),
            "/quitquitquit": (self.quit, True, "exit the server (gracefully, as on SIGTERM)"),
            "/healthcheck/fail": (self.hc_fail, True, "cause the server to fail health checks"),
            "/healthcheck/ok": (self.hc_ok, True, "cause the server to pass health checks"),
            "/drain_listeners": (
                self.drain_listeners,
                True,
                "drain listeners (?inboundonly, ?graceful, ?skip_exit)",
            ),
            "/reset_counters": (self.reset_counters, True, "reset all counters to zero"),
            "/logging": (self.logging, True, "query/change logging levels (?level=, ?<logger>=)"),
        }

    async def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        route = self.routes.get(path)
        if route is None:
            return text(404, f"invalid path: {request.path}\n\n" + self._help_text())
        handler, mutates, _ = route
        if mutates and request.method != "POST":
            return text(400, f"Method {request.method} not allowed, POST required.\n")
        return await handler(request)

    # -- read-only ---------------------------------------------------------------------------

    def _help_text(self) -> str:
        lines = ["admin commands are:"]
        for path, (_, mutates, help_) in sorted(self.routes.items()):
            if path != "/":
                lines.append(f"  {path}{' (POST)' if mutates else ''}: {help_}")
        return "\n".join(lines) + "\n"

    async def help(self, request: Request) -> Response:
        return text(200, self._help_text())

    async def ready(self, request: Request) -> Response:
        return self.obs.ready_response()

    async def stats(self, request: Request) -> Response:
        await self.obs.collect()
        try:
            selected = self.obs.samples(request.query)
        except ValueError as exc:
            return text(400, f"{exc}\n")
        fmt = request.query.get("format", "text")
        if fmt == "json":
            return json_response(
                metrics.render_json(selected, request.query.get("histogram_buckets"))
            )
        if fmt == "prometheus":
            return Response(
                200, metrics.render_prometheus(selected), content_type=metrics.CONTENT_TYPE
            )
        if fmt != "text":
            return text(400, f"unsupported format: {fmt} (text, json, prometheus)\n")
        return text(200, metrics.render_text(selected))

    async def prometheus(self, request: Request) -> Response:
        await self.obs.collect()
        try:
            selected = self.obs.samples(request.query)
        except ValueError as exc:
            return text(400, f"{exc}\n")
        return Response(200, metrics.render_prometheus(selected), content_type=metrics.CONTENT_TYPE)

    async def config_dump(self, request: Request) -> Response:
        obs, sidecar = self.obs, self.sidecar
        dataplane = obs._dataplane
        listeners = []
        for running in sidecar.listeners.values():
            plan = running.plan
            listeners.append(
                {
                    "name": plan.name,
                    "active_state": {
                        "listener": {
                            "name": plan.name,
                            "address": _socket_address(plan.address, plan.port),
                            "direction": plan.direction.upper(),
                            "protocol": obs.protocol_of(plan),
                            "cluster": plan.cluster,
                            "stat_prefix": running.stack.stats.tcp_prefix,
                            "listener_address": running.stack.stats.address,
                            "connect_timeout": f"{plan.connect_timeout:g}s",
                            "idle_timeout": f"{plan.idle_timeout:g}s",
                        }
                    },
                }
            )
        clusters, endpoints = [], []
        for name in sidecar.clusters:
            plan = next((p for p in obs.plans() if p.cluster == name), None)
            clusters.append(
                {
                    "cluster": {
                        "name": name,
                        "alt_stat_name": metrics_name(name),
                        "type": "STATIC" if plan and plan.direction == "inbound" else "EDS",
                        "connect_timeout": f"{plan.connect_timeout:g}s" if plan else None,
                        "selector": dict(plan.selector) if plan and plan.selector else None,
                    }
                }
            )
            endpoints.append(
                {
                    "endpoint_config": {
                        "cluster_name": name,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {"address": _socket_address(h.address, h.port)},
                                        "health_status": "HEALTHY" if h.healthy else "UNHEALTHY",
                                        "health_flags": h.flags,
                                    }
                                    for h in obs.hosts(name)
                                ]
                            }
                        ],
                    }
                }
            )
        doc = {
            "configs": [
                {
                    "@type": "type.googleapis.com/pysidecar.DataplaneConfigDump",
                    "source": dataplane.source,
                    "dataplane": plain(dataplane),
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                    "dynamic_listeners": listeners,
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                    "dynamic_active_clusters": clusters,
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                    "dynamic_endpoint_configs": endpoints,
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
                    "dynamic_active_secrets": [],  # certificates (never keys) once mTLS is in
                },
            ]
        }
        return json_response(doc)

    async def clusters(self, request: Request) -> Response:
        obs = self.obs
        await obs.collect()
        host_counts = obs.host_counts()
        if request.query.get("format") == "json":
            statuses = []
            for name in self.sidecar.clusters:
                counts = host_counts.get(name, {})
                statuses.append(
                    {
                        "name": name,
                        "observability_name": metrics_name(name),
                        "added_via_api": True,
                        "host_statuses": [
                            {
                                "address": _socket_address(h.address, h.port),
                                "stats": [
                                    {"name": k, "value": counts.get(str(h), {}).get(k, 0)}
                                    for k in _HOST_STATS
                                ],
                                "health_status": {
                                    "eds_health_status": "UNHEALTHY"
                                    if h.flags == "/failed_eds_health"
                                    else "HEALTHY",
                                    **(
                                        {"failed_active_health_check": True}
                                        if h.flags == "/failed_active_hc"
                                        else {}
                                    ),
                                },
                                "weight": 1,
                                "locality": {"zone": h.zone} if h.zone else {},
                            }
                            for h in obs.hosts(name)
                        ],
                    }
                )
            return json_response({"cluster_statuses": statuses})
        lines = []
        for name, cluster in self.sidecar.clusters.items():
            lines.append(f"{name}::observability_name::{metrics_name(name)}")
            # The circuit breakers in force (the limits); high priority, which Kuma leaves
            # unset, has Envoy's defaults (ClusterStats' own).
            for priority, stats in (("default_priority", cluster.stats),
                                    ("high_priority", ClusterStats)):  # fmt: skip
                for limit in _BREAKERS:
                    lines.append(f"{name}::{priority}::{limit}::{getattr(stats, 'cb_' + limit)}")
            lines.append(f"{name}::added_via_api::true")
            counts = host_counts.get(name, {})
            for h in obs.hosts(name):
                prefix = f"{name}::{h}"
                c = counts.get(str(h), {})
                for stat in _HOST_STATS:
                    lines.append(f"{prefix}::{stat}::{c.get(stat, 0)}")
                lines.append(f"{prefix}::health_flags::{h.flags}")
                lines.append(f"{prefix}::weight::1")
                lines.append(f"{prefix}::region::")
                lines.append(f"{prefix}::zone::{h.zone}")
                lines.append(f"{prefix}::sub_zone::")
                lines.append(f"{prefix}::canary::false")
                lines.append(f"{prefix}::priority::0")
                lines.append(f"{prefix}::success_rate::-1")
        return text(200, "\n".join(lines) + "\n" if lines else "")

    async def listeners(self, request: Request) -> Response:
        plans = self.obs.plans()
        if request.query.get("format") == "json":
            return json_response(
                {
                    "listener_statuses": [
                        {"name": p.name, "local_address": _socket_address(p.address, p.port)}
                        for p in plans
                    ]
                }
            )
        # Envoy's text form: `name::address`, an IPv6 address in brackets
        return text(200, "".join(f"{p.name}::{host_port(p.address, p.port)}\n" for p in plans))

    async def server_info(self, request: Request) -> Response:
        obs = self.obs
        dataplane = obs._dataplane
        uptime = f"{int(obs.uptime)}s"
        services = dataplane.services
        return json_response(
            {
                "version": f"pysidecar/{__version__}",
                "state": "LIVE" if obs.live else "DRAINING",
                "hot_restart_version": "disabled",
                "command_line_options": {
                    "dataplane": str(self.sidecar.options.dataplane),
                    "drain_time": f"{self.sidecar.options.drain_timeout:g}s",
                    "admin_address": f"{defaults.ADMIN_ADDRESS}:{dataplane.networking.admin_port}",
                },
                "node": {
                    "id": f"{dataplane.mesh}.{dataplane.name}",
                    "cluster": services[0] if services else dataplane.name,
                    "metadata": {"mesh": dataplane.mesh, "dataplane": dataplane.name},
                },
                "uptime_current_epoch": uptime,
                "uptime_all_epochs": uptime,
            }
        )

    async def certs(self, request: Request) -> Response:
        security = self.sidecar.security  # mesh mTLS; None: no certificates in use
        if security is None:
            return json_response({"certificates": []})
        return json_response(security.certs_document())

    async def memory(self, request: Request) -> Response:
        await self.obs.collect()
        self.obs.refresh()
        server = self.obs.store().server
        return json_response(
            {
                "allocated": str(server.memory_allocated),
                "heap_size": str(server.memory_heap_size),
                "pageheap_unmapped": "0",
                "pageheap_free": "0",
                "total_thread_cache": "0",
                "total_physical_bytes": str(server.memory_allocated),
            }
        )

    # -- mutations (POST) --------------------------------------------------------------------

    async def quit(self, request: Request) -> Response:
        response = text(200, "OK\n")
        response.after = self.obs.quit
        return response

    async def hc_fail(self, request: Request) -> Response:
        self.obs.set_healthcheck_failed(True)
        return text(200, "OK\n")

    async def hc_ok(self, request: Request) -> Response:
        self.obs.set_healthcheck_failed(False)
        return text(200, "OK\n")

    async def drain_listeners(self, request: Request) -> Response:
        query = request.query
        await self.obs.drain_listeners(
            "inboundonly" in query, graceful="graceful" in query, skip_exit="skip_exit" in query
        )
        return text(200, "OK\n")

    async def reset_counters(self, request: Request) -> Response:
        await self.obs.collect()
        self.obs.samples({})  # what counted since the last read stays used after the reset
        metrics.reset_counters(self.sidecar.stats)
        if self.obs.workers is not None:
            await self.obs.workers.broadcast({"op": "reset_counters"})
            self.obs.workers.retired = type(self.sidecar.stats)()
        return text(200, "OK\n")

    async def workers(self, request: Request) -> Response:
        workers = self.obs.workers
        if workers is None:
            rows = [{"index": 0, "pid": os.getpid(), "state": "serving"}]
        else:
            await self.obs.collect()
            rows = workers.workers()
        return json_response({"workers": rows})

    async def logging(self, request: Request) -> Response:
        error = set_log_levels(request.query)
        if error is not None:
            return error
        if request.query and self.obs.workers is not None:
            await self.obs.workers.broadcast({"op": "logging", "levels": dict(request.query)})
        lines = ["active loggers:"]
        for name, logger in sorted(_loggers().items()):
            lines.append(f"  {name}: {logging.getLevelName(logger.getEffectiveLevel()).lower()}")
        return text(200, "\n".join(lines) + "\n")


def set_log_levels(levels: Mapping[str, str]) -> Response | None:
    """Apply `?level=` / `?<logger>=` settings; an error response for a bad one."""
    loggers = _loggers()
    for key, value in levels.items():
        level = _PY_LEVEL.get(value.lower())
        if level is None:
            return text(400, f"unknown level {value!r}: one of {', '.join(LOG_LEVELS)}\n")
        if key == "level":
            logging.getLogger().setLevel(level)
            for logger in loggers.values():
                logger.setLevel(level)
        elif key in loggers:
            loggers[key].setLevel(level)
        else:
            return text(404, f"unknown logger {key!r}\n")
        log.info("event=log_level logger=%s level=%s", key, value)
    return None


def metrics_name(cluster: str) -> str:
    return cluster.replace(":", "_")


def _loggers() -> dict[str, logging.Logger]:
    loggers = {"sidecar": logging.getLogger("sidecar")}
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("sidecar.") and isinstance(logger, logging.Logger):
            loggers[name] = logger
    return loggers
