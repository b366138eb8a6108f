"""Property tests for config loading: whatever the file holds, the only failure is a ConfigError,
and whatever validation accepts, the model builder can build."""

from __future__ import annotations

import copy
import os
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.config import model
from sidecar.config.dataplane import ConfigError, dataplane_from_document, parse_dataplane
from sidecar.config.validate import unknown_fields, validate

# FUZZ_EXAMPLES=20000 for a longer hunt; the default keeps the suite fast.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID: dict[str, Any] = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {
        "address": "10.0.0.1",
        "advertisedAddress": "203.0.113.1",
        "admin": {"port": 9902},
        "transparentProxying": {
            "redirectPortInbound": 15006,
            "redirectPortOutbound": 15001,
            "directAccessServices": ["*"],
            "reachableServices": ["backend"],
            "ipFamilyMode": "IPv4",
        },
        "inbound": [
            {
                "port": 8080,
                "servicePort": 18080,
                "serviceAddress": "127.0.0.1",
                "state": "Ready",
                "name": "main",
                "protocol": "http",
                "health": {"ready": True},
                "serviceProbe": {
                    "interval": "1s",
                    "timeout": "2s",
                    "unhealthyThreshold": 3,
                    "healthyThreshold": 1,
                    "tcp": {},
                },
                "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http", "version": "v1"},
            }
        ],
        "outbound": [
            {"port": 20000, "tags": {"kuma.io/service": "backend"}},
            {"port": 20001, "address": "127.0.0.2", "backendRef": {"name": "db", "port": 5432}},
        ],
    },
    "probes": {
        "port": 9000,
        "endpoints": [{"inboundPort": 8080, "inboundPath": "/healthz", "path": "/8080/healthz"}],
    },
    "metrics": {"type": "prometheus", "name": "prom", "conf": {"port": 5670, "path": "/metrics"}},
}

# Field names of the schema, so that generated documents reach the rules, not just the top level.
FIELDS = sorted(
    {
        *"type mesh name labels networking probes metrics address advertisedAddress".split(),
        *"inbound outbound gateway transparentProxying admin port servicePort".split(),
        *"serviceAddress tags health ready serviceProbe interval timeout tcp state".split(),
        *"unhealthyThreshold healthyThreshold protocol backendRef kind endpoints".split(),
        *"inboundPort inboundPath path conf redirectPortInbound ipFamilyMode".split(),
        "kuma.io/service",
        "kuma.io/protocol",
    }
)

# Values close to the edges of the rules: valid ones, and ones just past them.
PLAUSIBLE = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1,
        2,
        -1,
        80,
        8080,
        9901,
        20000,
        65535,
        65536,
        1.5,
        "",
        "x",
        "web",
        "8080",
        "10.0.0.1",
        "127.0.0.1",
        "0.0.0.0",
        "::1",
        "localhost",
        "1s",
        "0s",
        ".5s",
        "/",
        "/ready",
        "tcp",
        "HTTP",
        "grpc",
        "Ready",
        "Ignored",
        "BUILTIN",
        "DELEGATED",
        "IPv6",
        "prometheus",
        "MeshService",
        "MeshExternalService",
        {},
        [],
        {"kuma.io/service": "a"},
        {"kuma.io/service": "a", "kuma.io/protocol": "kafka"},
        {"name": "db"},
        {"labels": {"team": "a"}},
        [{"port": 8081, "tags": {"kuma.io/service": "b"}}],
    ]
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | PLAUSIBLE
)
KEYS = st.sampled_from(FIELDS) | st.text(max_size=8) | st.integers(-3, 3) | st.none()
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)


