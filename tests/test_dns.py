"""The DNS proxy of transparent proxying, on loopback: a real sidecar, dig as the client,
dnsmasq as the upstream resolver.

The Dataplane's outbounds are the mesh's names (`<kuma.io/service>.mesh`, and the same with dots
for underscores, as Kuma answers); every other name goes to the upstream and its answer comes
back as it was; bad messages get FORMERR or nothing, and the proxy serves on.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.dns import message
from tests.conftest import Mesh
from tests.dns_tools import (
    UPSTREAM_ADDRESS,
    UPSTREAM_NAME,
    dig,
    dnsmasq,
    query_bytes,
    require_tools,
)
from tests.observe_support import get, series, stats
from tests.support import dataplane, free_port, port_open, wait_for, write_yaml

UPSTREAM_HOST = "127.0.0.98"  # dnsmasq's own loopback address (not 127.0.0.53: resolved's)


def _dataplane(outbounds: list[dict]) -> dict:
    doc = dataplane(
        "web-1",
        [{"port": free_port(), "servicePort": free_port(), "tags": {"kuma.io/service": "web"}}],
        outbounds,
    )
    doc["networking"]["transparentProxying"] = {
        "redirectPortOutbound": free_port(),
        "redirectPortInbound": free_port(),
    }
    return doc


OUTBOUNDS = [
    {"address": "10.251.0.1", "port": 80, "tags": {"kuma.io/service": "backend_kuma-demo_svc_80"}},
    {"address": "10.251.0.2", "port": 7070, "tags": {"kuma.io/service": "backend-tcp"}},
    {"address": "fd00::5", "port": 7070, "tags": {"kuma.io/service": "backend-tcp"}},
]


@pytest.fixture
def proxy(mesh_uvloop: Mesh, tmp_path: Path) -> Iterator[dict]:
    """A sidecar with transparent proxying, its DNS proxy on a free port, dnsmasq upstream."""
    require_tools()
    upstream_port, dns_port = free_port(), free_port()
    with dnsmasq(UPSTREAM_HOST, upstream_port):
        doc = _dataplane(OUTBOUNDS)
        path = write_yaml(tmp_path / "web-1.yaml", doc)
        sidecar = mesh_uvloop.start(
            path, "--dns-port", str(dns_port), "--dns-upstream", f"{UPSTREAM_HOST}:{upstream_port}"
        )
        yield {"port": dns_port, "sidecar": sidecar, "doc": doc, "path": path,
               "admin": doc["networking"]["admin"]["port"]}  # fmt: skip


def _ask(port: int, name: str, qtype: str = "A", *extra: str):
    return dig("127.0.0.1", port, name, qtype, *extra)


def _stats(admin: int) -> dict[str, int]:
    prefix = "dns_filter.kuma_dns."
    return {k[len(prefix) :]: v for k, v in stats(admin).items() if k.startswith(prefix)}


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_mesh_names_are_answered_with_the_outbounds_addresses(proxy: dict, transport: str) -> None:
    port = proxy["port"]
    for name in ("backend_kuma-demo_svc_80.mesh", "backend.kuma-demo.svc.80.mesh",
                 "BACKEND.Kuma-Demo.svc.80.MESH"):  # fmt: skip
        found = _ask(port, name, "A", transport)
        assert found.status == "NOERROR" and "aa" in found.flags, found.text
        assert [(a[1], a[2], a[3]) for a in found.answers] == [(60, "A", "10.251.0.1")]
    both = _ask(port, "backend-tcp.mesh", "AAAA", transport)
    assert [a[3] for a in both.answers] == ["fd00::5"]
    assert [a[3] for a in _ask(port, "backend-tcp.mesh", "A", transport).answers] == ["10.251.0.2"]
    # A name we have, with no address of the type asked: NODATA, so an A+AAAA lookup gets its A.
    nodata = _ask(port, "backend.kuma-demo.svc.80.mesh", "AAAA", transport)
    assert nodata.status == "NOERROR" and nodata.answers == [] and "aa" in nodata.flags
    assert _ask(port, "backend.kuma-demo.svc.80.mesh", "MX", transport).answers == []
    # Not in the mesh: NXDOMAIN at once, from us (the zone is ours; never asked upstream).
    missing = _ask(port, "nothing-here.mesh", "A", transport)
    assert missing.status == "NXDOMAIN" and "aa" in missing.flags


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_other_names_are_forwarded_and_answered_as_the_upstream_answers(
    proxy: dict, transport: str
) -> None:
    port = proxy["port"]
    found = _ask(port, UPSTREAM_NAME, "A", transport)
    assert found.status == "NOERROR" and [a[3] for a in found.answers] == [UPSTREAM_ADDRESS]
    assert "aa" in found.flags  # dnsmasq's own answer, as it gave it
    refused = _ask(port, "elsewhere.invalid", "A", transport)
    assert refused.status == "REFUSED"  # dnsmasq has no upstream of its own: relayed as it is
    stats = _stats(proxy["admin"])
    assert stats["externally_resolved_queries"] == 2 and stats["unanswered_queries"] == 0
    assert stats["downstream_rx_queries"] == stats["downstream_tx_responses"] == 2


def test_counted_in_envoys_dns_filter_stats(proxy: dict) -> None:
    port = proxy["port"]
    _ask(port, "backend-tcp.mesh", "A")
    _ask(port, "backend-tcp.mesh", "AAAA")
    _ask(port, "backend-tcp.mesh", "TXT")
    _ask(port, UPSTREAM_NAME, "A")
    stats = _stats(proxy["admin"])
    assert stats == {
        "a_record_queries": 2, "aaaa_record_queries": 1, "unsupported_queries": 1,
        "known_domain_queries": 3, "local_a_record_answers": 1, "local_aaaa_record_answers": 1,
        "externally_resolved_queries": 1, "unanswered_queries": 0,
        "downstream_rx_queries": 4, "downstream_tx_responses": 4,
        "downstream_rx_invalid_queries": 0,
    }  # fmt: skip
    text = series(get(proxy["admin"], "/stats/prometheus"))
    assert text['envoy_dns_filter_known_domain_queries{envoy_dns_filter_prefix="kuma_dns"}'] == 3


def test_bad_messages_get_formerr_or_nothing_and_the_proxy_serves_on(proxy: dict) -> None:
    port = proxy["port"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(10)
        udp.connect(("127.0.0.1", port))
        udp.send(b"\x01\x02\x03")  # no header: dropped
        udp.send(
            query_bytes("backend-tcp.mesh", qid=7, flags=message.QR)
        )  # an answer: never answered
        two = bytearray(query_bytes("backend-tcp.mesh", qid=8))
        two[4:6] = b"\x00\x02"  # two questions
        udp.send(bytes(two))
        udp.send(query_bytes("backend-tcp.mesh", qid=9)[:20])  # the name cut short
        udp.send(query_bytes("backend-tcp.mesh", qid=10))
        # Loopback keeps the order: the answers that come are to 8, 9 and 10, nothing else.
        answers = [udp.recv(4096) for _ in range(3)]
    ids_rcodes = [(struct.unpack("!H", a[:2])[0], a[3] & 0x0F) for a in answers]
    assert ids_rcodes == [(8, message.FORMERR), (9, message.FORMERR), (10, message.NOERROR)]
    assert answers[2].endswith(socket.inet_aton("10.251.0.2"))
    # DNS over TCP: a message cut off by the client's close is nothing to answer.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as tcp:
        tcp.sendall(b"\x00\x40" + query_bytes("backend-tcp.mesh", qid=11))
    stats = _stats(proxy["admin"])
    assert stats["downstream_rx_invalid_queries"] == 4  # all four above
    assert _ask(port, "backend-tcp.mesh", "A", "+tcp").answers[0][3] == "10.251.0.2"


def test_an_upstream_that_fails_gets_servfail_and_the_next_one_is_tried(
    mesh_uvloop: Mesh, tmp_path: Path
) -> None:
    require_tools()
    dns_port, upstream_port = free_port(), free_port()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, never answers
    silent.bind(("127.0.0.1", 0))
    refusing = f"127.0.0.1:{free_port()}"  # nothing listens: ICMP port unreachable at once
    try:
        path = write_yaml(tmp_path / "web-1.yaml", _dataplane(OUTBOUNDS))
        with dnsmasq(UPSTREAM_HOST, upstream_port):
            mesh_uvloop.start(
                path, "--dns-port", str(dns_port), "--dns-upstream", refusing,
                "--dns-upstream", f"127.0.0.1:{silent.getsockname()[1]}",
                "--dns-upstream", f"{UPSTREAM_HOST}:{upstream_port}",
            )  # fmt: skip
            found = _ask(dns_port, UPSTREAM_NAME)
            assert [a[3] for a in found.answers] == [UPSTREAM_ADDRESS]  # the third one answered
        path2 = write_yaml(tmp_path / "web-2.yaml", _dataplane(OUTBOUNDS))
        other = free_port()
        sidecar = mesh_uvloop.start(path2, "--dns-port", str(other), "--dns-upstream", refusing)
        for transport in ("+notcp", "+tcp"):
            failed = _ask(other, UPSTREAM_NAME, "A", transport)
            assert failed.status == "SERVFAIL", failed.text
        assert _ask(other, "backend-tcp.mesh").answers  # the mesh's names need no upstream
        sidecar.wait_log("event=dns_upstream_failed")
    finally:
        silent.close()


def test_the_names_follow_the_dataplane_file(proxy: dict) -> None:
    port, doc, path = proxy["port"], proxy["doc"], proxy["path"]
    doc["networking"]["outbound"] = OUTBOUNDS[:1] + [
        {"address": "10.251.0.9", "port": 6379, "tags": {"kuma.io/service": "redis"}}
    ]
    write_yaml(path, doc)
    wait_for(lambda: _ask(port, "redis.mesh").answers != [], what="redis.mesh")
    assert _ask(port, "redis.mesh").answers[0][3] == "10.251.0.9"
    assert _ask(port, "backend-tcp.mesh").status == "NXDOMAIN"
    # Without transparent proxying there is no DNS proxy.
    del doc["networking"]["transparentProxying"]
    write_yaml(path, doc)
    wait_for(lambda: not port_open(port), what="the DNS proxy to close")
    assert "event=dns_bound" in proxy["sidecar"].log


def test_a_taken_port_is_a_clear_error_at_start(mesh_uvloop: Mesh, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        path = write_yaml(tmp_path / "web-1.yaml", _dataplane(OUTBOUNDS))
        sidecar = mesh_uvloop.start(path, "--dns-port", str(port), ready=False)
        assert sidecar.proc.wait(30) != 0
    assert f"DNS proxy: cannot bind 127.0.0.1:{port}" in sidecar.log


def test_no_dns_proxy_without_transparent_proxying_or_with_port_0(
    mesh_uvloop: Mesh, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "web-1.yaml", _dataplane(OUTBOUNDS))
    sidecar = mesh_uvloop.start(path, "--dns-port", "0")
    assert "event=dns_bound" not in sidecar.log
    loopback = [{"address": "127.0.0.1", "port": free_port(), "tags": {"kuma.io/service": "db"}}]
    doc = _dataplane(loopback)
    del doc["networking"]["transparentProxying"]
    port = free_port()
    sidecar2 = mesh_uvloop.start(write_yaml(tmp_path / "web-2.yaml", doc), "--dns-port", str(port))
    assert "event=dns_bound" not in sidecar2.log and not port_open(port)
