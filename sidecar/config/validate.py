"""Validation of a raw Dataplane document, with Kuma's field paths and wording.

Why on the raw document: a Kuma user wrote `networking.inbound[0].tags["kuma.io/service"]`, so
that is what an error must point at, and every mistake in the file is reported at once instead of
the first one only. `validate()` never raises, whatever the YAML held: a wrong type anywhere is a
violation ("must be an integer", "must be a mapping"), because the model builder
(`dataplane._build`) only ever sees documents that passed, and trusts them.

The rules and messages are Kuma's own (kumahq/kuma, `pkg/core/resources/apis/mesh`:
`dataplane_validator.go`, `validators.go`, `meta_validator.go`). Where this module departs from
Kuma, it says so next to the rule. Three principles decide the unclear cases:

* `null` (`key:` with nothing after it) means the field is absent, as protobuf JSON reads it.
* Where the model has a harmless default for an absent field (`probes.port`, an endpoint's
  `inboundPath`, `metrics.type`, `backendRef.kind`), absence is accepted although Kuma rejects it.
* A value that is present is checked strictly, and the types are those of the schema: a port is an
  integer (not "8080", not `true`), tags map strings to strings, durations are strings like "1s".

Stricter than Kuma, because this sidecar binds every listener itself: two inbounds or outbounds
on one address:port are refused; so is an app (servicePort, serviceAddress) given explicitly as
its inbound's own address:port, unless transparent proxying redirects inbound traffic (the
inbound then binds no socket); so is the admin port (default 9901) on any address the admin server
uses (127.0.0.1, and networking.address where /ready is served). Every port field, optional ones
included, must be in 1..65535 (Kuma reads 0 as unset in some of them).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from sidecar import defaults
from sidecar.addresses import canonical, host_port
from sidecar.config.model import PROTOCOL_TAG, PROTOCOLS, SERVICE_TAG

_TAG_NAME = re.compile(r"[a-zA-Z0-9.\-_:/]*")
_TAG_VALUE = re.compile(r"[a-zA-Z0-9.\-_:]*")
_DURATION = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)s")
# A label as Kuma's check (govalidator's IsDNSName) takes it: `_` too (Docker Compose v1 names
# its containers `project_service_1`); a hyphen still neither starts nor ends one.
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_IDENTIFIER = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MESH_NAME = re.compile(r"[0-9a-z\-_.]*")
_URL_PATH = re.compile(r"/[^\s\x00-\x1f\x7f]*")

_IDENTIFIER_MESSAGE = (
    "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
    "characters, '-' or '.', and must start and end with an alphanumeric character"
)
_MESH_MESSAGE = (
    "invalid characters. Valid characters are numbers, lowercase latin letters and '-', '_', '.' "
    "symbols."
)
_MISSING_SERVICE = f'mandatory tag "{SERVICE_TAG}" is missing'
_PORT_RANGE = "port must be in the range [1, 65535]"
_URL_PATH_MESSAGE = "should be a valid URL Path"

_INBOUND_STATES = ("Ready", "NotReady", "Ignored")
_GATEWAY_TYPES = ("DELEGATED", "BUILTIN")
_IP_FAMILY_MODES = ("UnSpecified", "DualStack", "IPv4", "IPv6")
_BACKEND_KINDS = ("MeshExternalService", "MeshMultiZoneService", "MeshService")  # sorted, as Kuma


class Violation(NamedTuple):
    field: str
    message: str


# --- paths -----------------------------------------------------------------------------------


def _field(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def _key(path: str, key: object) -> str:
    return f'{path}["{key}"]'


# --- value tests -----------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _is_hostname(value: str) -> bool:
    """A DNS name, with `_` allowed in labels as Kuma allows it; an all-numeric last label is
    refused so that `10.0.0.256` is no name (Kuma takes it, and no resolver would)."""
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_HOST_LABEL.fullmatch(label) for label in labels) and not re.fullmatch(
        "[0-9]+", labels[-1]
    )


def _enum(value: object, names: tuple[str, ...]) -> bool:
    """A protobuf enum in JSON: one of its names, or its number."""
    if _is_int(value):
        return 0 <= value < len(names)  # type: ignore[operator]
    return isinstance(value, str) and value in names


def _allowed(values: tuple[str, ...] | list[str]) -> str:
    return "Allowed values: " + ", ".join(values)


def _same_address(a: str, b: str) -> bool:
    return _normal_address(a) == _normal_address(b)


def _normal_address(address: str) -> str:
    """The form in which two addresses compare: an IP's canonical text, localhost as 127.0.0.1."""
    return "127.0.0.1" if address == "localhost" else canonical(address)