def load(doc: Any) -> model.Dataplane | None:
    """dataplane_from_document, allowing only a ConfigError."""
    try:
        return dataplane_from_document(doc, "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
        return None


def check_model(dataplane: model.Dataplane) -> None:
    """What code holding a model may rely on."""
    assert dataplane.name and dataplane.mesh
    for inbound in dataplane.networking.inbound:
        assert inbound.service
        assert inbound.protocol in model.PROTOCOLS
        assert 1 <= inbound.port <= 65535 and 1 <= inbound.service_port <= 65535
        assert isinstance(inbound.serving, bool)
    for outbound in dataplane.networking.outbound:
        assert 1 <= outbound.port <= 65535
    assert 1 <= dataplane.networking.admin_port <= 65535
    assert dataplane.services is not None


def test_the_valid_document_is_valid() -> None:
    assert validate(VALID) == []
    assert unknown_fields(VALID) == []
    dataplane = load(VALID)
    assert dataplane is not None
    check_model(dataplane)


# --- text ------------------------------------------------------------------------------------

YAML_BITS = st.sampled_from(
    [
        "type: Dataplane\n",
        "name: dp\n",
        "networking:\n",
        "  address: 10.0.0.1\n",
        "  inbound:\n",
        "  - port: 8080\n",
        "    tags: {kuma.io/service: web}\n",
        "  gateway: {tags: {kuma.io/service: gw}}\n",
        "---\n",
        "- ",
        "  ",
        ": ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "&a ",
        "*a",
        "!!binary ",
        "!!int ",
        "!!python/object ",
        "? ",
        "2001-13-45",
        "2001-01-01 25:00:00",
        "{{ X }}",
        "{{X}}",
        '"',
        "'",
        "#",
        "\t",
        "\n",
        "\x00",
        "port",
        "8080",
        "~",
        "|\n",
    ]
)


@FUZZ
@given(st.text(max_size=200) | st.lists(YAML_BITS | st.text(max_size=3), max_size=30).map("".join))
@example("!!int ")  # IndexError inside PyYAML
@example("name: 2001-13-45")  # ValueError inside PyYAML
@example("[" * 2000)  # deep nesting
def test_any_text_fails_only_with_config_error(text: str) -> None:
    try:
        dataplane = parse_dataplane(text, "fuzz.yaml", {"X": "1"})
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
    else:
        check_model(dataplane)


# --- documents -------------------------------------------------------------------------------


@FUZZ
@given(VALUES)
def test_any_document_fails_only_with_config_error(doc: Any) -> None:
    unknown_fields(doc)  # must not raise either
    if isinstance(doc, dict):
        doc = {**doc, "type": "Dataplane"}
    dataplane = load(doc)
    if dataplane is not None:
        check_model(dataplane)


@FUZZ
@given(st.dictionaries(st.sampled_from(["networking", "name", "mesh", "probes"]), VALUES))
def test_any_top_level_fails_only_with_config_error(doc: dict[str, Any]) -> None:
    dataplane = load({"type": "Dataplane", **doc})
    if dataplane is not None:
        check_model(dataplane)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document: mapping keys and list indexes."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


VALID_PATHS = paths(VALID)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """The valid document with a few places replaced, removed, or given an extra key."""
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(VALID_PATHS))
        parent: Any = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(PLAUSIBLE | VALUES)
            elif action == "remove":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(KEYS)] = draw(PLAUSIBLE)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation changed the shape: the path is gone
    return doc


@FUZZ
@given(mutated())
def test_mutated_document_fails_only_with_config_error(doc: dict[str, Any]) -> None:
    dataplane = load(doc)
    if dataplane is not None:
        check_model(dataplane)


@FUZZ
@given(mutated())
def test_accepted_document_builds_and_round_trips(doc: dict[str, Any]) -> None:
    """validate() accepting a document means the builder works on it, and so does the same
    document written out as YAML and read back."""
    doc["type"] = "Dataplane"
    if validate(doc):
        return
    dataplane = load(doc)
    assert dataplane is not None
    check_model(dataplane)
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    again = parse_dataplane(text, "fuzz.yaml")
    assert again.networking == dataplane.networking
