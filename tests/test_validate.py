"""Dataplane validation: Kuma's rules, field paths and messages, as a user sees them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar.config.dataplane import ConfigError, parse_dataplane, substitute
from sidecar.config.validate import Violation, unknown_fields, validate

REPO = Path(__file__).resolve().parents[1]

VALID = """\
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.1
  inbound:
  - port: 8080
    servicePort: 18080
    tags:
      kuma.io/service: web
      kuma.io/protocol: http
  outbound:
  - port: 20000
    tags:
      kuma.io/service: backend
"""


def dp(body: str) -> str:
    """A Dataplane document: the header plus the given (dedented) body."""
    return "type: Dataplane\nmesh: default\nname: web-1\n" + textwrap.dedent(body)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_dataplane(text, "dp.yaml")
    message = str(info.value)
    assert message.startswith("dp.yaml: ")
    return message


def assert_error(text: str, expected: str) -> None:
    message = error(text)
    assert expected in message, message


def with_inbound(inbound: str, address: str = "10.0.0.1") -> str:
    return dp(
        f"""\
        networking:
          address: {address}
          inbound:
        """
    ) + textwrap.indent(textwrap.dedent(inbound), "  ")


# --- valid documents -------------------------------------------------------------------------


def test_valid_document_builds_the_model() -> None:
    dataplane = parse_dataplane(VALID, "dp.yaml")
    assert dataplane.name == "web-1"
    assert dataplane.networking.inbound[0].service == "web"
    assert dataplane.networking.inbound[0].service_port == 18080
    assert dataplane.networking.outbound[0].service == "backend"
    assert validate(__import__("yaml").safe_load(VALID)) == []


def test_inbound_with_only_a_port_is_valid() -> None:
    dataplane = parse_dataplane(
        with_inbound(
            """\
            - port: 8080
              tags:
                kuma.io/service: web
            """
        ),
        "dp.yaml",
    )
    inbound = dataplane.networking.inbound[0]
    assert (inbound.address, inbound.port) == ("10.0.0.1", 8080)
    assert (inbound.service_address, inbound.service_port) == ("10.0.0.1", 8080)


def test_full_document_is_valid() -> None:
    dataplane = parse_dataplane(
        dp(
            """\
            networking:
              address: web.example.internal
              advertisedAddress: 203.0.113.7
              admin:
                port: 9902
              transparentProxying:
                redirectPortInbound: 15006
                redirectPortOutbound: 15001
                directAccessServices: ["*"]
                reachableServices: [backend]
                ipFamilyMode: 2
              inbound:
              - port: 8080
                serviceAddress: 127.0.0.1
                state: NotReady
                name: main
                protocol: HTTP2
                health:
                  ready: false
                serviceProbe:
                  interval: 2s
                  timeout: .5s
                  unhealthyThreshold: 3
                  healthyThreshold: 1
                  tcp: {}
                tags:
                  kuma.io/service: web
                  version: v1.2_rc-3:x
                  example.com/team: shop
              outbound:
              - port: 20001
                address: 127.0.0.2
                backendRef:
                  kind: MeshService
                  name: backend
                  port: 80
              - port: 20002
                backendRef:
                  kind: MeshExternalService
                  labels:
                    team: payments
            probes:
              port: 9000
              endpoints:
              - inboundPort: 8080
                inboundPath: /healthz
                path: /8080/healthz
            metrics:
              type: prometheus
              conf:
                port: 5671
                path: /stats
            """
        ),
        "dp.yaml",
    )
    net = dataplane.networking
    assert net.transparent_proxying is not None
    assert net.transparent_proxying.ip_family_mode == "IPv4"
    assert net.inbound[0].state == "NotReady" and not net.inbound[0].ready
    assert net.inbound[0].protocol == "http2"
    assert net.inbound[0].service_probe is not None
    assert net.inbound[0].service_probe.timeout == 0.5
    assert net.outbound[0].service == "backend"
    assert dataplane.metrics is not None and dataplane.metrics.port == 5671


def test_nulls_mean_absent() -> None:
    dataplane = parse_dataplane(
        dp(
            """\
            networking:
              address: 10.0.0.1
              gateway:
                type:
                tags:
                  kuma.io/service: edge
              transparentProxying:
                ipFamilyMode:
            metrics:
              type:
            """
        ),
        "dp.yaml",
    )
    assert dataplane.networking.gateway is not None
    assert dataplane.networking.gateway.type == "DELEGATED"
    assert dataplane.networking.transparent_proxying is not None
    assert dataplane.networking.transparent_proxying.ip_family_mode == "UnSpecified"
    assert dataplane.metrics is not None and dataplane.metrics.type == "prometheus"


# --- networking ------------------------------------------------------------------------------


def test_networking_must_be_defined() -> None:
    assert_error(dp(""), "networking: must be defined")


def test_networking_needs_an_inbound_or_a_gateway() -> None:
    assert_error(
        dp(
            """\
            networking:
              address: 10.0.0.1
              outbound:
              - port: 20000
                tags:
                  kuma.io/service: backend
            """
        ),
        "networking: has to contain at least one inbound interface or gateway",
    )


def test_address_cannot_be_empty() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n", address='""')
    assert_error(text, "networking.address: address can't be empty")
    text = dp("networking:\n  inbound:\n  - port: 8080\n    tags: {kuma.io/service: web}\n")
    assert_error(text, "networking.address: address can't be empty")


@pytest.mark.parametrize("address", ["0.0.0.0", "'::'"])
def test_address_must_not_be_a_wildcard(address: str) -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n", address=address)
    assert_error(text, "networking.address: must not be 0.0.0.0 or ::")


@pytest.mark.parametrize("address", ["not_a_host!", "-bad.example", "10.0.0.256", "a..b"])
def test_address_must_be_an_ip_or_a_domain_name(address: str) -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n", address=address)
    assert_error(text, "networking.address: address has to be valid IP address or domain name")


@pytest.mark.parametrize("address", ["myapp_web_1", "_web.example", "web-1.local."])
def test_address_takes_the_names_kuma_takes(address: str) -> None:
    """Kuma's name check (govalidator's IsDNSName) allows `_` in labels: Docker Compose v1
    names containers `project_service_1`."""
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n", address=address)
    assert parse_dataplane(text, "dp.yaml").networking.address == address


def test_advertised_address_is_checked_like_address() -> None:
    text = dp(
        """\
        networking:
          address: 10.0.0.1
          advertisedAddress: 0.0.0.0
          gateway:
            tags: {kuma.io/service: edge}
        """
    )
    assert_error(text, "networking.advertisedAddress: must not be 0.0.0.0 or ::")
    text = text.replace("0.0.0.0", "bad_name!")
    assert_error(
        text, "networking.advertisedAddress: address has to be valid IP address or domain name"
    )


# --- ports -----------------------------------------------------------------------------------

PORT_FIELDS = [
    ("networking.inbound[0].port", "inbound[0].port", 0),
    ("networking.inbound[0].servicePort", "inbound[0].servicePort", 65536),
    ("networking.outbound[0].port", "outbound[0].port", -1),
    ("networking.outbound[1].backendRef.port", "outbound[1].backendRef.port", 70000),
    ("networking.admin.port", "admin.port", 0),
    ("networking.transparentProxying.redirectPortInbound", "tp.inbound", 65536),
    ("networking.transparentProxying.redirectPortOutbound", "tp.outbound", 0),
    ("networking.transparentProxying.redirectPortInboundV6", "tp.v6", 99999),
    ("probes.port", "probes.port", 0),
    ("probes.endpoints[0].inboundPort", "probes.inboundPort", 65536),
    ("metrics.conf.port", "metrics.port", 100000),
]


GOOD_PORTS = {
    "inbound[0].port": 8080,
    "inbound[0].servicePort": 18080,
    "outbound[0].port": 20000,
    "outbound[1].backendRef.port": 80,
    "admin.port": 9901,
    "tp.inbound": 15006,
    "tp.outbound": 15001,
    "tp.v6": 15010,
    "probes.port": 9000,
    "probes.inboundPort": 8080,
    "metrics.port": 5670,
}


def document_with_port(marker: str, value: int) -> str:
    """A document using every kind of port, with the one named by marker set to value."""
    ports = {key: (value if key == marker else good) for key, good in GOOD_PORTS.items()}
    return dp(
        f"""\
        networking:
          address: 10.0.0.1
          admin:
            port: {ports["admin.port"]}
          transparentProxying:
            redirectPortInbound: {ports["tp.inbound"]}
            redirectPortOutbound: {ports["tp.outbound"]}
            redirectPortInboundV6: {ports["tp.v6"]}
          inbound:
          - port: {ports["inbound[0].port"]}
            servicePort: {ports["inbound[0].servicePort"]}
            tags: {{kuma.io/service: web}}
          outbound:
          - port: {ports["outbound[0].port"]}
            tags: {{kuma.io/service: backend}}
          - port: 20001
            backendRef:
              {{kind: MeshService, name: db, port: {ports["outbound[1].backendRef.port"]}}}
        probes:
          port: {ports["probes.port"]}
          endpoints:
          - inboundPort: {ports["probes.inboundPort"]}
            inboundPath: /ready
            path: /8080/ready
        metrics:
          conf:
            port: {ports["metrics.port"]}
        """
    )


def test_port_document_is_valid_with_good_ports() -> None:
    parse_dataplane(document_with_port("none", 0), "dp.yaml")


@pytest.mark.parametrize(("field", "marker", "bad"), PORT_FIELDS)
def test_every_port_is_range_checked(field: str, marker: str, bad: int) -> None:
    assert_error(document_with_port(marker, bad), f"{field}: port must be in the range [1, 65535]")


def test_missing_inbound_port_is_out_of_range_as_in_kuma() -> None:
    text = with_inbound("- tags: {kuma.io/service: web}\n")
    assert_error(text, "networking.inbound[0].port: port must be in the range [1, 65535]")


@pytest.mark.parametrize("bad", ['"8080"', "true", "80.5", "[80]"])
def test_port_of_the_wrong_type(bad: str) -> None:
    text = with_inbound(f"- port: {bad}\n  tags: {{kuma.io/service: web}}\n")
    assert_error(text, "networking.inbound[0].port: must be an integer")


# --- tags ------------------------------------------------------------------------------------


def test_inbound_service_tag_has_to_exist() -> None:
    text = with_inbound("- port: 8080\n  tags: {version: v1}\n")
    assert_error(text, 'networking.inbound[0].tags["kuma.io/service"]: tag has to exist')
    text = with_inbound("- port: 8080\n")
    assert_error(text, 'networking.inbound[0].tags["kuma.io/service"]: tag has to exist')


def test_tag_value_must_be_non_empty() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web, version: ''}\n")
    assert_error(text, 'networking.inbound[0].tags["version"]: tag value must be non-empty')
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web, version: }\n")
    assert_error(text, 'networking.inbound[0].tags["version"]: tag value must be non-empty')


def test_tag_value_characters() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web, team: a/b}\n")
    assert_error(
        text,
        'networking.inbound[0].tags["team"]: tag value must consist of alphanumeric characters, '
        "dots, dashes and underscores",
    )


def test_tag_name_characters() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web, 'bad key': x}\n")
    assert_error(
        text,
        'networking.inbound[0].tags["bad key"]: tag name must consist of alphanumeric '
        "characters, dots, dashes, slashes and underscores",
    )


def test_tag_rules_apply_to_outbound_and_gateway_tags() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n") + textwrap.indent(
        "outbound:\n- port: 20000\n  tags: {kuma.io/service: 'back end'}\n", "  "
    )
    assert_error(
        text,
        'networking.outbound[0].tags["kuma.io/service"]: tag value must consist of alphanumeric',
    )
    text = dp(
        """\
        networking:
          address: 10.0.0.1
          gateway:
            tags: {kuma.io/service: edge, 'a b': x}
        """
    )
    assert_error(text, 'networking.gateway.tags["a b"]: tag name must consist of alphanumeric')


def test_tag_values_must_be_strings() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web, version: 2}\n")
    assert_error(text, 'networking.inbound[0].tags["version"]: tag value must be a string')


def test_tags_must_be_a_mapping() -> None:
    text = with_inbound("- port: 8080\n  tags: [web]\n")
    message = error(text)
    assert "networking.inbound[0].tags: must be a mapping" in message
    assert "tag has to exist" not in message


# --- protocol --------------------------------------------------------------------------------


def test_protocol_tag_must_be_known() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web, kuma.io/protocol: x}\n")
    assert_error(
        text,
        'networking.inbound[0].tags["kuma.io/protocol"]: tag "kuma.io/protocol" has an invalid '
        'value "x". Allowed values: grpc, http, http2, kafka, tcp',
    )


def test_protocol_tag_is_case_insensitive() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web, kuma.io/protocol: GRPC}\n")
    assert parse_dataplane(text, "dp.yaml").networking.inbound[0].protocol == "grpc"


def test_protocol_field_must_be_known() -> None:
    text = with_inbound("- port: 8080\n  protocol: websocket\n  tags: {kuma.io/service: web}\n")
    assert_error(
        text,
        'networking.inbound[0].protocol: has an invalid value "websocket". '
        "Allowed values: grpc, http, http2, kafka, tcp",
    )


# --- addresses -------------------------------------------------------------------------------


def test_inbound_address_must_be_an_ip() -> None:
    text = with_inbound("- port: 8080\n  address: web.local\n  tags: {kuma.io/service: web}\n")
    assert_error(text, "networking.inbound[0].address: address has to be valid IP address")


def test_inbound_service_address_must_be_an_ip() -> None:
    text = with_inbound(
        "- port: 8080\n  serviceAddress: localhost\n  tags: {kuma.io/service: web}\n"
    )
    assert_error(
        text, "networking.inbound[0].serviceAddress: serviceAddress has to be valid IP address"
    )


def test_empty_optional_addresses_are_unset() -> None:
    text = with_inbound("- port: 8080\n  address: ''\n  tags: {kuma.io/service: web}\n")
    text = text.replace("  inbound:", "  advertisedAddress: ''\n  inbound:")
    dataplane = parse_dataplane(text, "dp.yaml")
    assert dataplane.networking.reachable_address == "10.0.0.1"
    assert dataplane.networking.inbound[0].address == "10.0.0.1"


def test_outbound_address_must_be_an_ip() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n") + textwrap.indent(
        "outbound:\n- port: 20000\n  address: nowhere\n  tags: {kuma.io/service: db}\n", "  "
    )
    assert_error(text, "networking.outbound[0].address: address has to be valid IP address")


SAME_PAIR = "networking.inbound[0].serviceAddress: serviceAddress and servicePort has to differ"
SAME_PORT = "networking.inbound[0].servicePort: serviceAddress and servicePort has to differ"
REDIRECTED = "  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001}\n"


@pytest.mark.parametrize(
    ("inbound", "error"),
    [
        # Kuma's rule: serviceAddress on networking.address or inbound.address, same port
        ("- port: 8080\n  serviceAddress: 10.0.0.1\n", SAME_PAIR),
        ("- port: 8080\n  serviceAddress: 10.0.0.2\n  address: 10.0.0.2\n", SAME_PAIR),
        ("- port: 8080\n  servicePort: 8080\n  serviceAddress: 10.0.0.1\n", SAME_PAIR),
        ("- port: 8080\n  address: 10.0.0.2\n  serviceAddress: 10.0.0.1\n", SAME_PAIR),
        # ours: the sidecar would bind the app's own socket (named where it was written)
        ("- port: 8080\n  servicePort: 8080\n", SAME_PORT),
    ],
)
def test_service_pair_must_differ_from_the_listener(inbound: str, error: str) -> None:
    assert_error(with_inbound(inbound + "  tags: {kuma.io/service: web}\n"), error)


@pytest.mark.parametrize(
    "inbound",
    [
        "- port: 8080\n",
        "- port: 8080\n  servicePort: 8081\n",
        "- port: 8080\n  serviceAddress: 127.0.0.1\n",
        "- port: 8080\n  address: 10.0.0.2\n  serviceAddress: 10.0.0.3\n",
        "- port: 8080\n  servicePort: 8081\n  serviceAddress: 10.0.0.1\n",
    ],
)
def test_service_pair_that_differs_is_valid(inbound: str) -> None:
    parse_dataplane(with_inbound(inbound + "  tags: {kuma.io/service: web}\n"), "dp.yaml")


def test_the_apps_own_port_is_valid_when_inbound_traffic_is_redirected() -> None:
    """With transparent proxying an inbound binds nothing: `port` is the app's own port, and
    `servicePort` may say so again (Kuma accepts it); Kuma's own rule still holds."""
    inbound = "- port: 8080\n  servicePort: 8080\n  tags: {kuma.io/service: web}\n"
    dataplane = parse_dataplane(with_inbound(inbound) + REDIRECTED, "dp.yaml")
    assert dataplane.networking.inbound[0].service_port == 8080
    inbound = "- port: 8080\n  serviceAddress: 10.0.0.1\n  tags: {kuma.io/service: web}\n"
    assert_error(with_inbound(inbound) + REDIRECTED, SAME_PAIR)


