"""Reading a Kuma Dataplane file: YAML, `{{ KEY }}` variables, validation, then the model.

Validation (`sidecar.config.validate`) works on the raw document so that its messages carry the
field paths a Kuma user wrote (`networking.inbound[0].tags["kuma.io/service"]`); only a valid
document is turned into `model.Dataplane`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sidecar import defaults
from sidecar.config import model
from sidecar.config.validate import Violation, unknown_fields, validate

log = logging.getLogger("sidecar.config")

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class ConfigError(Exception):
    """A config file that cannot be used. The message names the file and every field at fault."""

    def __init__(self, source: str, violations: list[Violation] | str):
        self.source = source
        self.violations = violations if isinstance(violations, list) else []
        detail = (
            "; ".join(f"{v.field}: {v.message}" if v.field else v.message for v in violations)
            if isinstance(violations, list)
            else violations
        )
        super().__init__(f"{source}: {detail}")


def substitute(text: str, variables: Mapping[str, str], source: str) -> str:
    """Fill `{{ KEY }}` as kuma-dp does with --dataplane-var; a missing one is an error."""
    missing: list[str] = []

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in variables:
            missing.append(key)
            return match.group(0)
        return variables[key]

    text = _VARIABLE.sub(fill, text)
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise ConfigError(source, f"no value for template variable(s) {names} (--dataplane-var)")
    return text


def read_documents(text: str, source: str) -> list[Any]:
    """Parse YAML, turning syntax errors into a message with file, line and column."""
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, f"YAML syntax error at {where}{exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"YAML error: {exc}") from None
    except Exception as exc:
        # PyYAML's constructors raise plain exceptions for scalars they match but cannot build:
        # ValueError for `2001-13-45`, IndexError for `!!int ` (and RecursionError when deep).
        raise ConfigError(source, f"YAML error: {type(exc).__name__}: {exc}") from None


def load_dataplane(path: str | Path, variables: Mapping[str, str] | None = None) -> model.Dataplane:
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, f"cannot read: not UTF-8 text ({exc.reason})") from None
    return parse_dataplane(text, source, variables)


def parse_dataplane(
    text: str, source: str = "<memory>", variables: Mapping[str, str] | None = None
) -> model.Dataplane:
    text = substitute(text, variables or {}, source)
    documents = read_documents(text, source)
    if len(documents) != 1:
        raise ConfigError(source, f"expected one YAML document, found {len(documents)}")
    return dataplane_from_document(documents[0], source)


def dataplane_from_document(doc: Any, source: str) -> model.Dataplane:
    """Validate one parsed document and build the model; warn about fields Kuma does not know."""
    if not isinstance(doc, dict):
        raise ConfigError(source, "a Dataplane must be a YAML mapping")
    if doc.get("type") != "Dataplane":
        raise ConfigError(source, f'type: must be "Dataplane", got {doc.get("type")!r}')
    violations = validate(doc)
    if violations:
        raise ConfigError(source, violations)
    unknown = unknown_fields(doc)
    if unknown:
        log.warning("event=unknown_fields file=%s fields=%s", source, ",".join(unknown))
    return _build(doc, source)


def _seconds(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value)
    return float(str(value).rstrip("s"))


# Protobuf enums in JSON are a name or a number; null means the default.
_STATES = {0: "Ready", 1: "NotReady", 2: "Ignored"}
_GATEWAY_TYPES = {None: "DELEGATED", 0: "DELEGATED", 1: "BUILTIN"}
_IP_FAMILY_MODES = {None: "UnSpecified", 0: "UnSpecified", 1: "DualStack", 2: "IPv4", 3: "IPv6"}


def _build(doc: dict[str, Any], source: str) -> model.Dataplane:
    net = doc["networking"]
    address = str(net["address"])
    inbounds = []
    for raw in net.get("inbound") or []:
        bind = raw.get("address") or address
        probe = raw.get("serviceProbe")
        health = raw.get("health") or {}
        state = raw.get("state")
        inbounds.append(
            model.Inbound(
                port=int(raw["port"]),
                tags=model.frozen_tags(
                    {str(k): str(v) for k, v in (raw.get("tags") or {}).items()}
                ),
                address=bind,
                service_address=raw.get("serviceAddress") or bind,
                service_port=int(raw.get("servicePort") or raw["port"]),
                protocol_field=raw.get("protocol"),
                name=raw.get("name"),
                ready=health.get("ready", True) is not False,
                state="Ready" if state is None else _STATES.get(state, str(state)),
                service_probe=None
                if probe is None
                else model.ServiceProbe(
                    interval=_seconds(probe.get("interval"), defaults.PROBE_INTERVAL),
                    timeout=_seconds(probe.get("timeout"), defaults.PROBE_TIMEOUT),
                    unhealthy_threshold=int(
                        probe.get("unhealthyThreshold") or defaults.PROBE_UNHEALTHY_THRESHOLD
                    ),
                    healthy_threshold=int(
                        probe.get("healthyThreshold") or defaults.PROBE_HEALTHY_THRESHOLD
                    ),
                ),
            )
        )
    outbounds = []
    for raw in net.get("outbound") or []:
        ref = raw.get("backendRef")
        outbounds.append(
            model.Outbound(
                port=int(raw["port"]),
                address=raw.get("address") or defaults.OUTBOUND_ADDRESS,
                tags=model.frozen_tags(
                    {str(k): str(v) for k, v in (raw.get("tags") or {}).items()}
                ),
                backend_ref=None
                if ref is None
                else model.BackendRef(
                    kind=ref.get("kind") or "MeshService",
                    name=ref.get("name"),
                    port=ref.get("port"),
                    labels=model.frozen_tags(ref.get("labels")) if ref.get("labels") else None,
                ),
            )
        )
    gateway = None
    if net.get("gateway") is not None:
        gw = net["gateway"]
        gateway = model.Gateway(
            tags=model.frozen_tags({str(k): str(v) for k, v in (gw.get("tags") or {}).items()}),
            type=_GATEWAY_TYPES.get(gw.get("type"), str(gw.get("type"))),
        )
    tp = net.get("transparentProxying")
    transparent = None
    if tp is not None:
        transparent = model.TransparentProxying(
            redirect_port_inbound=tp.get("redirectPortInbound"),
            redirect_port_outbound=tp.get("redirectPortOutbound"),
            redirect_port_inbound_v6=tp.get("redirectPortInboundV6"),
            direct_access_services=tuple(tp.get("directAccessServices") or ()),
            reachable_services=tuple(tp.get("reachableServices") or ()),
            ip_family_mode=_IP_FAMILY_MODES.get(mode := tp.get("ipFamilyMode"), str(mode)),
        )
    networking = model.Networking(
        address=address,
        advertised_address=net.get("advertisedAddress"),
        inbound=tuple(inbounds),
        outbound=tuple(outbounds),
        gateway=gateway,
        transparent_proxying=transparent,
        admin_port=int((net.get("admin") or {}).get("port") or defaults.ADMIN_PORT),
    )
    probes = None
    if doc.get("probes") is not None:
        raw_probes = doc["probes"]
        probes = model.Probes(
            port=int(raw_probes.get("port") or defaults.PROBES_PORT),
            endpoints=tuple(
                model.ProbeEndpoint(
                    inbound_port=int(e["inboundPort"]),
                    inbound_path=e.get("inboundPath") or "/",
                    path=e["path"],
                )
                for e in raw_probes.get("endpoints") or []
            ),
        )
    metrics = None
    if doc.get("metrics") is not None:
        raw_metrics = doc["metrics"]
        conf = raw_metrics.get("conf") or {}
        metrics = model.Metrics(
            type=raw_metrics.get("type") or "prometheus",
            name=raw_metrics.get("name"),
            port=int(conf.get("port") or defaults.METRICS_PORT),
            path=conf.get("path") or defaults.METRICS_PATH,
        )
    return model.Dataplane(
        mesh=str(doc.get("mesh") or "default"),
        name=str(doc["name"]),
        networking=networking,
        probes=probes,
        metrics=metrics,
        source=source,
        labels=model.frozen_tags(doc.get("labels")),  # validated: strings
    )
