"""Kuma's MeshPassthrough: which destinations outside the mesh the app may reach under
transparent proxying, by address, CIDR or the name a connection asks for.

Pure: parsing, checking (Kuma's validator's rules and messages), picking the policies that select
this sidecar, and judging one connection; the redirect listener (`sidecar.transparent.redirect`)
does the I/O. A document (Kuma's Universal format):

    type: MeshPassthrough
    name: allow-some
    mesh: default
    spec:
      targetRef:                      # optional, Mesh
        kind: Dataplane               # Mesh | Dataplane (name, labels) | MeshSubset (tags)
        labels: {app: demo}
      default:
        passthroughMode: Matched      # All | Matched | None
        appendMatch:
          - {type: Domain, value: httpbin.org, port: 443, protocol: tls}
          - {type: Domain, value: "*.example.com", port: 80, protocol: http}
          - {type: IP, value: 10.240.15.39, port: 8888}          # protocol: tcp by default
          - {type: CIDR, value: 10.250.0.0/16, protocol: tcp}

Where policies select this sidecar, they replace the Mesh's `networking.outbound.passthrough`
switch, as in Kuma. They merge as Kuma's targetRef policies do: the most specific kind last
(Mesh, MeshSubset, Dataplane by labels, Dataplane by name; then by name), the last
`passthroughMode` set wins, and the `appendMatch` lists are joined. Unset, the mode is Matched
(Kuma's plugin), which with no entries lets nothing through, as None.

How a connection is judged (`Passthrough.allows`); chosen here where Envoy's filter-chain tree
is narrower:
- an IP or CIDR entry lets through a connection to its address, on its port (any without one),
  whatever its bytes: its protocol is not checked (a byte relay carries them all alike);
- a Domain entry lets through a connection on its port whose first bytes ask for its name: for
  `tls`, a ClientHello's SNI; for `http`, `http2` and `grpc`, the first request's Host or
  :authority. `*.example.com` matches every name under example.com, not example.com itself. The
  first request decides for the whole connection (Envoy routes each request by its own Host);
- the redirect listener waits for the first bytes (up to the protocol detection timeout) only
  when no IP or CIDR entry lets the connection through and a Domain entry has its port, so a
  protocol where the server speaks first (MySQL) is not held up by an IP entry.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.config import model
from sidecar.policy import Checker, PolicyError, PolicySet, kind_of, read_header

POLICY_TYPE = "MeshPassthrough"
ALL, MATCHED, NONE = "All", "Matched", "None"
MODES = (ALL, MATCHED, NONE)
MATCH_TYPES = ("Domain", "IP", "CIDR")
PROTOCOLS = ("tcp", "tls", "grpc", "http", "http2", "mysql")
L7_PROTOCOLS = ("grpc", "http", "http2")
# targetRef kinds, least specific first (Dataplane: by labels, then by name, see `_rank`).
TOP_KINDS = ("Mesh", "MeshSubset", "Dataplane")

_TARGET_REF_FIELDS = {"kind", "name", "labels", "tags", "proxyTypes"}
_SPEC_FIELDS = {"targetRef", "default"}
_DEFAULT_FIELDS = {"passthroughMode", "appendMatch"}
_MATCH_FIELDS = {"type", "value", "port", "protocol"}
_PARTIAL_WILDCARD = re.compile(r"^\*[^.]+")
_DNS_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$", re.IGNORECASE)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Match:
    """One `appendMatch` entry."""

    type: str  # Domain | IP | CIDR
    value: str
    port: int | None
    protocol: str
    network: IpNetwork | None = field(default=None, compare=False)  # IP and CIDR

    def allows_address(
        self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
    ) -> bool:
        return (
            self.network is not None
            and self.port in (None, port)
            and address.version == self.network.version
            and address in self.network
        )

    def allows_name(self, name: str, port: int) -> bool:
        if self.type != "Domain" or self.port not in (None, port):
            return False
        if self.value == "*":
            return True
        if self.value.startswith("*."):
            return name.endswith(self.value[1:])
        return name == self.value

    def __str__(self) -> str:
        port = "*" if self.port is None else self.port
        return f"{self.type}:{self.value}:{port}/{self.protocol}"


@dataclass(frozen=True)
class TargetRef:
    kind: str = "Mesh"
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # Dataplane: the resource's labels
    tags: Mapping[str, str] = field(default_factory=dict)  # MeshSubset: an inbound's tags
    sidecars: bool = True  # proxyTypes leaves Sidecar out: the policy is for gateways only

    def selects(self, dataplane: model.Dataplane) -> bool:
        if not self.sidecars:
            return False
        if self.kind == "Dataplane":
            return (self.name is None or self.name == dataplane.name) and all(
                dataplane.labels.get(k) == v for k, v in self.labels.items()
            )
        if self.kind == "MeshSubset":
            return any(
                all(inbound.tags.get(k) == v for k, v in self.tags.items())
                for inbound in dataplane.networking.inbound
            )
        return True

    @property
    def rank(self) -> int:
        """Kuma's order of specificity: a more specific policy merges later, over the others."""
        if self.kind == "Dataplane":
            return 3 if self.name is not None else 2
        return TOP_KINDS.index(self.kind)


