"""MeshPassthrough without a network namespace: parsing and Kuma's validation messages, which
policies select a sidecar and how they merge, what a connection's first bytes ask for, and the
redirect listener's verdicts on real loopback connections (the original destination handed in,
as the redirect listener reads it from the kernel; the rules themselves:
test_transparent_proxy.py)."""

from __future__ import annotations

import asyncio
import socket

import h2.connection
import pytest

from sidecar.cluster import Cluster
from sidecar.config.dataplane import ConfigError, dataplane_from_document
from sidecar.listener import StackOptions
from sidecar.observe.stats import StatsStore
from sidecar.plan import plan_listeners
from sidecar.policy import PolicyError
from sidecar.transparent.passthrough import (
    ALL,
    MATCHED,
    NONE,
    Passthrough,
    in_force,
    parse_policy,
    passthrough_policies,
)
from sidecar.transparent.redirect import RedirectStack
from sidecar.transport.detect import requested_name
from tests.support import client_hello, dataplane


def _policy(default: dict, target_ref: dict | None = None, name: str = "p", **doc) -> dict:
    spec: dict = {"default": default}
    if target_ref is not None:
        spec["targetRef"] = target_ref
    return {"type": "MeshPassthrough", "name": name, "mesh": "default", "spec": spec, **doc}


def _matched(*entries: dict) -> Passthrough:
    policy = parse_policy(_policy({"passthroughMode": "Matched", "appendMatch": list(entries)}))
    return Passthrough(MATCHED, policy.matches, (policy.name,))


def _dataplane(labels: dict | None = None, name: str = "web-1"):
    doc = dataplane(name, [{"port": 8080, "tags": {"kuma.io/service": "web", "team": "a"}}])
    doc["networking"]["address"] = "10.250.0.1"
    doc["networking"]["transparentProxying"] = {"redirectPortOutbound": 15001}
    if labels is not None:
        doc["labels"] = labels
    return dataplane_from_document(doc, f"{name}.yaml")


# --- parsing and validation -----------------------------------------------------------------------


def test_a_policy_reads_with_kumas_defaults() -> None:
    policy = parse_policy(
        _policy({"appendMatch": [{"type": "IP", "value": "10.240.15.39", "port": 8888}]})
    )
    assert policy.mode is None and policy.target_ref.kind == "Mesh"
    (match,) = policy.matches
    assert (match.type, match.value, match.port, match.protocol) == (
        "IP",
        "10.240.15.39",
        8888,
        "tcp",
    )