def _overlaps(a: str, b: str) -> bool:
    """Whether sockets bound on a and b would collide: same address, or either is a wildcard."""
    for address in (a, b):
        ip = _ip(address)
        if ip is not None and ip.is_unspecified:
            return True
    return _same_address(a, b)


# --- the walker ------------------------------------------------------------------------------


class _Listener(NamedTuple):
    path: str
    address: str
    port: int


class _Sockets(NamedTuple):
    """What the inbounds and outbounds occupy: their listeners, and the apps behind inbounds."""

    inbounds: list[_Listener]
    apps: list[_Listener]
    outbounds: list[_Listener]


class _Validator:
    """Collects violations. The typed getters report a wrong type and then return None, so a rule
    that needs the value simply skips it: one mistake, one message."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, path: str, message: str) -> None:
        violation = Violation(path, message)
        if violation not in self.violations:
            self.violations.append(violation)

    # typed getters: `None` for absent (or null) and for a wrong type, which is reported

    def mapping(self, obj: dict[Any, Any], name: str, path: str) -> dict[Any, Any] | None:
        value = obj.get(name)
        if value is None or isinstance(value, dict):
            return value
        self.add(_field(path, name), "must be a mapping")
        return None

    def sequence(self, obj: dict[Any, Any], name: str, path: str) -> list[Any] | None:
        value = obj.get(name)
        if value is None or isinstance(value, list):
            return value
        self.add(_field(path, name), "must be a list")
        return None

    def string(self, obj: dict[Any, Any], name: str, path: str) -> str | None:
        value = obj.get(name)
        if value is None or isinstance(value, str):
            return value
        self.add(_field(path, name), "must be a string")
        return None

    def integer(self, obj: dict[Any, Any], name: str, path: str) -> int | None:
        value = obj.get(name)
        if value is None or _is_int(value):
            return value
        self.add(_field(path, name), "must be an integer")
        return None

    def port(self, obj: dict[Any, Any], name: str, path: str, required: bool = False) -> int | None:
        """A port in 1..65535. A required port that is absent gets Kuma's range message, since
        Kuma reads it as 0."""
        if obj.get(name) is None:
            if required:
                self.add(_field(path, name), _PORT_RANGE)
            return None
        value = self.integer(obj, name, path)
        if value is None:
            return None
        if not 1 <= value <= 65535:
            self.add(_field(path, name), _PORT_RANGE)
            return None
        return value

    def enum(self, obj: dict[Any, Any], name: str, path: str, names: tuple[str, ...]) -> bool:
        value = obj.get(name)
        if value is None or _enum(value, names):
            return True
        self.add(_field(path, name), f'invalid value "{value}". {_allowed(names)}')
        return False

    def url_path(self, obj: dict[Any, Any], name: str, path: str, required: bool) -> None:
        value = obj.get(name)
        if value is None and not required:
            return
        if not isinstance(value, str) or not _URL_PATH.fullmatch(value):
            self.add(_field(path, name), _URL_PATH_MESSAGE)

    def strings(self, obj: dict[Any, Any], name: str, path: str) -> None:
        items = self.sequence(obj, name, path)
        for i, item in enumerate(items or []):
            if not isinstance(item, str):
                self.add(_index(_field(path, name), i), "must be a string")

    def address(self, value: str, path: str) -> None:
        """networking.address and advertisedAddress: an IP or a DNS name, not a wildcard."""
        if value == "":
            self.add(path, "address can't be empty")
            return
        ip = _ip(value)
        if ip is not None and ip.is_unspecified:
            self.add(path, "must not be 0.0.0.0 or ::")
        elif ip is None and not _is_hostname(value):
            self.add(path, "address has to be valid IP address or domain name")

    # tags

    def tags(self, tags: dict[Any, Any], path: str) -> None:
        """Kuma's validateTagKeyValues, keys in sorted order."""
        for name in sorted(tags, key=str):
            value = tags[name]
            if not isinstance(name, str):
                self.add(_key(path, name), "tag name must be a string")
                continue
            if name == "":
                self.add(path, "tag name must be non-empty")
            if not _TAG_NAME.fullmatch(name):
                self.add(
                    _key(path, name),
                    "tag name must consist of alphanumeric characters, dots, dashes, slashes "
                    "and underscores",
                )
            if value is not None and not isinstance(value, str):
                self.add(_key(path, name), "tag value must be a string")
                continue
            if not value:
                self.add(_key(path, name), "tag value must be non-empty")
            elif not _TAG_VALUE.fullmatch(value):
                self.add(
                    _key(path, name),
                    "tag value must consist of alphanumeric characters, dots, dashes and "
                    "underscores",
                )

    def protocol_tag(self, tags: dict[Any, Any], path: str) -> None:
        if PROTOCOL_TAG not in tags:
            return
        value = tags[PROTOCOL_TAG]
        value = "" if value is None else value
        if isinstance(value, str) and value.lower() not in PROTOCOLS:
            self.add(
                _key(path, PROTOCOL_TAG),
                f'tag "{PROTOCOL_TAG}" has an invalid value "{value}". {_allowed(PROTOCOLS)}',
            )