# --- admin -----------------------------------------------------------------------------------


def test_admin_port_must_differ_from_inbound() -> None:
    text = with_inbound("- port: 9901\n  servicePort: 8080\n  tags: {kuma.io/service: web}\n")
    assert_error(text, "networking.admin.port: must differ from inbound")
    text = with_inbound("- port: 8080\n  servicePort: 9000\n  serviceAddress: 127.0.0.1\n")
    text += "    tags: {kuma.io/service: web}\n  admin: {port: 9000}\n"
    assert_error(text, "networking.admin.port: must differ from inbound")


def test_admin_port_must_differ_from_outbound() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n") + textwrap.indent(
        "admin: {port: 20000}\noutbound:\n- port: 20000\n  tags: {kuma.io/service: db}\n", "  "
    )
    assert_error(text, "networking.admin.port: must differ from outbound")


def test_admin_port_on_another_interface_is_fine() -> None:
    text = with_inbound(
        "- port: 9901\n  address: 10.0.0.2\n  servicePort: 8080\n  tags: {kuma.io/service: web}\n"
    ) + textwrap.indent("outbound:\n- port: 9901\n  address: 127.0.0.9\n", "  ")
    text += "    tags: {kuma.io/service: db}\n"
    parse_dataplane(text, "dp.yaml")