@pytest.mark.parametrize(
    ("entry", "path", "message"),
    [
        ({"type": "Host", "value": "a"}, "appendMatch[0].type",
         "provided type Host is not supported, one of Domain, IP, or CIDR is supported"),
        ({"type": "IP", "value": "10.0.0"}, "appendMatch[0].value",
         "provided IP has incorrect value"),
        ({"type": "CIDR", "value": "10.0.0.0/33"}, "appendMatch[0].value",
         "provided CIDR has incorrect value"),
        ({"type": "IP", "value": "10.0.0.1", "port": 0}, "appendMatch[0].port",
         "port must be a valid (1-65535)"),
        ({"type": "IP", "value": "10.0.0.1", "port": 70000}, "appendMatch[0].port",
         "port must be a valid (1-65535)"),
        ({"type": "IP", "value": "10.0.0.1", "protocol": "mysql"}, "appendMatch[0].port",
         "port must be defined for Mysql protocol"),
        ({"type": "IP", "value": "10.0.0.1", "protocol": "udp"}, "appendMatch[0].protocol",
         "must be one of tcp, tls, grpc, http, http2, mysql"),
        ({"type": "Domain", "value": "a.com", "port": 80, "protocol": "tcp"},
         "appendMatch[0].protocol", "protocol tcp is not supported for a domain"),
        ({"type": "Domain", "value": "a.com", "protocol": "tls"}, "appendMatch[0].port",
         "port must be defined for a domain, the sidecar resolves the domain to pin the "
         "destination"),
        ({"type": "Domain", "value": "*w.a.com", "port": 443, "protocol": "tls"},
         "appendMatch[0].value",
         "provided DNS has incorrect value, partial wildcard is currently not supported"),
        ({"type": "Domain", "value": "*.a.com", "protocol": "http"}, "appendMatch[0].port",
         "wildcard domains doesn't work for all ports and layer 7 protocol"),
        ({"type": "Domain", "value": "a..com", "port": 443, "protocol": "tls"},
         "appendMatch[0].value", "provided DNS has incorrect value"),
    ],
)  # fmt: skip
def test_kumas_validator_rules_name_the_file_and_field(
    entry: dict, path: str, message: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(_policy({"passthroughMode": "Matched", "appendMatch": [entry]}), "mp.yaml")
    assert str(caught.value) == f"mp.yaml: spec.default.{path}: {message}"


def test_every_fault_of_a_policy_is_named_at_once() -> None:
    doc = _policy(
        {
            "passthroughMode": "Some",
            "appendMatch": [
                {"type": "Domain", "value": "a.com", "port": 80, "protocol": "http"},
                {"type": "Domain", "value": "b.com", "port": 80, "protocol": "grpc"},
                {"type": "IP", "value": "10.0.0.1", "port": 80},
                {"type": "IP", "value": "10.0.0.1", "port": 80},
            ],
        },
        {"kind": "MeshService", "name": "x"},
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(doc, "mp.yaml")
    assert caught.value.violations == [
        ("spec.targetRef.kind", "must be one of Mesh, MeshSubset, Dataplane, got 'MeshService'"),
        ("spec.default.passthroughMode", "must be one of All, Matched, None, got 'Some'"),
        ("spec.default.appendMatch[3].value",
         "value 10.0.0.1 is already defined for this port and protocol"),
        ("spec.default.appendMatch", "you cannot configure http, http2, grpc on the same port 80"),
    ]  # fmt: skip


def test_a_policy_that_does_not_parse_is_left_out_with_a_warning(caplog) -> None:
    policies = passthrough_policies()
    good = _policy({"passthroughMode": "All"}, name="good")
    bad = _policy({"passthroughMode": "Every"}, name="bad")
    assert policies.update([("good.yaml", good), ("bad.yaml", bad)])
    assert [p.name for p in policies.policies] == ["good"]
    assert "event=policy_skipped kind=MeshPassthrough" in caplog.text
    assert "bad.yaml: spec.default.passthroughMode" in caplog.text
    assert not policies.update([("good.yaml", good), ("bad.yaml", bad)])  # nothing changed


# --- which policies select a sidecar, merged ------------------------------------------------------


def test_no_policy_selecting_the_sidecar_leaves_it_to_the_mesh_switch() -> None:
    other_mesh = parse_policy(_policy({"passthroughMode": "None"}, mesh="other"))
    gateways = parse_policy(
        _policy({"passthroughMode": "None"}, {"kind": "Mesh", "proxyTypes": ["Gateway"]})
    )
    elsewhere = parse_policy(
        _policy({"passthroughMode": "None"}, {"kind": "Dataplane", "name": "db-1"})
    )
    assert in_force([other_mesh, gateways, elsewhere], _dataplane()) is None


def test_the_most_specific_mode_wins_and_the_matches_are_joined() -> None:
    mesh = parse_policy(
        _policy(
            {"passthroughMode": "All", "appendMatch": [{"type": "IP", "value": "10.0.0.1"}]},
            {"kind": "Mesh"}, name="z-mesh",
        )
    )  # fmt: skip
    subset = parse_policy(
        _policy(
            {"passthroughMode": "None", "appendMatch": [{"type": "IP", "value": "10.0.0.2"}]},
            {"kind": "MeshSubset", "tags": {"team": "a"}}, name="subset",
        )
    )  # fmt: skip
    labels = parse_policy(
        _policy(
            {"passthroughMode": "Matched",
             "appendMatch": [{"type": "CIDR", "value": "10.1.0.0/16"}]},
            {"kind": "Dataplane", "labels": {"app": "web"}}, name="labels",
        )
    )  # fmt: skip
    by_name = parse_policy(
        _policy({"appendMatch": [{"type": "IP", "value": "10.0.0.3"}]},
                {"kind": "Dataplane", "name": "web-1"}, name="a-name")
    )  # fmt: skip
    found = in_force([by_name, labels, subset, mesh], _dataplane({"app": "web"}))
    assert found is not None
    assert found.mode == MATCHED  # by labels: the last that sets one (by name sets none)
    assert [m.value for m in found.matches] == ["10.0.0.1", "10.0.0.2", "10.1.0.0/16", "10.0.0.3"]
    assert found.policies == ("z-mesh", "subset", "labels", "a-name")
    # Without the labels, that policy does not select the sidecar: MeshSubset's None wins.
    found = in_force([by_name, labels, subset, mesh], _dataplane({"app": "api"}))
    assert found is not None and found.mode == NONE
    # Unset everywhere: Matched, which with no entries lets nothing through.
    bare = in_force([parse_policy(_policy({}))], _dataplane())
    assert bare == Passthrough(MATCHED, (), ("p",))
    assert bare.allows_address("10.0.0.1", 80) is False


def test_a_dataplane_label_must_be_a_string() -> None:
    doc = dataplane("web-1", [{"port": 8080, "tags": {"kuma.io/service": "web"}}])
    doc["labels"] = {"version": 2}
    with pytest.raises(ConfigError) as caught:
        dataplane_from_document(doc, "web-1.yaml")
    assert 'labels["version"]: must be a string' in str(caught.value)


# --- judging a connection -------------------------------------------------------------------------


def test_addresses_and_cidrs_allow_by_address_and_port() -> None:
    rules = _matched(
        {"type": "IP", "value": "10.240.15.39", "port": 8888},
        {"type": "CIDR", "value": "10.250.0.0/16"},
        {"type": "CIDR", "value": "fd00:250::/64", "port": 443, "protocol": "tls"},
        {"type": "Domain", "value": "api.example.com", "port": 443, "protocol": "tls"},
    )
    assert rules.allows_address("10.240.15.39", 8888) is True
    assert rules.allows_address("10.240.15.39", 8889) is False
    assert rules.allows_address("10.250.3.4", 1) is True  # no port: every port
    assert rules.allows_address("fd00:250::9", 443) is True
    assert rules.allows_address("fd00:251::9", 443) is None  # a Domain entry on 443 may
    assert rules.allows_address("10.9.9.9", 443) is None
    assert Passthrough(ALL).allows_address("10.9.9.9", 1) is True
    assert Passthrough(NONE, (), ("p",)).allows_address("10.9.9.9", 1) is False


def test_domains_allow_by_the_name_asked_for_its_kind_and_port() -> None:
    rules = _matched(
        {"type": "Domain", "value": "api.example.com", "port": 443, "protocol": "tls"},
        {"type": "Domain", "value": "*.wikipedia.org", "protocol": "tls"},
        {"type": "Domain", "value": "httpbin.dev", "port": 80, "protocol": "http"},
    )
    assert rules.allows_name("api.example.com", 443, tls=True) is not None
    assert rules.allows_name("api.example.com", 8443, tls=True) is None
    assert rules.allows_name("api.example.com", 443, tls=False) is None  # an HTTP Host
    assert rules.allows_name("en.m.wikipedia.org", 1234, tls=True) is not None
    assert rules.allows_name("wikipedia.org", 443, tls=True) is None
    assert rules.allows_name("httpbin.dev", 80, tls=False) is not None
    assert rules.allows_name("httpbin.dev", 80, tls=True) is None
    assert rules.allows_name(None, 443, tls=True) is None


# --- what the first bytes ask for -----------------------------------------------------------------


def _h2_request(authority: str) -> bytes:
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", authority)]
    conn.send_headers(1, headers, end_stream=True)
    return conn.data_to_send()


def test_the_name_a_connection_asks_for() -> None:
    hello = client_hello("API.Example.com")
    assert requested_name(hello) == (True, "api.example.com")
    assert requested_name(hello[:-10]) == (False, None)  # the ClientHello is still arriving
    request = b"GET / HTTP/1.1\r\nAccept: */*\r\nHOST: HttpBin.dev:8080\r\n\r\n"
    assert requested_name(request) == (True, "httpbin.dev")
    assert requested_name(request[:-2]) == (False, None)
    absolute = b"GET http://[fd00::1]:80/x HTTP/1.1\r\n\r\n"
    assert requested_name(absolute) == (True, "fd00::1")
    h2_bytes = _h2_request("grpc.example.com:50051")
    assert requested_name(h2_bytes) == (True, "grpc.example.com")
    assert requested_name(h2_bytes[:-3]) == (False, None)
    assert requested_name(b"\x00\x01binary") == (True, None)
    assert requested_name(b"") == (False, None)


# --- the redirect listener's verdicts, on loopback ------------------------------------------------


@pytest.fixture
async def upstream():
    """A server outside the mesh: answers `ok` once it has read anything."""
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        got.append(data)
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], got
    server.close()
    await server.wait_closed()


def _stack(rules: Passthrough, detection_timeout: float = 0.1) -> RedirectStack:
    doc = dataplane("web-1", [{"port": 8080, "tags": {"kuma.io/service": "web"}}])
    doc["networking"]["transparentProxying"] = {"redirectPortOutbound": 15001}
    plans = plan_listeners(dataplane_from_document(doc, "web-1.yaml"))
    (plan,) = [p for p in plans.values() if p.name == "outbound:passthrough:ipv4"]
    store = StatsStore()
    stats = store.listener(plan.stat_address, f"outbound_{plan.stat_address}")
    cluster = Cluster(plan.cluster, store.cluster("outbound_passthrough_ipv4"))
    options = StackOptions(detection_timeout=detection_timeout, splice=False)
    return RedirectStack(plan, cluster, stats, options, lambda plan, found: None, lambda: rules)


async def _through(stack: RedirectStack, port: int, first: bytes) -> bytes:
    """A connection of the app's, redirected with 127.0.0.1:`port` as its original destination:
    what comes back after `first` (b"" when closed unanswered)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        sock, address = listener.accept()
    sock.setblocking(False)
    stack.pass_outbound(sock, address, ("127.0.0.1", port))
    writer.write(first)
    try:
        return await asyncio.wait_for(reader.read(100), 5)
    finally:
        writer.close()


async def test_the_redirect_listener_relays_what_is_allowed_and_closes_the_rest(upstream) -> None:
    port, got = upstream
    rules = _matched(
        {"type": "Domain", "value": "api.example.com", "port": port, "protocol": "tls"},
        {"type": "Domain", "value": "*.example.org", "port": port, "protocol": "http"},
    )
    stack = _stack(rules)
    hello = client_hello("api.example.com")
    assert await _through(stack, port, hello) == b"ok\n"
    assert got[-1] == hello  # replayed from its first byte
    request = b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n"
    assert await _through(stack, port, request) == b"ok\n"
    assert stack.stats.no_filter_chain_match == 0
    assert await _through(stack, port, client_hello("evil.example.com")) == b""
    assert await _through(stack, port, b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n") == b""
    assert await _through(stack, port, b"\x00raw bytes\n") == b""
    assert stack.stats.no_filter_chain_match == 3
    assert len(got) == 2


async def test_an_address_entry_relays_at_once_and_none_refuses(upstream) -> None:
    port, got = upstream
    # A zero detection timeout: nothing is waited for, and an address entry needs nothing.
    stack = _stack(_matched({"type": "IP", "value": "127.0.0.1", "port": port}), 0)
    assert await _through(stack, port, b"hello\n") == b"ok\n"
    stack = _stack(Passthrough(NONE, (), ("off",)))
    assert await _through(stack, port, b"hello\n") == b""
    assert stack.stats.tcp_downstream_cx_no_route == 1
    # With no time to wait for a name (sniffing off), a Domain entry allows nothing.
    only_domain = {"type": "Domain", "value": "a.com", "port": port, "protocol": "tls"}
    stack = _stack(_matched(only_domain), 0)
    assert await _through(stack, port, client_hello("a.com")) == b""
    assert stack.stats.no_filter_chain_match == 1
    assert got == [b"hello\n"]


async def test_a_silent_connection_is_refused_after_the_detection_timeout(upstream) -> None:
    port, got = upstream
    stack = _stack(_matched({"type": "Domain", "value": "a.com", "port": port, "protocol": "tls"}))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        sock, address = listener.accept()
    sock.setblocking(False)
    stack.pass_outbound(sock, address, ("127.0.0.1", port))
    assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed, after 0.1 s
    writer.close()
    assert stack.stats.no_filter_chain_match == 1 and stack.pending == 0
    assert got == []
