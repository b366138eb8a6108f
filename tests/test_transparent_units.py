"""Transparent proxying without a network namespace: what the plan binds, the rules
`pysidecar transparent-proxy` prints and its errors (the traffic: test_transparent_proxy.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from sidecar.config.dataplane import dataplane_from_document
from sidecar.plan import plan_listeners
from sidecar.transparent.iptables import Redirection, install_rules, uninstall_rules
from sidecar.transport.connect import source_for
from tests.support import REPO, dataplane, free_port, port_open, wait_for, write_yaml

TP = {"redirectPortOutbound": 15001, "redirectPortInbound": 15006}


def _doc(tp: dict | None = TP) -> dict:
    doc = dataplane(
        "web-1",
        [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
        [
            {"address": "10.251.0.1", "port": 80, "tags": {"kuma.io/service": "backend"}},
            {"port": 10080, "tags": {"kuma.io/service": "backend"}},  # 127.0.0.1
        ],
        address="10.250.0.1",
    )
    if tp is not None:
        doc["networking"]["transparentProxying"] = tp
    return doc


def _plans(tp: dict | None = TP) -> dict[str, object]:
    plans = plan_listeners(dataplane_from_document(_doc(tp), "web-1.yaml"))
    return {p.name: p for p in plans.values()}


def test_without_transparent_proxying_everything_binds_as_before() -> None:
    plans = _plans(None)
    assert sorted(plans) == [
        "inbound:10.250.0.1:8080",
        "outbound:10.251.0.1:80",
        "outbound:127.0.0.1:10080",
    ]
    assert all(p.bound and not p.redirect and p.source_address is None for p in plans.values())


def test_transparent_proxying_plans_redirect_listeners_and_binds_only_loopback_outbounds() -> None:
    plans = _plans()
    out, into = plans["outbound:passthrough:ipv4"], plans["inbound:passthrough:ipv4"]
    assert (out.address, out.port, out.redirect, out.cluster) == (
        "0.0.0.0", 15001, True, "outbound:passthrough:ipv4"
    )  # fmt: skip
    assert (into.address, into.port, into.redirect) == ("0.0.0.0", 15006, True)
    # Passthrough toward the app's side leaves from 127.0.0.6, which the rules let through.
    assert (out.source_address, into.source_address) == (None, "127.0.0.6")
    inbound = plans["inbound:10.250.0.1:8080"]
    assert not inbound.bound and inbound.source_address == "127.0.0.6"
    assert not plans["outbound:10.251.0.1:80"].bound  # a VIP: reached by redirection only
    assert plans["outbound:127.0.0.1:10080"].bound  # loopback is never redirected


def test_only_the_redirect_ports_given_are_planned() -> None:
    plans = _plans({"redirectPortOutbound": 15001})
    assert "inbound:passthrough:ipv4" not in plans
    assert plans["inbound:10.250.0.1:8080"].bound  # nothing redirects to it: it binds
    assert not plans["outbound:10.251.0.1:80"].bound


def test_dual_stack_plans_ipv6_twins_on_the_same_ports() -> None:
    plans = _plans({**TP, "ipFamilyMode": "DualStack"})
    out, into = plans["outbound:passthrough:ipv6"], plans["inbound:passthrough:ipv6"]
    assert (out.address, out.port, out.cluster) == ("::", 15001, "outbound:passthrough:ipv6")
    assert (into.address, into.port, into.redirect) == ("::", 15006, True)
    # One source address for both: `source_for` picks ::6 when the app's address is IPv6.
    assert into.source_address == "127.0.0.6" and out.source_address is None
    assert "outbound:passthrough:ipv4" in plans and "inbound:passthrough:ipv4" in plans


def test_redirect_port_inbound_v6_asks_for_ipv6_on_its_own_port() -> None:
    plans = _plans({**TP, "redirectPortInboundV6": 15010})  # Kuma 2.0's way
    assert plans["inbound:passthrough:ipv6"].port == 15010
    assert plans["inbound:passthrough:ipv4"].port == 15006
    assert plans["outbound:passthrough:ipv6"].port == 15001


def test_ipv4_and_unspecified_families_redirect_ipv4_only() -> None:
    for mode in ("IPv4", "UnSpecified", 2):
        assert not any(name.endswith(":ipv6") for name in _plans({**TP, "ipFamilyMode": mode}))


def test_source_for_follows_the_apps_address_family() -> None:
    assert source_for("127.0.0.6", "10.250.0.2") == ("127.0.0.6", 0)
    assert source_for("127.0.0.6", "fd00::2") == ("::6", 0)
    assert source_for("127.0.0.6", "backend.local") is None  # a name: family unknown yet
    assert source_for(None, "fd00::2") is None


def test_ipv6_rules_name_ipv6_loopback_and_source() -> None:
    rules = install_rules(
        Redirection("--gid-owner 1337", 15001, 15010, dns_servers=("fd00::53",), ipv6=True)
    )
    lines = rules.splitlines()
    assert "-A PYSIDECAR_OUTPUT -s ::6/128 -o lo -j RETURN" in lines
    assert "-A PYSIDECAR_OUTPUT -d ::1/128 -j RETURN" in lines
    assert (
        "-A PYSIDECAR_OUTPUT ! -d ::1/128 -o lo -m owner --gid-owner 1337 "
        "-j PYSIDECAR_INBOUND_REDIRECT"
    ) in lines
    assert "-A PYSIDECAR_DNS -d fd00::53/128 -p udp -j REDIRECT --to-ports 15053" in lines
    assert "127.0.0" not in rules and "/32" not in rules


def test_install_rules_are_kumas_chains() -> None:
    rules = install_rules(Redirection("--uid-owner 5678", 15001, 15006, (22,), (53, 853)))
    lines = rules.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert "-A PREROUTING -p tcp -j PYSIDECAR_INBOUND" in lines
    assert "-A PYSIDECAR_INBOUND -p tcp --dport 22 -j RETURN" in lines
    assert "-A PYSIDECAR_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in lines
    assert "-A PYSIDECAR_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in lines
    # Order decides: 127.0.0.6 first, then the sidecar's own, then exclusions, then redirect.
    output = [line for line in lines if line.startswith("-A PYSIDECAR_OUTPUT")]
    assert output == [
        "-A PYSIDECAR_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A PYSIDECAR_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 5678 "
        "-j PYSIDECAR_INBOUND_REDIRECT",
        "-A PYSIDECAR_OUTPUT -o lo -m owner ! --uid-owner 5678 -j RETURN",
        "-A PYSIDECAR_OUTPUT -m owner --uid-owner 5678 -j RETURN",
        "-A PYSIDECAR_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A PYSIDECAR_OUTPUT -p tcp --dport 53 -j RETURN",
        "-A PYSIDECAR_OUTPUT -p tcp --dport 853 -j RETURN",
        "-A PYSIDECAR_OUTPUT -j PYSIDECAR_OUTBOUND_REDIRECT",
    ]


def test_outbound_only_rules_leave_incoming_traffic_alone() -> None:
    rules = install_rules(Redirection("--gid-owner 1337", 15001, None))
    assert "-A PREROUTING -p tcp" not in rules and "--to-ports 15006" not in rules
    assert "REDIRECT --to-ports 15001" in rules
    assert "-D PREROUTING -p tcp" not in uninstall_rules(inbound=False)
    assert "-D PREROUTING -p tcp -j PYSIDECAR_INBOUND" in uninstall_rules()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "transparent-proxy", *args],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip


def test_cli_takes_the_ports_from_the_dataplane(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "web-1.yaml", _doc({"redirectPortOutbound": 16001,
                                                     "redirectPortInbound": 16006}))  # fmt: skip
    out = _cli("--dataplane", str(path), "--gid", "0")
    assert out.returncode == 0, out.stderr
    assert "--to-ports 16001" in out.stdout and "--to-ports 16006" in out.stdout
    assert "--gid-owner 0" in out.stdout
    assert "--uid-owner 0" in _cli("--uid", "root").stdout  # a name is looked up


def test_cli_ipv6_takes_the_v6_inbound_port_and_wants_dual_stack(tmp_path: Path) -> None:
    tp = {**TP, "redirectPortInboundV6": 15010}
    path = write_yaml(tmp_path / "web-1.yaml", _doc(tp))
    out = _cli("--dataplane", str(path), "--gid", "0", "--ipv6", "--redirect-all-dns-traffic")
    assert out.returncode == 0, out.stderr
    assert "--to-ports 15010" in out.stdout and "--to-ports 15006" not in out.stdout
    assert "-s ::6/128" in out.stdout
    assert "-A PYSIDECAR_DNS -p udp -j REDIRECT --to-ports 15053" in out.stdout  # any address
    v4 = _cli("--dataplane", str(path), "--gid", "0")
    assert "--to-ports 15006" in v4.stdout and "-s 127.0.0.6/32" in v4.stdout

    path = write_yaml(tmp_path / "web-1.yaml", _doc({**TP, "ipFamilyMode": "IPv4"}))
    out = _cli("--dataplane", str(path), "--gid", "0", "--ipv6")
    assert out.returncode == 1
    assert "ipFamilyMode is IPv4" in out.stderr and "set it to DualStack" in out.stderr
    # Taking rules out never needs the family: one uninstall fits both tables.
    assert _cli("--dataplane", str(path), "--ipv6", "--uninstall").returncode == 0


def test_cli_errors_say_what_is_missing(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "web-1.yaml", _doc(None))
    out = _cli("--dataplane", str(path), "--gid", "0")
    assert out.returncode == 1
    assert "networking.transparentProxying is not set" in out.stderr
    out = _cli()
    assert out.returncode == 2 and "--uid or --gid is required" in out.stderr
    out = _cli("--uid", "no-such-user-here")
    assert out.returncode == 2 and "no such user or group" in out.stderr
    out = _cli("--gid", "0", "--exclude-inbound-ports", "22,x")
    assert out.returncode == 2 and "'x' is not a port" in out.stderr


def test_a_reload_turns_transparent_proxying_on_and_off(mesh_uvloop, tmp_path: Path) -> None:
    """On loopback, no rules: the redirect listeners come and go with the Dataplane, an inbound
    gives its port up to the app and takes it back, and a connection made to a redirect port
    itself (no original destination) is closed and counted, the sidecar serving on."""
    inbound_port, out_port, in_port = free_port(), free_port(), free_port()
    doc = dataplane(
        "web-1",
        [{"port": inbound_port, "servicePort": free_port(), "tags": {"kuma.io/service": "web"}}],
    )
    path = write_yaml(tmp_path / "web-1.yaml", doc)
    sidecar = mesh_uvloop.start(path)
    assert port_open(inbound_port) and not port_open(out_port)

    doc["networking"]["transparentProxying"] = {
        "redirectPortOutbound": out_port,
        "redirectPortInbound": in_port,
    }
    write_yaml(path, doc)
    sidecar.wait_log("accept=redirected")  # the inbound, now without a socket
    wait_for(lambda: port_open(out_port) and not port_open(inbound_port), what="the switch")
    with socket.create_connection(("127.0.0.1", in_port), timeout=5) as conn:
        assert conn.recv(1) == b""  # closed: nowhere to go
    sidecar.wait_log("event=not_redirected listener=inbound:passthrough:ipv4")

    del doc["networking"]["transparentProxying"]
    write_yaml(path, doc)
    wait_for(lambda: port_open(inbound_port) and not port_open(out_port), what="the way back")


def test_admin_clusters_bracket_an_ipv6_endpoint() -> None:
    """/clusters names an endpoint `address:port`, as Envoy does: an IPv6 one in brackets."""
    from sidecar.observe.observability import Host

    assert str(Host("fd00:250::2", 8080, True, "healthy")) == "[fd00:250::2]:8080"
    assert str(Host("10.0.0.2", 8080, True, "healthy")) == "10.0.0.2:8080"