# --- gateways --------------------------------------------------------------------------------


def gateway(kind: str, extra: str = "") -> str:
    return dp(
        f"""\
        networking:
          address: 10.0.0.1
          gateway:
            type: {kind}
            tags: {{kuma.io/service: edge}}
        """
    ) + textwrap.indent(textwrap.dedent(extra), "  ")


def test_delegated_gateway_has_no_inbounds() -> None:
    inbound = "inbound:\n- port: 8080\n  tags: {kuma.io/service: web}\n"
    assert_error(
        gateway("DELEGATED", inbound),
        "networking.inbound: inbound cannot be defined for delegated gateways",
    )
    parse_dataplane(gateway("DELEGATED", "outbound:\n- {port: 2000, tags: {kuma.io/service: a}}"))


def test_builtin_gateway_has_no_inbounds_or_outbounds() -> None:
    extra = (
        "inbound:\n- port: 8080\n  tags: {kuma.io/service: web}\n"
        "outbound:\n- port: 20000\n  tags: {kuma.io/service: db}\n"
    )
    message = error(gateway("BUILTIN", extra))
    assert "networking.inbound: inbound cannot be defined for builtin gateways" in message
    assert "networking.outbound: outbound cannot be defined for builtin gateways" in message
    assert parse_dataplane(gateway("1")).networking.gateway.type == "BUILTIN"  # type: ignore[union-attr]


