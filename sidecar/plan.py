"""What to run: the listeners a Dataplane asks for. A pure function of config.

A reload computes a new plan and the runtime applies the difference, keyed by bind address and
port: a listener whose plan is unchanged keeps its socket and its connections.

Transparent proxying (`networking.transparentProxying`), as Kuma's Envoy does it: iptables
(`pysidecar transparent-proxy`) redirects the app's outgoing TCP to `redirectPortOutbound` and
incoming TCP to `redirectPortInbound`, where two redirect listeners (`outbound:passthrough:ipv4`,
`inbound:passthrough:ipv4`, and their `:ipv6` twins on `::` with `ipFamilyMode: DualStack`) read
each connection's original destination and hand it to the listener planned for that
address:port (an outbound) or port (an inbound), or relay it to that destination as it is
(passthrough). Inbounds then bind no socket of their own (the app listens on their port;
Kuma's `bind_to_port: false`), nor do outbounds on addresses that are not loopback (a VIP is no
local address); loopback ones still bind, since redirection never takes loopback traffic. The
sidecar's connections to its app leave from 127.0.0.6 (::6 over IPv6), which the rules let
through, so that an app on the pod's address is not redirected back to the sidecar.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar import defaults
from sidecar.addresses import canonical, host_port
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
    # Transparent proxying (see the module's docstring):
    bound: bool = True  # False: reached only through a redirect listener
    redirect: bool = False  # a redirect listener: by original destination, else passthrough
    # Where connections to the app leave from: this IPv4 address, or its IPv6 counterpart for an
    # app on an IPv6 address (`sidecar.transport.connect.source_for`).
    source_address: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        """Which listener this is: its address as the kernel spells it (a redirected
        connection's original destination finds its outbound by it), and its port."""
        return (canonical(self.address), self.port)

    @property
    def stat_address(self) -> str:
        """envoy_listener_address / envoy_tcp_prefix form of the address, as Envoy writes a
        listener's address in a stat name (its `:` made `_`): `127.0.0.1_10000`, `[__1]_10000`
        (what Envoy's own tag pattern for listener addresses expects of IPv6)."""
        return host_port(self.address, self.port).replace(":", "_")


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


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


# ipFamilyMode values that redirect IPv6 too (as does a redirectPortInboundV6 of Kuma 2.0's).
IPV6_FAMILY_MODES = ("DualStack", "IPv6")


def redirects_ipv6(tp: model.TransparentProxying) -> bool:
    """Whether IPv6 connections are redirected as well: `ipFamilyMode: DualStack` (or `IPv6`), or
    a `redirectPortInboundV6` (Kuma 2.0's way to ask). Unspecified means IPv4 only here, where
    Kuma's newer control planes take it as dual stack: a host without IPv6 still starts, and
    ip6tables' rules are asked for on their own anyway (`pysidecar transparent-proxy --ipv6`)."""
    return tp.ip_family_mode in IPV6_FAMILY_MODES or bool(tp.redirect_port_inbound_v6)


def _redirect_plans(tp: model.TransparentProxying) -> list[ListenerPlan]:
    """The redirect listeners, Kuma's names: outbound on `redirectPortOutbound`, inbound on
    `redirectPortInbound`, each on 0.0.0.0 (`…:ipv4`) and, when IPv6 is redirected, on `::`
    (`…:ipv6`; the inbound on `redirectPortInboundV6` where the Dataplane has one)."""
    families = [("ipv4", "0.0.0.0", tp.redirect_port_inbound)]
    if redirects_ipv6(tp):
        families.append(("ipv6", "::", tp.redirect_port_inbound_v6 or tp.redirect_port_inbound))
    plans = []
    for family, address, inbound_port in families:
        for direction, port in (
            ("outbound", tp.redirect_port_outbound),
            ("inbound", inbound_port),
        ):
            if not port:
                continue
            name = f"{direction}:passthrough:{family}"
            inbound = direction == "inbound"
            plans.append(
                ListenerPlan(
                    name=name,
                    direction=direction,
                    address=address,
                    port=port,
                    cluster=name,
                    service="",
                    protocol="tcp",
                    connect_timeout=(
                        defaults.INBOUND_CONNECT_TIMEOUT
                        if inbound
                        else defaults.OUTBOUND_CONNECT_TIMEOUT
                    ),
                    idle_timeout=(
                        defaults.INBOUND_IDLE_TIMEOUT if inbound else defaults.OUTBOUND_IDLE_TIMEOUT
                    ),
                    connect_attempts=1,
                    redirect=True,
                    source_address=defaults.TRANSPARENT_SOURCE_ADDRESS if inbound else None,
                )
            )
    return plans


def plan_listeners(
    dataplane: model.Dataplane, timeouts: Timeouts = Timeouts()
) -> dict[tuple[str, int], ListenerPlan]:
    tp = dataplane.networking.transparent_proxying
    redirect_in = tp is not None and bool(tp.redirect_port_inbound)
    redirect_out = tp is not None and bool(tp.redirect_port_outbound)
    plans: list[ListenerPlan] = [] if tp is None else _redirect_plans(tp)
    for inbound in dataplane.networking.inbound:
        plans.append(
            ListenerPlan(
                name=f"inbound:{host_port(inbound.address, inbound.port)}",
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
                bound=not redirect_in,
                source_address=defaults.TRANSPARENT_SOURCE_ADDRESS if redirect_in else None,
            )
        )
    for outbound in dataplane.networking.outbound:
        plans.append(
            ListenerPlan(
                name=f"outbound:{host_port(outbound.address, outbound.port)}",
                direction="outbound",
                address=outbound.address,
                port=outbound.port,
                cluster=outbound_cluster_name(outbound),
                service=outbound.service,
                protocol=None,
                selector=outbound.selector,
                request_timeout=timeouts.request,
                stream_idle_timeout=timeouts.stream_idle_for("outbound"),
                bound=not redirect_out or _is_loopback(outbound.address),
            )
        )
    return {p.key: p for p in plans}