@dataclass(frozen=True)
class MeshPassthrough:
    name: str
    mesh: str
    target_ref: TargetRef
    mode: str | None  # None: not set here
    matches: tuple[Match, ...]
    source: str = "<memory>"


@dataclass(frozen=True)
class Passthrough:
    """What the policies selecting this sidecar allow, merged; `policies` names them for logs."""

    mode: str
    matches: tuple[Match, ...] = ()
    policies: tuple[str, ...] = ()

    def allows_address(self, address: str, port: int) -> bool | None:
        """True: let through (All, or an IP or CIDR entry allows it); False: refuse (None, or
        nothing could allow it); None: only a Domain entry could, so the first bytes decide."""
        if self.mode == ALL:
            return True
        if self.mode == NONE:
            return False
        ip = ipaddress.ip_address(address)
        if any(m.allows_address(ip, port) for m in self.matches):
            return True
        if any(m.type == "Domain" and m.port in (None, port) for m in self.matches):
            return None
        return False

    def allows_name(self, name: str | None, port: int, tls: bool) -> Match | None:
        """The Domain entry that lets through a connection asking for `name` (its SNI when
        `tls`, else its first request's Host), if any."""
        if name is None:
            return None
        for match in self.matches:
            if (match.protocol == "tls") == tls and match.allows_name(name, port):
                return match
        return None

    @property
    def matched(self) -> bool:
        """Only what `matches` allows passes (nothing with none)."""
        return self.mode == MATCHED

    def describe(self) -> str:
        """Why a connection was refused, for the log line."""
        names = ",".join(self.policies)
        if not names:
            return "outside the mesh, and the Mesh has networking.outbound.passthrough: false"
        if self.mode == NONE:
            return f"outside the mesh, and MeshPassthrough {names} has passthroughMode: None"
        return f"outside the mesh, and no appendMatch of MeshPassthrough {names} allows it"


# --- parsing -------------------------------------------------------------------------------------


def parse_policy(doc: Any, source: str = "<memory>") -> MeshPassthrough:
    """One parsed YAML document to a policy; `PolicyError` lists every field at fault, with
    Kuma's validator's messages where it has one."""
    check, name, mesh, spec = read_header(doc, source, POLICY_TYPE)
    target_ref, mode, matches = TargetRef(), None, ()
    if spec is not None:
        check.unknown(spec, _SPEC_FIELDS, "spec")
        if spec.get("targetRef") is not None:
            target_ref = _target_ref(check, spec["targetRef"], "spec.targetRef") or target_ref
        default = check.mapping(spec.get("default", {}), "spec.default")
        if default is not None:
            check.unknown(default, _DEFAULT_FIELDS, "spec.default")
            mode = default.get("passthroughMode")
            if mode is not None and mode not in MODES:
                check.add(
                    "spec.default.passthroughMode",
                    f"must be one of {', '.join(MODES)}, got {mode!r}",
                )
            matches = _matches(check, default.get("appendMatch"), "spec.default.appendMatch")
    if check.violations:
        raise PolicyError(source, check.violations)
    assert name is not None
    return MeshPassthrough(name, mesh, target_ref, mode, matches, source)


def _target_ref(check: Checker, raw: Any, path: str) -> TargetRef | None:
    ref = check.mapping(raw, path)
    if ref is None:
        return None
    check.unknown(ref, _TARGET_REF_FIELDS, path)
    kind = ref.get("kind")
    if kind not in TOP_KINDS:
        check.add(f"{path}.kind", f"must be one of {', '.join(TOP_KINDS)}, got {kind!r}")
        return None
    allowed = {"Mesh": set(), "MeshSubset": {"tags"}, "Dataplane": {"name", "labels"}}[kind]
    for key in ("name", "labels", "tags"):
        if key in ref and key not in allowed:
            check.add(f"{path}.{key}", f"must not be set with kind {kind}")
    name = check.string(ref["name"], f"{path}.name") if "name" in ref else None
    selectors = {}
    for key in ("labels", "tags"):
        if key in allowed and key in ref:
            selectors[key] = check.strings(ref[key], f"{path}.{key}")
    proxy_types = ref.get("proxyTypes", ["Sidecar"])
    if not isinstance(proxy_types, list) or not all(
        t in ("Sidecar", "Gateway") for t in proxy_types
    ):
        check.add(f"{path}.proxyTypes", "must be a list of Sidecar and Gateway")
        proxy_types = ["Sidecar"]
    return TargetRef(kind, name, **selectors, sidecars="Sidecar" in proxy_types or not proxy_types)