def test_builtin_gateway_has_no_probes() -> None:
    text = gateway("BUILTIN") + "probes:\n  endpoints: []\n"
    assert_error(text, "networking.probes: probes cannot be defined for builtin gateways")


def test_gateway_type_is_an_enum() -> None:
    assert_error(
        gateway("EXTERNAL"),
        'networking.gateway.type: invalid value "EXTERNAL". Allowed values: DELEGATED, BUILTIN',
    )


def test_gateway_needs_a_service() -> None:
    text = dp("networking:\n  address: 10.0.0.1\n  gateway:\n    tags: {version: v1}\n")
    assert_error(text, 'networking.gateway.tags: mandatory tag "kuma.io/service" is missing')


def test_gateway_protocol_must_be_tcp() -> None:
    text = dp(
        "networking:\n  address: 10.0.0.1\n  gateway:\n"
        "    tags: {kuma.io/service: edge, kuma.io/protocol: http}\n"
    )
    assert_error(
        text,
        'networking.gateway.tags["kuma.io/protocol"]: other values than tcp are not allowed, '
        'provided value "http"',
    )


# --- outbounds -------------------------------------------------------------------------------


def with_outbound(outbound: str) -> str:
    return with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n") + textwrap.indent(
        "outbound:\n" + textwrap.dedent(outbound), "  "
    )