def validate(doc: dict[str, Any]) -> list[Violation]:
    """Every violation in a raw Dataplane document (an empty list when it is valid)."""
    v = _Validator()
    if not isinstance(doc, dict):
        v.add("", "a Dataplane must be a YAML mapping")
        return v.violations
    _meta(v, doc)
    net = doc.get("networking")
    if net is None:
        v.add("networking", "must be defined")
    elif not isinstance(net, dict):
        v.add("networking", "must be a mapping")
    else:
        _networking(v, net, doc)
    _probes(v, doc)
    _metrics(v, doc)
    for key, value in (v.mapping(doc, "labels", "") or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            v.add(_key("labels", key), "must be a string")
    return v.violations


# --- sections --------------------------------------------------------------------------------


def _meta(v: _Validator, doc: dict[str, Any]) -> None:
    """Kuma's ValidateMeta: the name is a lowercase RFC 1123 subdomain; the mesh (absent: default)
    uses the older, wider character set that Kuma keeps for compatibility."""
    for name, pattern, message in (
        ("name", _IDENTIFIER, _IDENTIFIER_MESSAGE),
        ("mesh", _MESH_NAME, _MESH_MESSAGE),
    ):
        value = doc.get(name)
        if value is None and name == "mesh":
            continue
        if value is not None and not isinstance(value, str):
            v.add(name, "must be a string")
        elif not value:
            v.add(name, "cannot be empty")
        elif len(value) > 253:
            v.add(name, "value length must less or equal 253")
        elif not pattern.fullmatch(value):
            v.add(name, message)


def _networking(v: _Validator, net: dict[Any, Any], doc: dict[str, Any]) -> None:
    path = "networking"
    address = v.string(net, "address", path)
    if "address" not in net or net["address"] is None:
        v.add(_field(path, "address"), "address can't be empty")
    elif address is not None:
        v.address(address, _field(path, "address"))
    advertised = v.string(net, "advertisedAddress", path)
    if advertised:  # "" is unset, as in Kuma (an empty --dataplane-var, say)
        v.address(advertised, _field(path, "advertisedAddress"))

    inbounds = v.sequence(net, "inbound", path)
    outbounds = v.sequence(net, "outbound", path)
    _gateway_rules(v, net, inbounds, outbounds, doc)

    sockets = _Sockets([], [], [])
    tp = net.get("transparentProxying")
    redirected = isinstance(tp, dict) and bool(tp.get("redirectPortInbound"))
    for i, raw in enumerate(inbounds or []):
        _inbound(v, raw, _index(_field(path, "inbound"), i), address or "", sockets, redirected)
    for i, raw in enumerate(outbounds or []):
        _outbound(v, raw, _index(_field(path, "outbound"), i), sockets)

    _transparent_proxying(v, net, path)
    _admin(v, net, path, address or "", sockets)
    _distinct_listeners(v, sockets.inbounds + sockets.outbounds)


def _gateway_rules(
    v: _Validator,
    net: dict[Any, Any],
    inbounds: list[Any] | None,
    outbounds: list[Any] | None,
    doc: dict[str, Any],
) -> None:
    """A delegated gateway has no inbounds, a builtin one no inbounds, outbounds or probes; without
    a gateway there must be an inbound. (Kuma reports these at `networking.inbound` and
    `networking.outbound`.)"""
    path = "networking"
    if net.get("gateway") is None:
        if not inbounds and not _wrong_typed(net, "inbound", list):
            v.add(path, "has to contain at least one inbound interface or gateway")
        return
    gateway = v.mapping(net, "gateway", path)
    if gateway is None:
        return
    gw_path = _field(path, "gateway")
    if not v.enum(gateway, "type", gw_path, _GATEWAY_TYPES):
        kind = None
    else:
        kind = gateway.get("type")
        kind = "DELEGATED" if kind in (None, 0) else "BUILTIN" if kind == 1 else kind
    if kind == "DELEGATED" and inbounds:
        v.add(_field(path, "inbound"), "inbound cannot be defined for delegated gateways")
    if kind == "BUILTIN":
        if inbounds:
            v.add(_field(path, "inbound"), "inbound cannot be defined for builtin gateways")
        if outbounds:
            v.add(_field(path, "outbound"), "outbound cannot be defined for builtin gateways")
        if doc.get("probes") is not None:
            v.add("networking.probes", "probes cannot be defined for builtin gateways")

    tags = v.mapping(gateway, "tags", gw_path)
    tags_path = _field(gw_path, "tags")
    tags = tags or {}
    protocol = tags.get(PROTOCOL_TAG)
    protocol = "" if protocol is None else protocol
    if PROTOCOL_TAG in tags and protocol != "tcp":
        v.add(
            _key(tags_path, PROTOCOL_TAG),
            f'other values than tcp are not allowed, provided value "{protocol}"',
        )
    v.tags(tags, tags_path)
    if SERVICE_TAG not in tags and not _wrong_typed(gateway, "tags", dict):
        v.add(tags_path, _MISSING_SERVICE)


def _wrong_typed(obj: dict[Any, Any], name: str, kind: type) -> bool:
    """Whether obj holds a non-null value of the wrong type there (reported already)."""
    value = obj.get(name)
    return value is not None and not isinstance(value, kind)


def _inbound(
    v: _Validator,
    raw: Any,
    path: str,
    net_address: str,
    sockets: _Sockets,
    redirected: bool,
) -> None:
    """One inbound. The app must not sit on the inbound's own address:port. Kuma's rule: a
    serviceAddress equal to networking.address or to inbound.address, with no servicePort or the
    same port. Here, besides, the effective pairs are compared, with Kuma's defaults
    (serviceAddress: the bind address; servicePort: port), when servicePort or serviceAddress is
    given: `port: 8080, servicePort: 8080` is refused, since this sidecar would bind the app's
    socket, unless `redirected` (transparent proxying takes inbound traffic to its own port, and
    the inbound binds nothing). An inbound with just `port` stays valid (the usual Kuma example
    with transparent proxying)."""
    if not isinstance(raw, dict):
        v.add(path, "must be a mapping")
        return
    port = v.port(raw, "port", path, required=True)
    # Where the listener binds and where the app is, with Kuma's defaults ("" when unknown).
    bind = _ip_field(v, raw, "address", path, "address has to be valid IP address", net_address)
    app_address = _ip_field(
        v, raw, "serviceAddress", path, "serviceAddress has to be valid IP address", bind
    )
    app_port = port if raw.get("servicePort") is None else v.port(raw, "servicePort", path)

    given_address = raw.get("serviceAddress") or ""
    explicit = raw.get("servicePort") is not None or bool(given_address)
    if port is not None and app_port is not None and bind and app_address:
        sockets.inbounds.append(_Listener(path, bind, port))
        sockets.apps.append(_Listener(path, app_address, app_port))
        kumas_rule = bool(given_address) and given_address in (net_address, raw.get("address"))
        ours = explicit and not redirected and _same_address(app_address, bind)
        if app_port == port and (kumas_rule or ours):
            v.add(
                # Kuma names serviceAddress; where only servicePort was written, that is the one.
                _field(path, "serviceAddress" if given_address else "servicePort"),
                "serviceAddress and servicePort has to differ from address and port",
            )

    tags = v.mapping(raw, "tags", path)
    tags_path = _field(path, "tags")
    if tags is not None:
        v.protocol_tag(tags, tags_path)
        v.tags(tags, tags_path)
    if SERVICE_TAG not in (tags or {}) and not _wrong_typed(raw, "tags", dict):
        v.add(_key(tags_path, SERVICE_TAG), "tag has to exist")

    protocol = v.string(raw, "protocol", path)
    if protocol and protocol.lower() not in PROTOCOLS:
        v.add(
            _field(path, "protocol"),
            f'has an invalid value "{protocol}". {_allowed(PROTOCOLS)}',
        )
    v.string(raw, "name", path)
    health = v.mapping(raw, "health", path)
    if health is not None and health.get("ready") is not None:
        if not isinstance(health["ready"], bool):
            v.add(_field(_field(path, "health"), "ready"), "must be a boolean")
    v.enum(raw, "state", path, _INBOUND_STATES)
    _service_probe(v, raw, path)


def _ip_field(
    v: _Validator, raw: dict[Any, Any], name: str, path: str, message: str, default: str
) -> str:
    """An address field that must hold an IP: the IP, default when unset ("" is unset, as in
    Kuma), or "" when the field is wrong (reported), so that no rule fires on a guess."""
    if raw.get(name) in (None, ""):
        return default
    value = v.string(raw, name, path)
    if value is None:
        return ""
    if _ip(value) is None:
        v.add(_field(path, name), message)
        return ""
    return value


def _service_probe(v: _Validator, raw: dict[Any, Any], path: str) -> None:
    probe = v.mapping(raw, "serviceProbe", path)
    if probe is None:
        return
    path = _field(path, "serviceProbe")
    for name in ("interval", "timeout"):
        value = probe.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not _DURATION.fullmatch(value):
            v.add(_field(path, name), 'must be a duration in seconds, e.g. "1s"')
        elif float(value[:-1]) <= 0:
            v.add(_field(path, name), "must have a positive value")
    for name in ("unhealthyThreshold", "healthyThreshold"):
        value = v.integer(probe, name, path)
        if value is not None and value <= 0:
            v.add(_field(path, name), "must have a positive value")
    v.mapping(probe, "tcp", path)


def _outbound(v: _Validator, raw: Any, path: str, sockets: _Sockets) -> None:
    if not isinstance(raw, dict):
        v.add(path, "must be a mapping")
        return
    port = v.port(raw, "port", path, required=True)
    address = _ip_field(
        v, raw, "address", path, "address has to be valid IP address", defaults.OUTBOUND_ADDRESS
    )
    if port is not None and address:
        sockets.outbounds.append(_Listener(path, address, port))

    tags = v.mapping(raw, "tags", path)
    tags_path = _field(path, "tags")
    ref = v.mapping(raw, "backendRef", path)
    if ref is not None:
        _backend_ref(v, ref, _field(path, "backendRef"))
    elif raw.get("backendRef") is None:
        if tags is not None:
            v.tags(tags, tags_path)
        if SERVICE_TAG not in (tags or {}) and not _wrong_typed(raw, "tags", dict):
            v.add(tags_path, _MISSING_SERVICE)
    if raw.get("backendRef") is not None and tags:
        v.add(_field(path, "backendRef"), "both backendRef and tags/service cannot be defined")


def _backend_ref(v: _Validator, ref: dict[Any, Any], path: str) -> None:
    """Kuma requires `kind`; here an absent kind means MeshService, as in the model."""
    kind = ref.get("kind")
    if kind is not None and kind not in _BACKEND_KINDS:
        v.add(
            _field(path, "kind"),
            "invalid value. Available values are: " + ",".join(_BACKEND_KINDS),
        )
    name = v.string(ref, "name", path)
    labels = v.mapping(ref, "labels", path)
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            v.add(_key(_field(path, "labels"), key), "must be a string")
    if not name and not labels and not _wrong_typed(ref, "name", str):
        v.add(path, "either 'name' or 'labels' should be specified")
    # MeshExternalService takes its port from its endpoints
    v.port(ref, "port", path, required=kind != "MeshExternalService")


def _transparent_proxying(v: _Validator, net: dict[Any, Any], path: str) -> None:
    """Kuma leaves these unchecked (0 means unset there); here a given port must be a port."""
    tp = v.mapping(net, "transparentProxying", path)
    if tp is None:
        return
    path = _field(path, "transparentProxying")
    for name in ("redirectPortInbound", "redirectPortOutbound", "redirectPortInboundV6"):
        v.port(tp, name, path)
    v.strings(tp, "directAccessServices", path)
    v.strings(tp, "reachableServices", path)
    v.enum(tp, "ipFamilyMode", path, _IP_FAMILY_MODES)


def _admin(
    v: _Validator,
    net: dict[Any, Any],
    path: str,
    net_address: str,
    sockets: _Sockets,
) -> None:
    """The admin server listens on 127.0.0.1 and serves /ready on networking.address, both on the
    admin port (default 9901, as Kuma's bootstrap checks it too). No inbound (its own listener or
    the app behind it) nor outbound may take that port on either address, or on a wildcard."""
    admin = v.mapping(net, "admin", path)
    port_path = _field(_field(path, "admin"), "port")
    if admin is not None and admin.get("port") is not None:
        port = v.port(admin, "port", _field(path, "admin"))
        if port is None:
            return
    else:
        port = defaults.ADMIN_PORT
    admin_addresses = [defaults.ADMIN_ADDRESS] + ([net_address] if net_address else [])

    def taken(listeners: list[_Listener]) -> bool:
        return any(
            s.port == port and any(_overlaps(s.address, a) for a in admin_addresses)
            for s in listeners
        )

    if taken(sockets.inbounds + sockets.apps):
        v.add(port_path, "must differ from inbound")
    if taken(sockets.outbounds):
        v.add(port_path, "must differ from outbound")


def _distinct_listeners(v: _Validator, listeners: list[_Listener]) -> None:
    """Beyond Kuma: each inbound and outbound binds its own address:port (compared exactly, so
    127.0.0.1 and 0.0.0.0 do not clash here)."""
    seen: dict[tuple[str, int], str] = {}
    for listener in listeners:
        key = (_normal_address(listener.address), listener.port)
        if key in seen:
            where = host_port(listener.address, listener.port)
            v.add(listener.path, f"address {where} is already used by {seen[key]}")
        else:
            seen[key] = listener.path


def _probes(v: _Validator, doc: dict[str, Any]) -> None:
    """Virtual probes. Kuma requires probes.port and each endpoint's inboundPath; here they
    default to 9000 and "/" as in the model."""
    probes = v.mapping(doc, "probes", "")
    if probes is None:
        return
    v.port(probes, "port", "probes")
    endpoints = v.sequence(probes, "endpoints", "probes")
    for i, endpoint in enumerate(endpoints or []):
        path = _index("probes.endpoints", i)
        if not isinstance(endpoint, dict):
            v.add(path, "must be a mapping")
            continue
        v.port(endpoint, "inboundPort", path, required=True)
        v.url_path(endpoint, "inboundPath", path, required=False)
        v.url_path(endpoint, "path", path, required=True)


def _metrics(v: _Validator, doc: dict[str, Any]) -> None:
    """Prometheus is the only backend; an absent type means it, as in the model."""
    metrics = v.mapping(doc, "metrics", "")
    if metrics is None:
        return
    kind = metrics.get("type")
    if kind is not None and kind != "prometheus":
        v.add("metrics.type", 'unknown backend type. Available backends: "prometheus"')
    v.string(metrics, "name", "metrics")
    conf = v.mapping(metrics, "conf", "metrics")
    if conf is None:
        return
    v.port(conf, "port", "metrics.conf")
    v.url_path(conf, "path", "metrics.conf", required=False)


# --- unknown fields --------------------------------------------------------------------------

_ANY = "any"  # a free-form mapping (tags, labels): its keys are data, not fields

_SCHEMA: dict[str, Any] = {
    "type": None,
    "mesh": None,
    "name": None,
    "labels": _ANY,
    "networking": {
        "address": None,
        "advertisedAddress": None,
        "inbound": [
            {
                "port": None,
                "servicePort": None,
                "serviceAddress": None,
                "address": None,
                "tags": _ANY,
                "health": {"ready": None},
                "serviceProbe": {
                    "interval": None,
                    "timeout": None,
                    "unhealthyThreshold": None,
                    "healthyThreshold": None,
                    "tcp": {},
                },
                "state": None,
                "name": None,
                "protocol": None,
            }
        ],
        "outbound": [
            {
                "address": None,
                "port": None,
                "tags": _ANY,
                "backendRef": {"kind": None, "name": None, "port": None, "labels": _ANY},
            }
        ],
        "gateway": {"tags": _ANY, "type": None},
        "transparentProxying": {
            "redirectPortInbound": None,
            "redirectPortOutbound": None,
            "redirectPortInboundV6": None,
            "directAccessServices": None,
            "reachableServices": None,
            "ipFamilyMode": None,
        },
        "admin": {"port": None},
    },
    "probes": {
        "port": None,
        "endpoints": [{"inboundPort": None, "inboundPath": None, "path": None}],
    },
    "metrics": {
        "type": None,
        "name": None,
        # Kuma's PrometheusMetricsBackendConfig; only port and path are used here
        "conf": {
            "port": None,
            "path": None,
            "tags": _ANY,
            "skipMTLS": None,
            "tls": _ANY,
            "aggregate": _ANY,
            "envoy": _ANY,
        },
    },
}


def unknown_fields(doc: dict[str, Any]) -> list[str]:
    """Dotted paths of fields the Dataplane schema does not have, for a warning: a misspelt field
    (`networking.inbound[0].servicePrt`) would otherwise be ignored without a word."""
    if not isinstance(doc, dict):
        return []
    return list(_unknown(doc, _SCHEMA, ""))


def _unknown(value: Any, schema: Any, path: str) -> Iterator[str]:
    if isinstance(schema, dict) and isinstance(value, dict):
        for key, item in value.items():
            if key not in schema:
                yield _field(path, str(key))
            else:
                yield from _unknown(item, schema[key], _field(path, key))
    elif isinstance(schema, list) and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unknown(item, schema[0], _index(path, i))
