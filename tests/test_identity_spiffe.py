"""SPIFFE ids, the two identity checks, SNI, source tags and x-forwarded-client-cert."""

from __future__ import annotations

import ast
import inspect

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config.dataplane import parse_dataplane
from sidecar.identity import ca, spiffe
from sidecar.identity.spiffe import IdentityError

WEB = [
    "spiffe://default/web",
    "kuma://kuma.io/service/web",
    "kuma://kuma.io/zone/east",
    "kuma://version/v1",
]


def test_module_is_pure():
    tree = ast.parse(inspect.getsource(spiffe))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"ssl", "socket", "asyncio"}


def test_parse_spiffe_id():
    ident = spiffe.parse_spiffe_id("spiffe://default/backend_kuma-demo_svc_8080")
    assert ident == spiffe.SpiffeId("default", "backend_kuma-demo_svc_8080")
    assert str(ident) == "spiffe://default/backend_kuma-demo_svc_8080"
    for bad in ["spiffe://default", "spiffe://default/", "spiffe:///web", "kuma://version/v1", ""]:
        with pytest.raises(IdentityError):
            spiffe.parse_spiffe_id(bad)


def test_verify_client_returns_the_callers_service():
    assert spiffe.verify_client(WEB, "default") == "web"
    two = ["spiffe://default/web", "spiffe://default/admin", "spiffe://other/x"]
    assert spiffe.verify_client(two, "default") == "admin"
    assert spiffe.client_services(two, "default") == ["admin", "web"]


@pytest.mark.parametrize(
    "uris",
    [
        [],
        ["spiffe://other/web", "kuma://kuma.io/service/web"],
        ["spiffe://default"],
        ["spiffe://default/"],
        ["spiffe://defaultx/web"],
        ["https://default/web"],
    ],
)
def test_verify_client_refuses_other_meshes_and_no_identity(uris):
    with pytest.raises(IdentityError) as info:
        spiffe.verify_client(uris, "default")
    message = str(info.value)
    assert "spiffe://default/" in message
    assert info.value.found == tuple(uris)
    if uris:
        assert uris[0] in message
    else:
        assert "no URI SAN" in message


def test_verify_server_requires_the_exact_service():
    spiffe.verify_server(WEB, "default", "web")
    spiffe.verify_server(["spiffe://default/a", "spiffe://default/web"], "default", "web")
    for service, mesh in [("web2", "default"), ("we", "default"), ("web", "other")]:
        with pytest.raises(IdentityError) as info:
            spiffe.verify_server(WEB, mesh, service)
        assert f"spiffe://{mesh}/{service}" in str(info.value)
        assert "spiffe://default/web" in str(info.value)  # what was found
    with pytest.raises(IdentityError, match="no URI SAN"):
        spiffe.verify_server([], "default", "web")
    # A kuma:// tag is not an identity.
    with pytest.raises(IdentityError):
        spiffe.verify_server(["kuma://kuma.io/service/web"], "default", "web")


def test_identities_of_certificate_and_der():
    dataplane = parse_dataplane(
        "type: Dataplane\nmesh: default\nname: w\nnetworking:\n  address: 127.0.0.1\n"
        "  inbound:\n    - port: 1\n      tags:\n        kuma.io/service: web\n",
        "w.yaml",
    )
    mesh_ca = ca.create_ca("default")
    issued = ca.issue_workload(mesh_ca.cert, mesh_ca.key, dataplane)
    expected = ["spiffe://default/web", "kuma://kuma.io/service/web"]
    assert spiffe.identities_of(issued.cert) == expected
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    assert spiffe.identities_of(der) == expected
    assert spiffe.identities_of(memoryview(der)) == expected
    with pytest.raises(IdentityError):
        spiffe.identities_of(b"\x30\x03garbage")


def test_sni_sorts_tags_with_mesh():
    assert spiffe.sni("backend", "default") == "backend{mesh=default}"
    assert spiffe.sni("db", "default", {"role": "primary"}) == "db{mesh=default,role=primary}"
    assert (
        spiffe.sni("db", "prod", {"version": "v1", "app": "x", "kuma.io/service": "db"})
        == "db{app=x,mesh=prod,version=v1}"
    )
    assert spiffe.sni("db", "prod", {"mesh": "ignored"}) == "db{mesh=prod}"