def test_outbound_needs_a_service() -> None:
    assert_error(
        with_outbound("- port: 20000\n"),
        'networking.outbound[0].tags: mandatory tag "kuma.io/service" is missing',
    )
    assert_error(
        with_outbound("- port: 20000\n  tags: {version: v1}\n"),
        'networking.outbound[0].tags: mandatory tag "kuma.io/service" is missing',
    )


def test_outbound_with_backend_ref_needs_no_tags() -> None:
    dataplane = parse_dataplane(
        with_outbound("- port: 20000\n  backendRef: {name: db, port: 5432}\n"), "dp.yaml"
    )
    outbound = dataplane.networking.outbound[0]
    assert outbound.service == "db"
    assert outbound.backend_ref is not None and outbound.backend_ref.kind == "MeshService"


def test_backend_ref_with_labels_only_builds() -> None:
    text = with_outbound("- port: 20000\n  backendRef: {labels: {team: a}, port: 80}\n")
    ref = parse_dataplane(text, "dp.yaml").networking.outbound[0].backend_ref
    assert ref is not None and dict(ref.labels or {}) == {"team": "a"}


def test_backend_ref_needs_name_or_labels() -> None:
    assert_error(
        with_outbound("- port: 20000\n  backendRef: {kind: MeshService, port: 80}\n"),
        "networking.outbound[0].backendRef: either 'name' or 'labels' should be specified",
    )