def _matches(check: Checker, raw: Any, path: str) -> tuple[Match, ...]:
    """`appendMatch`, checked entry by entry as Kuma's validator does."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        check.add(path, f"must be a list, got {kind_of(raw)}")
        return ()
    out: list[Match] = []
    seen: set[tuple[int, str, str]] = set()
    l7_ports: dict[int, set[str]] = {}
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        entry = check.mapping(item, where)
        if entry is None:
            continue
        before = len(check.violations)
        check.unknown(entry, _MATCH_FIELDS, where)
        match_type, value = entry.get("type"), entry.get("value")
        protocol, port = entry.get("protocol", "tcp"), entry.get("port")
        if not isinstance(value, str) or not value:
            check.add(f"{where}.value", f"must be a non-empty string, got {value!r}")
            value = ""
        if protocol not in PROTOCOLS:
            check.add(f"{where}.protocol", f"must be one of {', '.join(PROTOCOLS)}")
        if protocol == "mysql" and port is None:
            check.add(f"{where}.port", "port must be defined for Mysql protocol")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
        ):
            check.add(f"{where}.port", "port must be a valid (1-65535)")
            port = None
        if port is not None and isinstance(protocol, str):
            if (port, protocol, value) in seen:
                check.add(
                    f"{where}.value", f"value {value} is already defined for this port and protocol"
                )
            seen.add((port, protocol, value))
            if protocol in L7_PROTOCOLS:
                l7_ports.setdefault(port, set()).add(protocol)
        network = None
        if match_type == "CIDR":
            network = _network(value, strict_host=False)
            if network is None or "/" not in value:
                check.add(f"{where}.value", "provided CIDR has incorrect value")
        elif match_type == "IP":
            network = _network(value, strict_host=True)
            if network is None:
                check.add(f"{where}.value", "provided IP has incorrect value")
        elif match_type == "Domain":
            value = value.lower()
            _check_domain(check, where, value, port, protocol)
        else:
            check.add(
                f"{where}.type",
                f"provided type {match_type} is not supported, one of Domain, IP, or CIDR is "
                "supported",
            )
        if len(check.violations) == before:
            out.append(Match(match_type, value, port, protocol, network))
    for port, protocols in sorted(l7_ports.items()):
        if len(protocols) > 1:
            check.add(path, f"you cannot configure http, http2, grpc on the same port {port}")
    return tuple(out)


def _check_domain(check: Checker, where: str, value: str, port: int | None, protocol: Any) -> None:
    if protocol in ("tcp", "mysql"):
        check.add(f"{where}.protocol", f"protocol {protocol} is not supported for a domain")
    wildcard = value.startswith("*")
    if port is None and not wildcard:
        check.add(
            f"{where}.port",
            "port must be defined for a domain, the sidecar resolves the domain to pin the "
            "destination",
        )
    if _PARTIAL_WILDCARD.match(value):
        check.add(
            f"{where}.value",
            "provided DNS has incorrect value, partial wildcard is currently not supported",
        )
    elif port is None and wildcard and protocol in L7_PROTOCOLS:
        check.add(
            f"{where}.port", "wildcard domains doesn't work for all ports and layer 7 protocol"
        )
    name = value[2:] if value.startswith("*.") else value
    if not name.startswith("*") and not _is_dns_name(name):
        check.add(f"{where}.value", "provided DNS has incorrect value")


def _is_dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(_DNS_LABEL.match(label) for label in labels)


def _network(value: str, strict_host: bool) -> IpNetwork | None:
    try:
        if strict_host:
            return ipaddress.ip_network(ipaddress.ip_address(value))
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


# --- in force ------------------------------------------------------------------------------------

# Where no MeshPassthrough selects the sidecar: the Mesh's `networking.outbound.passthrough`.
MESH_ALLOWS = Passthrough(ALL)
MESH_FORBIDS = Passthrough(NONE)


def in_force(policies: Iterable[MeshPassthrough], dataplane: model.Dataplane) -> Passthrough | None:
    """The policies of the dataplane's mesh that select it, merged; None when none does (the
    Mesh's switch then decides)."""
    chosen = sorted(
        (p for p in policies if p.mesh == dataplane.mesh and p.target_ref.selects(dataplane)),
        key=lambda p: (p.target_ref.rank, p.name, p.source),
    )
    if not chosen:
        return None
    mode = MATCHED
    for policy in chosen:
        if policy.mode is not None:
            mode = policy.mode
    matches = tuple(m for p in chosen for m in p.matches)
    return Passthrough(mode, matches, tuple(p.name for p in chosen))


def passthrough_policies() -> PolicySet[MeshPassthrough]:
    """The MeshPassthrough documents of the mesh directory, read again when it changes."""
    return PolicySet(POLICY_TYPE, parse_policy)