def test_parse_sni_inverts_sni():
    assert spiffe.parse_sni("db{mesh=default,role=primary}") == (
        "db",
        {"mesh": "default", "role": "primary"},
    )
    assert spiffe.parse_sni("backend") == ("backend", {})
    for bad in ["", "{mesh=a}", "db{mesh", "db{mesh=a,mesh=b}", "db{novalue}"]:
        with pytest.raises(IdentityError):
            spiffe.parse_sni(bad)


_tag = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-/", min_size=1, max_size=12)
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-:", min_size=1, max_size=12)


@given(
    service=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=20),
    mesh=st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    tags=st.dictionaries(_tag, _value, max_size=4),
)
def test_sni_round_trip(service, mesh, tags):
    name = spiffe.sni(service, mesh, tags)
    parsed_service, parsed = spiffe.parse_sni(name)
    assert parsed_service == service
    expected = {k: v for k, v in tags.items() if k not in ("kuma.io/service", "mesh")}
    expected["mesh"] = mesh
    assert parsed == expected
    assert list(parsed) == sorted(parsed)


@given(st.text(max_size=60))
def test_parse_sni_raises_only_identity_error(text):
    try:
        spiffe.parse_sni(text)
    except IdentityError:
        pass


def test_source_tags_from_uris():
    tags = spiffe.source_tags_from_uris(
        [
            "spiffe://default/web",
            "spiffe://default/admin",
            "spiffe://other/intruder",
            "kuma://kuma.io/service/web",
            "kuma://kuma.io/zone/east",
            "kuma://version/v1",
            "kuma://version/v2",
            "kuma://broken",
            "https://example.com/x",
        ],
        mesh="default",
    )
    assert tags == {
        "kuma.io/service": frozenset({"web", "admin"}),
        "kuma.io/zone": frozenset({"east"}),
        "version": frozenset({"v1", "v2"}),
    }
    everyone = spiffe.source_tags_from_uris(["spiffe://other/intruder"])
    assert everyone == {"kuma.io/service": frozenset({"intruder"})}
    assert spiffe.split_kuma_uri("kuma://kuma.io/service/web") == ("kuma.io/service", "web")
    assert spiffe.split_kuma_uri("kuma://nothing") is None


def test_xfcc_render_and_parse():
    assert spiffe.render_xfcc("spiffe://default/web") == "URI=spiffe://default/web"
    full = spiffe.render_xfcc(
        "spiffe://default/web", by="spiffe://default/backend", cert_hash="abc123"
    )
    assert full == "By=spiffe://default/backend;Hash=abc123;URI=spiffe://default/web"
    assert spiffe.parse_xfcc(full) == [
        {"By": "spiffe://default/backend", "Hash": "abc123", "URI": "spiffe://default/web"}
    ]
    # Envoy's own example shape: several elements, quoted values holding separators.
    header = (
        'Hash=1;Subject="CN=a,OU=b;x=\\"y\\"";URI=spiffe://a/b,By=spiffe://c/d;URI=spiffe://e/f'
    )
    assert spiffe.parse_xfcc(header) == [
        {"Hash": "1", "Subject": 'CN=a,OU=b;x="y"', "URI": "spiffe://a/b"},
        {"By": "spiffe://c/d", "URI": "spiffe://e/f"},
    ]
    quoted = spiffe.render_xfcc('spiffe://x/a,b;"c"')
    assert spiffe.parse_xfcc(quoted) == [{"URI": 'spiffe://x/a,b;"c"'}]
    for bad in ["URI", 'URI="open', 'URI=a"b', "=x"]:
        with pytest.raises(ValueError):
            spiffe.parse_xfcc(bad)


@given(st.text(alphabet='abcURI=;,"\\ :/', max_size=40))
def test_parse_xfcc_raises_only_value_error(text):
    try:
        spiffe.parse_xfcc(text)
    except ValueError:
        pass


@given(
    st.text(
        alphabet=st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=30
    )
)
def test_xfcc_round_trips_any_uri(uri):
    assert spiffe.parse_xfcc(spiffe.render_xfcc(uri)) == [{"URI": uri}]