def test_backend_ref_and_tags_are_exclusive() -> None:
    assert_error(
        with_outbound(
            "- port: 20000\n  backendRef: {name: db, port: 80}\n  tags: {kuma.io/service: db}\n"
        ),
        "networking.outbound[0].backendRef: both backendRef and tags/service cannot be defined",
    )


def test_backend_ref_kind() -> None:
    assert_error(
        with_outbound("- port: 20000\n  backendRef: {kind: Service, name: db, port: 80}\n"),
        "networking.outbound[0].backendRef.kind: invalid value. Available values are: "
        "MeshExternalService,MeshMultiZoneService,MeshService",
    )


# --- service probes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("interval", "0s"),
        ("timeout", "0.0s"),
        ("unhealthyThreshold", "0"),
        ("healthyThreshold", "-2"),
    ],
)
def test_service_probe_values_must_be_positive(name: str, value: str) -> None:
    text = with_inbound(
        f"- port: 8080\n  tags: {{kuma.io/service: web}}\n  serviceProbe: {{{name}: {value}}}\n"
    )
    assert_error(text, f"networking.inbound[0].serviceProbe.{name}: must have a positive value")


@pytest.mark.parametrize("value", ["5", "5ms", "1m", "'-1s'", "s", "[1s]"])
def test_service_probe_durations_are_seconds(value: str) -> None:
    text = with_inbound(
        f"- port: 8080\n  tags: {{kuma.io/service: web}}\n  serviceProbe: {{interval: {value}}}\n"
    )
    assert_error(
        text,
        'networking.inbound[0].serviceProbe.interval: must be a duration in seconds, e.g. "1s"',
    )


# --- inbound enums and health ----------------------------------------------------------------


def test_inbound_state() -> None:
    text = with_inbound("- port: 8080\n  state: Gone\n  tags: {kuma.io/service: web}\n")
    assert_error(
        text,
        'networking.inbound[0].state: invalid value "Gone". '
        "Allowed values: Ready, NotReady, Ignored",
    )
    for state, expected in (("2", "Ignored"), ("Ready", "Ready"), ("1", "NotReady")):
        text = with_inbound(f"- port: 8080\n  state: {state}\n  tags: {{kuma.io/service: web}}\n")
        assert parse_dataplane(text, "dp.yaml").networking.inbound[0].state == expected
    text = with_inbound("- port: 8080\n  state: true\n  tags: {kuma.io/service: web}\n")
    assert_error(text, "networking.inbound[0].state: invalid value")


def test_health_ready_is_a_boolean() -> None:
    text = with_inbound("- port: 8080\n  health: {ready: 'no'}\n  tags: {kuma.io/service: web}\n")
    assert_error(text, "networking.inbound[0].health.ready: must be a boolean")


# --- probes and metrics ----------------------------------------------------------------------


def probes(endpoint: str) -> str:
    return with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n") + (
        "probes:\n  endpoints:\n  - " + endpoint + "\n"
    )


def test_probe_paths_must_be_url_paths() -> None:
    assert_error(
        probes("{inboundPort: 8080, inboundPath: /ready, path: ready}"),
        "probes.endpoints[0].path: should be a valid URL Path",
    )
    assert_error(
        probes("{inboundPort: 8080, inboundPath: 'x y', path: /8080/ready}"),
        "probes.endpoints[0].inboundPath: should be a valid URL Path",
    )
    assert_error(
        probes("{inboundPort: 8080}"), "probes.endpoints[0].path: should be a valid URL Path"
    )


def test_probe_defaults() -> None:
    dataplane = parse_dataplane(probes("{inboundPort: 8080, path: /8080/}"), "dp.yaml")
    assert dataplane.probes is not None
    assert dataplane.probes.port == 9000
    assert dataplane.probes.endpoints[0].inbound_path == "/"


