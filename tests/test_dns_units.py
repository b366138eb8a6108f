"""The DNS proxy's pure parts: messages, the mesh's names, the redirection rules, the flags."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config.dataplane import dataplane_from_document
from sidecar.dns import message
from sidecar.dns.message import FormatError
from sidecar.dns.table import DnsTable, dns_table
from sidecar.dns.upstreams import parse_upstream, upstreams_from_resolv_conf
from sidecar.transparent.iptables import Redirection, install_rules, uninstall_rules
from tests.dns_tools import query_bytes
from tests.support import REPO, dataplane


def test_a_query_is_read_and_answered_with_its_question_echoed() -> None:
    query = message.parse_query(
        query_bytes("Backend.MESH") + b"\0\0\x29extra"
    )  # EDNS after: ignored
    assert (query.id, query.name, query.type, query.klass) == (4660, "backend.mesh", message.A, 1)
    answer = message.reply(query, addresses=["10.0.0.1", "fd00::1"], ttl=60, authoritative=True)
    qid, flags, qd, an, ns, ar = message.HEADER.unpack_from(answer)
    assert (qid, qd, an, ns, ar) == (4660, 1, 2, 0, 0)
    assert flags & message.QR and flags & message.AA and flags & message.RD and flags & message.RA
    assert answer[12 : 12 + len(query.question)] == query.question  # the client's case kept
    assert answer.endswith(bytes.fromhex("fd000000000000000000000000000001"))


def test_answers_stop_at_what_fits_in_512_bytes() -> None:
    query = message.parse_query(query_bytes("big.mesh"))
    many = [f"10.0.{i // 256}.{i % 256}" for i in range(100)]
    answer = message.reply(query, addresses=many)
    assert len(answer) <= 512
    assert struct.unpack_from("!H", answer, 6)[0] == (512 - 12 - len(query.question)) // 16
    assert struct.unpack_from("!H", message.reply(query, addresses=many, limit=65535), 6)[0] == 100


@pytest.mark.parametrize(
    "data, why",
    [
        (b"\x00" * 11, "shorter than a DNS header"),
        (query_bytes("a.mesh", flags=message.QR), "a response"),
        (query_bytes("a.mesh")[:4] + b"\x00\x00" + query_bytes("a.mesh")[6:], "0 questions"),
        (query_bytes("a.mesh")[:-3], "no type and class"),
        (query_bytes("a.mesh")[:14], "runs past the message"),
        (query_bytes("a.mesh")[:12] + b"\xc0\x0c\x00\x01\x00\x01", "compressed"),
        (query_bytes(".".join(["a" * 63] * 5)), "longer than 255"),
    ],
)
def test_what_is_not_a_readable_query_says_why(data: bytes, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        message.parse_query(data)


def test_formerr_keeps_the_id_and_an_answer_is_never_answered() -> None:
    reply = message.error_for(query_bytes("a.mesh")[:14], message.FORMERR)
    assert reply is not None and reply[:2] == b"\x12\x34" and reply[3] & 0x0F == message.FORMERR
    assert message.error_for(query_bytes("a.mesh", flags=message.QR), message.FORMERR) is None
    assert message.error_for(b"\x12", message.FORMERR) is None


@given(st.binary(max_size=300))
def test_any_bytes_are_a_query_or_a_format_error(data: bytes) -> None:
    try:
        query = message.parse_query(data)
    except FormatError:
        return
    assert len(message.reply(query, message.NXDOMAIN)) >= 12


@given(st.lists(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=5))
def test_names_read_back_as_written(labels: list[str]) -> None:
    name = ".".join(labels)
    assert message.parse_query(query_bytes(name)).name == name


def _table() -> DnsTable:
    backend = {"kuma.io/service": "Backend_ns_svc_80"}
    doc = dataplane(
        "web-1",
        [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
        [
            {"address": "10.251.0.1", "port": 80, "tags": backend},
            {"address": "10.251.0.1", "port": 81, "tags": backend},
            {"address": "127.0.0.1", "port": 10080, "tags": backend},
            {"address": "fd00::2", "port": 80, "tags": {"kuma.io/service": "redis"}},
        ],
        admin_port=9901,
    )  # fmt: skip
    return dns_table(dataplane_from_document(doc, "web-1.yaml"))


def test_the_table_names_every_service_reached_once_per_vip() -> None:
    assert dict(_table().names) == {
        "backend_ns_svc_80.mesh": ("10.251.0.1",),  # the loopback outbound left out
        "backend.ns.svc.80.mesh": ("10.251.0.1",),
        "redis.mesh": ("fd00::2",),
    }


def _rcode_and_count(answer: bytes | None) -> tuple[int, int]:
    assert answer is not None
    return answer[3] & 0x0F, struct.unpack_from("!H", answer, 6)[0]


def test_the_table_answers_its_zone_and_leaves_the_rest() -> None:
    table = _table()
    ask = table.answer
    assert _rcode_and_count(ask(message.parse_query(query_bytes("redis.mesh", message.AAAA)))) == (
        0,
        1,
    )
    assert _rcode_and_count(ask(message.parse_query(query_bytes("redis.mesh", message.A)))) == (
        0,
        0,
    )
    assert _rcode_and_count(ask(message.parse_query(query_bytes("redis.mesh", message.ANY)))) == (
        0,
        1,
    )
    assert _rcode_and_count(ask(message.parse_query(query_bytes("mesh")))) == (0, 0)
    assert _rcode_and_count(ask(message.parse_query(query_bytes("x.redis.mesh")))) == (3, 0)
    assert ask(message.parse_query(query_bytes("example.com"))) is None  # forwarded
    assert ask(message.parse_query(query_bytes("notmesh"))) is None
    notify = message.parse_query(query_bytes("example.com", flags=4 << 11))  # opcode NOTIFY
    assert _rcode_and_count(ask(notify)) == (message.NOTIMP, 0)


def test_upstreams_from_resolv_conf_and_flags(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search x\nnameserver 10.0.0.10\nnameserver fe80::1%eth0\nnameserver bad\n")
    assert upstreams_from_resolv_conf(conf) == (("10.0.0.10", 53), ("fe80::1", 53))
    assert upstreams_from_resolv_conf(tmp_path / "none") == (("127.0.0.1", 53),)  # glibc's
    assert parse_upstream("10.0.0.10") == ("10.0.0.10", 53)
    assert parse_upstream("10.0.0.10:5353") == ("10.0.0.10", 5353)
    assert parse_upstream("[::1]:5353") == ("::1", 5353)
    assert parse_upstream("::1") == ("::1", 53)
    for bad in ("dns.example", "10.0.0.10:0", "[::1]x", "1.2.3.4:port"):
        with pytest.raises(ValueError):
            parse_upstream(bad)


def test_dns_rules_redirect_the_apps_queries_not_the_sidecars() -> None:
    rules = install_rules(
        Redirection("--gid-owner 1337", 15001, 15006, dns_servers=("10.0.0.10",), dns_port=15053)
    ).splitlines()
    dns = [line for line in rules[: rules.index("COMMIT")] if "PYSIDECAR_DNS" in line]  # nat
    assert dns == [
        ":PYSIDECAR_DNS - [0:0]",
        "-A OUTPUT -p udp --dport 53 -j PYSIDECAR_DNS",
        "-A PYSIDECAR_DNS -m owner --gid-owner 1337 -j RETURN",
        "-A PYSIDECAR_DNS -d 10.0.0.10/32 -p udp -j REDIRECT --to-ports 15053",
    ]
    everything = install_rules(Redirection("--gid-owner 1337", dns_servers=("0.0.0.0/0",)))
    assert "-A PYSIDECAR_DNS -p udp -j REDIRECT --to-ports 15053" in everything
    # Without DNS redirection the chain is there, empty: one uninstall fits both.
    plain = install_rules(Redirection("--gid-owner 1337"))
    assert "REDIRECT --to-ports 15053" not in plain and ":PYSIDECAR_DNS - [0:0]" in plain
    undo = uninstall_rules()
    assert "-D OUTPUT -p udp --dport 53 -j PYSIDECAR_DNS" in undo and "-X PYSIDECAR_DNS" in undo


def test_dns_rules_put_the_sidecars_queries_and_the_apps_in_conntrack_zones_apart() -> None:
    """Kuma's zone split, in the raw table: zone 1 for the sidecar's queries and the resolvers'
    answers, zone 2 for the app's queries and the DNS proxy's answers to them."""

    def raw(redirection: Redirection) -> list[str]:
        lines = install_rules(redirection).splitlines()
        return lines[lines.index("*raw") :]

    owner = "--gid-owner 1337"
    assert raw(Redirection(owner, dns_servers=("10.0.0.10", "127.0.0.53"), dns_port=15053)) == [
        "*raw",
        ":PYSIDECAR_DNS_CT_OUTPUT - [0:0]",
        ":PYSIDECAR_DNS_CT_PREROUTING - [0:0]",
        "-A OUTPUT -p udp -j PYSIDECAR_DNS_CT_OUTPUT",
        "-A PREROUTING -p udp -j PYSIDECAR_DNS_CT_PREROUTING",
        # First match wins: the sidecar's own queries, and its DNS proxy's answers, come first.
        "-A PYSIDECAR_DNS_CT_OUTPUT -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1",
        "-A PYSIDECAR_DNS_CT_OUTPUT -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2",
        "-A PYSIDECAR_DNS_CT_OUTPUT -d 10.0.0.10/32 -p udp --dport 53 -j CT --zone 2",
        "-A PYSIDECAR_DNS_CT_PREROUTING -s 10.0.0.10/32 -p udp --sport 53 -j CT --zone 1",
        "-A PYSIDECAR_DNS_CT_OUTPUT -d 127.0.0.53/32 -p udp --dport 53 -j CT --zone 2",
        # A resolver on loopback answers through OUTPUT.
        "-A PYSIDECAR_DNS_CT_OUTPUT -s 127.0.0.53/32 -d 127.0.0.1/32 -p udp -j CT --zone 1",
        "-A PYSIDECAR_DNS_CT_PREROUTING -s 127.0.0.53/32 -p udp --sport 53 -j CT --zone 1",
        "COMMIT",
    ]
    everything = raw(Redirection(owner, dns_servers=("0.0.0.0/0",)))
    assert everything[-3:] == [
        "-A PYSIDECAR_DNS_CT_OUTPUT -p udp --dport 53 -j CT --zone 2",
        "-A PYSIDECAR_DNS_CT_PREROUTING -p udp --sport 53 -j CT --zone 1",
        "COMMIT",
    ]
    ipv6 = raw(Redirection(owner, dns_servers=("::1",), ipv6=True))
    assert "-A PYSIDECAR_DNS_CT_OUTPUT -s ::1/128 -d ::1/128 -p udp -j CT --zone 1" in ipv6
    # Without DNS redirection, or with the split skipped, the chains are there, empty: one
    # uninstall fits all.
    empty = raw(Redirection(owner))[:5] + ["COMMIT"]
    assert raw(Redirection(owner)) == empty
    assert raw(Redirection(owner, dns_servers=("10.0.0.10",), dns_conntrack_zones=False)) == empty
    undo = uninstall_rules().splitlines()
    assert undo[undo.index("*raw") :] == [
        "*raw",
        "-D OUTPUT -p udp -j PYSIDECAR_DNS_CT_OUTPUT",
        "-D PREROUTING -p udp -j PYSIDECAR_DNS_CT_PREROUTING",
        "-F PYSIDECAR_DNS_CT_OUTPUT",
        "-F PYSIDECAR_DNS_CT_PREROUTING",
        "-X PYSIDECAR_DNS_CT_OUTPUT",
        "-X PYSIDECAR_DNS_CT_PREROUTING",
        "COMMIT",
    ]
    out = _run("transparent-proxy", "--gid", "0", "--redirect-all-dns-traffic",
               "--skip-dns-conntrack-zone-split")  # fmt: skip
    assert out.returncode == 0 and "CT --zone" not in out.stdout, out.stderr


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args], capture_output=True, text=True, cwd=REPO,
        timeout=30,
    )  # fmt: skip


def test_the_flags_are_checked() -> None:
    out = _run("transparent-proxy", "--gid", "0", "--redirect-all-dns-traffic",
               "--redirect-dns-port", "25053")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "-A PYSIDECAR_DNS -p udp -j REDIRECT --to-ports 25053" in out.stdout
    out = _run("transparent-proxy", "--gid", "0", "--redirect-dns", "--redirect-all-dns-traffic")
    assert out.returncode == 2 and "not allowed with" in out.stderr
    out = _run("run", "--dataplane", "x.yaml", "--dns-upstream", "dns.example")
    assert out.returncode == 2 and "'dns.example' is not an IP address" in out.stderr
    out = _run("run", "--dataplane", "x.yaml", "--dns-port", "70000")
    assert out.returncode == 1 and "--dns-port must be 0..65535" in out.stderr


async def test_past_max_pending_forwards_the_answer_is_servfail_at_once() -> None:
    """In process, real sockets: an upstream that never answers holds the one forward allowed;
    the next query is not queued behind it but answered SERVFAIL, and a mesh name still is."""
    from sidecar.dns.server import DnsProxy
    from sidecar.observe.stats import DnsStats

    loop = asyncio.get_running_loop()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent.setblocking(False)
    stats = DnsStats("kuma_dns")
    proxy = DnsProxy(_table(), [silent.getsockname()], stats, timeout=30, max_pending=1)
    await proxy.start(("127.0.0.1",), 0)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    try:
        client.connect(("127.0.0.1", proxy.port))
        await loop.sock_sendall(client, query_bytes("example.com", qid=1))
        assert await asyncio.wait_for(
            loop.sock_recv(silent, 512), 10
        )  # the first one reached the upstream, and waits
        await loop.sock_sendall(client, query_bytes("example.org", qid=2))
        await loop.sock_sendall(client, query_bytes("redis.mesh", message.AAAA, qid=3))
        answers = [await asyncio.wait_for(loop.sock_recv(client, 512), 10) for _ in range(2)]
        assert [(a[:2], a[3] & 0x0F) for a in answers] == [
            (b"\x00\x02", message.SERVFAIL),
            (b"\x00\x03", message.NOERROR),
        ]
        assert stats.unanswered_queries == 1 and stats.downstream_tx_responses == 2
    finally:
        proxy.close()
        client.close()
        silent.close()


async def test_port_0_tries_another_port_when_its_number_is_taken_for_tcp(monkeypatch) -> None:
    """Port 0 picks a free UDP port and then binds TCP on the same number, which a TCP socket
    may hold: the proxy closes what it bound and tries another port (as CI once met)."""
    from sidecar.dns.server import DnsProxy
    from sidecar.observe.stats import DnsStats

    real, refused = asyncio.start_server, []

    async def taken_once(*args, **kw):  # the kernel's answer when the TCP port is in use
        if not refused:
            refused.append(args[2])
            raise OSError(errno.EADDRINUSE, "address already in use")
        return await real(*args, **kw)

    monkeypatch.setattr(asyncio, "start_server", taken_once)
    proxy = DnsProxy(_table(), [], DnsStats("kuma_dns"))
    await proxy.start(("127.0.0.1",), 0)
    try:
        # One UDP socket and one TCP server: the first UDP socket was closed, not kept.
        assert refused and len(proxy._udp) == len(proxy._tcp) == 1
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5):
            pass  # TCP on the port the proxy reports, which UDP has too
    finally:
        proxy.close()
