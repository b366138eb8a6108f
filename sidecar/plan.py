"""What to run: the listeners a Dataplane asks for. A pure function of config.

A reload computes a new plan and the runtime applies the difference, keyed by bind address and
port: a listener whose plan is unchanged keeps its socket and its connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sidecar import defaults
from sidecar.config import model


@dataclass(frozen=True)
class ListenerPlan:
    name: str  # Envoy's listener name: inbound:<ip>:<port> / outbound:<ip>:<port>
    direction: str  # "inbound" | "outbound"
    address: str
    port: int
    cluster: str  # localhost:<servicePort> for an inbound, the service (and subset) for an outbound
    service: str  # kuma.io/service: the inbound's own, or the outbound's destination
    protocol: str | None  # an inbound's declared protocol; None: undeclared, or an outbound
    # (whose protocol follows its endpoints in the mesh)
    selector: Mapping[str, str] | None = None  # outbound: tags an endpoint must carry
    target: tuple[str, int] | None = None  # inbound: the local app
    connect_timeout: float = defaults.OUTBOUND_CONNECT_TIMEOUT
    idle_timeout: float = defaults.OUTBOUND_IDLE_TIMEOUT
    connect_attempts: int = defaults.TCP_CONNECT_ATTEMPTS
    request_timeout: float = defaults.OUTBOUND_REQUEST_TIMEOUT
    stream_idle_timeout: float = defaults.OUTBOUND_STREAM_IDLE_TIMEOUT

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def stat_address(self) -> str:
        """envoy_listener_address / envoy_tcp_prefix form of the address: `127.0.0.1_10000`."""
        return f"{self.address}_{self.port}"


def outbound_cluster_name(outbound: model.Outbound) -> str:
    """The service name; a subset (extra tags) gets them appended, sorted, as `svc_key_value`."""
    extra = sorted((k, v) for k, v in outbound.selector.items() if k != model.SERVICE_TAG)
    return "_".join([outbound.service, *(f"{k}_{v}" for k, v in extra)])


@dataclass(frozen=True)
class Timeouts:
    """HTTP timeouts that the command line may override (Kuma sets them with MeshTimeout)."""

    request: float = defaults.OUTBOUND_REQUEST_TIMEOUT  # outbound; the inbound has none
    stream_idle: float | None = None  # --stream-idle-timeout: both directions; None: these two
    inbound_stream_idle: float = defaults.INBOUND_STREAM_IDLE_TIMEOUT
    outbound_stream_idle: float = defaults.OUTBOUND_STREAM_IDLE_TIMEOUT

    def stream_idle_for(self, direction: str) -> float:
        if self.stream_idle is not None:
            return self.stream_idle
        return self.inbound_stream_idle if direction == "inbound" else self.outbound_stream_idle


def plan_listeners(
    dataplane: model.Dataplane, timeouts: Timeouts = Timeouts()
) -> dict[tuple[str, int], ListenerPlan]:
    plans: list[ListenerPlan] = []
    for inbound in dataplane.networking.inbound:
        plans.append(
            ListenerPlan(
                name=f"inbound:{inbound.address}:{inbound.port}",
                direction="inbound",
                address=inbound.address,
                port=inbound.port,
                cluster=f"localhost:{inbound.service_port}",
                service=inbound.service,
                protocol=inbound.declared_protocol,
                target=(inbound.service_address, inbound.service_port),
                connect_timeout=defaults.INBOUND_CONNECT_TIMEOUT,
                idle_timeout=defaults.INBOUND_IDLE_TIMEOUT,
                connect_attempts=1,
                request_timeout=defaults.INBOUND_REQUEST_TIMEOUT,
                stream_idle_timeout=timeouts.stream_idle_for("inbound"),
            )
        )
    for outbound in dataplane.networking.outbound:
        plans.append(
            ListenerPlan(
                name=f"outbound:{outbound.address}:{outbound.port}",
                direction="outbound",
                address=outbound.address,
                port=outbound.port,
                cluster=outbound_cluster_name(outbound),
                service=outbound.service,
                protocol=None,
                selector=outbound.selector,
                request_timeout=timeouts.request,
                stream_idle_timeout=timeouts.stream_idle_for("outbound"),
            )
        )
    return {p.key: p for p in plans}