def test_metrics_type_is_prometheus() -> None:
    text = with_inbound("- port: 8080\n  tags: {kuma.io/service: web}\n") + (
        "metrics:\n  type: statsd\n"
    )
    assert_error(text, 'metrics.type: unknown backend type. Available backends: "prometheus"')


# --- name and mesh ---------------------------------------------------------------------------


def named(name: str, mesh: str = "default") -> str:
    body = "networking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n"
    body += "    tags: {kuma.io/service: web}\n"
    return f"type: Dataplane\nmesh: {mesh}\nname: {name}\n{body}"


def test_name_must_be_an_rfc1123_subdomain() -> None:
    assert_error(
        named("Web_1"),
        "name: invalid characters. A lowercase RFC 1123 subdomain must consist of lower case "
        "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
        "character",
    )
    parse_dataplane(named("web-1.zone-a"), "dp.yaml")


def test_name_must_be_present() -> None:
    text = named("x").replace("name: x\n", "")
    assert_error(text, "name: cannot be empty")
    assert_error(named("''"), "name: cannot be empty")
    assert_error(named("a" * 254), "name: value length must less or equal 253")


def test_mesh_characters() -> None:
    assert_error(
        named("web", mesh="Prod!"),
        "mesh: invalid characters. Valid characters are numbers, lowercase latin letters and "
        "'-', '_', '.' symbols.",
    )
    assert parse_dataplane(named("web", mesh="team_a"), "dp.yaml").mesh == "team_a"
    text = named("web").replace("mesh: default\n", "")
    assert parse_dataplane(text, "dp.yaml").mesh == "default"


# --- beyond Kuma: listeners on one address:port ----------------------------------------------


def test_two_listeners_on_one_address_and_port() -> None:
    text = with_inbound("- port: 20000\n  address: 127.0.0.1\n  tags: {kuma.io/service: web}\n")
    text += textwrap.indent(
        "outbound:\n- port: 20001\n  tags: {kuma.io/service: a}\n"
        "- port: 20000\n  tags: {kuma.io/service: b}\n",
        "  ",
    )
    assert_error(
        text,
        "networking.outbound[1]: address 127.0.0.1:20000 is already used by networking.inbound[0]",
    )


def test_two_inbounds_on_one_port() -> None:
    text = with_inbound(
        "- port: 8080\n  tags: {kuma.io/service: web}\n"
        "- port: 8080\n  servicePort: 9090\n  tags: {kuma.io/service: api}\n"
    )
    assert_error(
        text,
        "networking.inbound[1]: address 10.0.0.1:8080 is already used by networking.inbound[0]",
    )


def test_same_port_on_different_addresses_is_fine() -> None:
    text = with_inbound("- port: 20000\n  tags: {kuma.io/service: web}\n")
    text += "  outbound:\n  - port: 20000\n    tags: {kuma.io/service: a}\n"
    parse_dataplane(text, "dp.yaml")


# --- the whole picture -----------------------------------------------------------------------


def test_all_violations_are_reported_together() -> None:
    text = dp(
        """\
        networking:
          address: 0.0.0.0
          inbound:
          - port: 70000
            tags:
              kuma.io/protocol: smtp
          outbound:
          - port: 20000
        metrics:
          type: statsd
        """
    )
    message = error(text)
    expected = [
        "networking.address: must not be 0.0.0.0 or ::",
        "networking.inbound[0].port: port must be in the range [1, 65535]",
        'networking.inbound[0].tags["kuma.io/protocol"]: tag "kuma.io/protocol" has an invalid '
        'value "smtp"',
        'networking.inbound[0].tags["kuma.io/service"]: tag has to exist',
        'networking.outbound[0].tags: mandatory tag "kuma.io/service" is missing',
        'metrics.type: unknown backend type. Available backends: "prometheus"',
    ]
    for part in expected:
        assert part in message, message
    assert message.count("; ") == len(expected) - 1, message
    assert message == "dp.yaml: " + "; ".join(
        f"{v.field}: {v.message}" for v in validate(__import__("yaml").safe_load(text))
    )


