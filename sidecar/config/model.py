"""The Dataplane, as immutable objects.

These mirror Kuma's `Dataplane` resource (Universal format) field for field, with Kuma's defaults
applied where the runtime needs a value. They are built only from a validated document
(`sidecar.config.dataplane`), so code that holds one may trust it. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sidecar import defaults

SERVICE_TAG = "kuma.io/service"
PROTOCOL_TAG = "kuma.io/protocol"
ZONE_TAG = "kuma.io/zone"

PROTOCOLS = ("grpc", "http", "http2", "kafka", "tcp")


def parse_protocol(value: str | None) -> str:
    """Kuma's ParseProtocol: case-insensitive, anything unknown (or nothing) is tcp."""
    if value is None:
        return "tcp"
    value = value.lower()
    return value if value in PROTOCOLS else "tcp"


def frozen_tags(tags: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(tags or {}))


@dataclass(frozen=True)
class ServiceProbe:
    interval: float = defaults.PROBE_INTERVAL
    timeout: float = defaults.PROBE_TIMEOUT
    unhealthy_threshold: int = defaults.PROBE_UNHEALTHY_THRESHOLD
    healthy_threshold: int = defaults.PROBE_HEALTHY_THRESHOLD


@dataclass(frozen=True)
class Inbound:
    """A service implemented by the app next to this sidecar."""

    port: int
    tags: Mapping[str, str]
    address: str  # bind address (inbound.address or networking.address)
    service_address: str  # where the app listens (serviceAddress or the bind address)
    service_port: int  # servicePort or port
    protocol_field: str | None = None  # Kuma 2.14 `protocol`, wins over the tag
    name: str | None = None
    ready: bool = True  # health.ready (absent health means ready)
    state: str = "Ready"  # Ready | NotReady | Ignored
    service_probe: ServiceProbe | None = None

    @property
    def service(self) -> str:
        return self.tags[SERVICE_TAG]

    @property
    def protocol(self) -> str:
        """The protocol by Kuma's rule: the `protocol` field, else the tag, else tcp."""
        return parse_protocol(self.declared_protocol)

    @property
    def declared_protocol(self) -> str | None:
        """What the user declared, or None: only undeclared services are sniffed."""
        declared = self.protocol_field or self.tags.get(PROTOCOL_TAG)
        return parse_protocol(declared) if declared else None

    @property
    def serving(self) -> bool:
        """Whether other members may send traffic here (Kuma leaves the others out of EDS)."""
        return self.ready and self.state == "Ready"


@dataclass(frozen=True)
class BackendRef:
    kind: str = "MeshService"
    name: str | None = None
    port: int | None = None
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Outbound:
    """A service the app consumes through a local port."""

    port: int
    address: str = defaults.OUTBOUND_ADDRESS
    tags: Mapping[str, str] = field(default_factory=lambda: frozen_tags(None))
    backend_ref: BackendRef | None = None

    @property
    def service(self) -> str:
        if SERVICE_TAG in self.tags:
            return self.tags[SERVICE_TAG]
        ref = self.backend_ref
        assert ref is not None
        if ref.name:
            return ref.name
        labels = ref.labels or {}
        return labels.get(SERVICE_TAG) or ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    @property
    def selector(self) -> Mapping[str, str]:
        """Tags an endpoint must carry to serve this outbound (a backendRef's labels select
        like tags: MeshService resources are not modelled, members' inbound tags are)."""
        if self.tags:
            return self.tags
        if self.backend_ref is not None and not self.backend_ref.name and self.backend_ref.labels:
            return self.backend_ref.labels
        return frozen_tags({SERVICE_TAG: self.service})


@dataclass(frozen=True)
class Gateway:
    tags: Mapping[str, str]
    type: str = "DELEGATED"  # DELEGATED | BUILTIN


@dataclass(frozen=True)
class TransparentProxying:
    redirect_port_inbound: int | None = None
    redirect_port_outbound: int | None = None
    redirect_port_inbound_v6: int | None = None
    direct_access_services: tuple[str, ...] = ()
    reachable_services: tuple[str, ...] = ()
    ip_family_mode: str = "UnSpecified"


@dataclass(frozen=True)
class Networking:
    address: str
    advertised_address: str | None = None
    inbound: tuple[Inbound, ...] = ()
    outbound: tuple[Outbound, ...] = ()
    gateway: Gateway | None = None
    transparent_proxying: TransparentProxying | None = None
    admin_port: int = defaults.ADMIN_PORT

    @property
    def reachable_address(self) -> str:
        """The address other dataplanes dial: advertisedAddress, else address."""
        return self.advertised_address or self.address


@dataclass(frozen=True)
class ProbeEndpoint:
    inbound_port: int
    inbound_path: str
    path: str


@dataclass(frozen=True)
class Probes:
    port: int = defaults.PROBES_PORT
    endpoints: tuple[ProbeEndpoint, ...] = ()


@dataclass(frozen=True)
class Metrics:
    type: str = "prometheus"
    name: str | None = None
    port: int = defaults.METRICS_PORT
    path: str = defaults.METRICS_PATH


@dataclass(frozen=True)
class Dataplane:
    mesh: str
    name: str
    networking: Networking
    probes: Probes | None = None
    metrics: Metrics | None = None
    source: str = "<memory>"  # the file it was read from, for messages
    # The resource's own labels (Kuma's `labels`): what a policy's `kind: Dataplane` selects by.
    labels: Mapping[str, str] = field(default_factory=lambda: frozen_tags(None))

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.service for i in self.networking.inbound))