def test_validate_returns_violations() -> None:
    assert validate({"name": "x"}) == [Violation("networking", "must be defined")]
    assert validate([]) == [Violation("", "a Dataplane must be a YAML mapping")]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "doc",
    [
        {"networking": []},
        {"networking": {"inbound": {}, "outbound": "x", "gateway": 3}},
        {"networking": {"inbound": [None, 3, {"tags": {1: 2, None: None}}]}},
        {"networking": {"address": 5, "admin": [], "transparentProxying": {"ipFamilyMode": []}}},
        {"name": 3, "mesh": [], "probes": {"endpoints": [1]}, "metrics": {"conf": 2}},
        {"networking": {"gateway": {"type": [], "tags": {"kuma.io/protocol": None}}}},
        {"networking": {"outbound": [{"backendRef": {"labels": {1: [2]}, "kind": {}}}]}},
    ],
)
def test_wrong_types_are_violations_never_exceptions(doc: dict[str, object]) -> None:
    violations = validate(doc)
    assert violations
    assert all(isinstance(v, Violation) for v in violations)


def test_wrong_type_messages() -> None:
    violations = validate({"name": "x", "networking": {"address": "10.0.0.1", "inbound": {}}})
    assert Violation("networking.inbound", "must be a list") in violations
    violations = validate({"name": "x", "networking": {"address": "10.0.0.1", "admin": 9}})
    assert Violation("networking.admin", "must be a mapping") in violations


# --- loading: YAML errors, variables, unknown fields, the CLI --------------------------------


def test_yaml_syntax_error_names_file_line_and_column() -> None:
    message = error("type: Dataplane\nnetworking:\n  address: [10.0.0.1\n  inbound: 3\n")
    assert message.startswith("dp.yaml: YAML syntax error at line ")
    assert ", column " in message


def test_yaml_scalars_python_cannot_build_are_config_errors() -> None:
    assert "YAML error" in error("type: Dataplane\nname: 2001-13-45\n")


def test_not_a_mapping_and_wrong_type() -> None:
    assert_error("- a\n- b\n", "dp.yaml: a Dataplane must be a YAML mapping")
    assert_error("type: Mesh\n", 'type: must be "Dataplane"')


def test_dataplane_vars_are_substituted() -> None:
    template = VALID.replace("10.0.0.1", "{{ IP }}").replace("8080", "{{PORT}}")
    text = substitute(template, {"IP": "10.1.2.3", "PORT": "8181"}, "dp.yaml")
    dataplane = parse_dataplane(text, "dp.yaml")
    assert dataplane.networking.address == "10.1.2.3"
    assert dataplane.networking.inbound[0].port == 8181
    same = parse_dataplane(template, "dp.yaml", {"IP": "10.1.2.3", "PORT": "8181"})
    assert same == dataplane


def test_missing_dataplane_var_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        substitute("address: {{ IP }}\nport: {{ PORT }}", {"PORT": "1"}, "dp.yaml")
    assert str(info.value) == ("dp.yaml: no value for template variable(s) IP (--dataplane-var)")


def test_unknown_fields_are_listed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    text = VALID.replace("    servicePort: 18080", "    servicePrt: 18080") + "spec: {}\n"
    text = text.replace("  outbound:\n", "  outbound:\n  - port: 20001\n    service: x\n")
    text = text.replace("    service: x\n", "    service: x\n    tags: {kuma.io/service: y}\n")
    doc = __import__("yaml").safe_load(text)
    assert unknown_fields(doc) == [
        "networking.inbound[0].servicePrt",
        "networking.outbound[0].service",
        "spec",
    ]
    with caplog.at_level(logging.WARNING, logger="sidecar.config"):
        parse_dataplane(text, "dp.yaml")
    assert "networking.inbound[0].servicePrt" in caplog.text


def test_free_form_mappings_have_no_unknown_fields() -> None:
    doc = {
        "labels": {"anything": "goes"},
        "networking": {"inbound": [{"tags": {"x": "y"}}], "gateway": {"tags": {"z": "w"}}},
        "metrics": {"conf": {"envoy": {"usedOnly": True}, "bogus": 1}},
        "probes": {"endpoints": [{"path": "/", "extra": 1}]},
    }
    assert unknown_fields(doc) == ["metrics.conf.bogus", "probes.endpoints[0].extra"]


def test_cli_validate(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(VALID)
    (tmp_path / "bad.yaml").write_text(VALID.replace("port: 8080", "port: 0"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "validate", "good.yaml", "bad.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "good.yaml: ok",
        "bad.yaml: networking.inbound[0].port: port must be in the range [1, 65535]",
    ]


def test_cli_validate_with_vars(tmp_path: Path) -> None:
    (tmp_path / "dp.yaml").write_text(VALID.replace("10.0.0.1", "{{ IP }}"))
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "validate", "--dataplane-var", "IP=10.9.9.9", "dp.yaml"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "dp.yaml: ok\n"), result.stderr
