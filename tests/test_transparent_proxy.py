"""Transparent proxying between two pods: network namespaces this test creates, joined by a veth
pair, each with its sidecar and `pysidecar transparent-proxy`'s iptables rules, mTLS on.

web (10.250.0.1) calls backend (10.250.0.2) the Kuma way: by a VIP (10.251.0.x) that only its
outbounds know. Neither sidecar binds an inbound: the apps listen on the inbound ports themselves
and every connection reaches a sidecar through its redirect ports. What is checked, each from the
app's side of a real connection:

- HTTP and TCP to a VIP reach the backend app through both sidecars (the caller's SPIFFE identity
  in XFCC), and the backend app sees its sidecar's 127.0.0.6 (a connection the rules let through);
- a destination that no outbound knows is passed through as it is, and on the backend side a port
  that no inbound has is too (`outbound:passthrough:ipv4`, `inbound:passthrough:ipv4` clusters);
- a loopback outbound stays bound and reachable directly;
- a connection made to the redirect port itself is closed and counted, not looped;
- `--uninstall`'s rules take every chain out again;
- names: web's resolver (dnsmasq on its own address, named in the pod's resolv.conf) is asked
  through `--redirect-dns`'s rule, so `backend.mesh` is answered by web's sidecar with the VIP,
  and other names by dnsmasq, which the sidecar forwards them to;
- IPv6: the pods are dual stack (`ipFamilyMode: DualStack`, ip6tables' rules from `--ipv6`, ::6
  on loopback), and the same calls over IPv6 VIPs, IPv6 passthrough both ways (the app seeing
  ::6) and AAAA answers, asked through the IPv6 nameserver's rule too, work as over IPv4.

Needs root, `ip`, `iptables`, `ip6tables`, `dig` and `dnsmasq`: without them the test is skipped
with the reason, unless PYSIDECAR_REQUIRE_NETNS=1 (CI), where it fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.config.dataplane import dataplane_from_document
from sidecar.defaults import DNS_PORT
from sidecar.identity import ca
from tests.dns_tools import UPSTREAM_ADDRESS, UPSTREAM_NAME, dig, dnsmasq
from tests.pki import Pki
from tests.support import (
    REPO,
    Sidecar,
    client_hello,
    dataplane,
    stop_all,
    wait_for,
    wait_ready,
    write_yaml,
)

DNS_CLIENT_PORT = 40053  # a fixed source port for dig, free in the pod's own namespace
SIDECAR_GROUP = 1337  # the group the sidecars run as: the rules let its connections through
REDIRECT_OUT, REDIRECT_IN = 15001, 15006
WEB, BACKEND = "10.250.0.1", "10.250.0.2"
HTTP_VIP, TCP_VIP = "10.251.0.1", "10.251.0.2"
WEB6, BACKEND6 = "fd00:250::1", "fd00:250::2"
HTTP_VIP6, TCP_VIP6 = "fd00:251::1", "fd00:251::2"
HTTP_PORT, TCP_PORT, OTHER_PORT = 8080, 7070, 9999  # backend app's ports; OTHER: no inbound
LOOPBACK_OUTBOUND = 10080
TP = {
    "redirectPortOutbound": REDIRECT_OUT,
    "redirectPortInbound": REDIRECT_IN,
    "ipFamilyMode": "DualStack",
}

_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(bytes.fromhex(sys.argv[3]) if len(sys.argv) > 3 else b"hello\\n")
    print(s.makefile("rb").readline().decode(errors="replace").strip())
"""


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and iptables"
    tools = ("ip", "iptables-restore", "iptables-save", "ip6tables-restore", "curl", "dig")
    for tool in (*tools, "dnsmasq"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture
def netns_available() -> None:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("PYSIDECAR_REQUIRE_NETNS") == "1":
            pytest.fail(f"PYSIDECAR_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)


@dataclass
class Pod:
    netns: str
    address: str
    address6: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def run(
        self, *argv: str, stdin: str | None = None, group: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`argv` in the pod (as `group`: the sidecar's, whose traffic the rules let through)."""
        return subprocess.run(
            [*self.prefix, *argv],
            input=stdin, capture_output=True, text=True, timeout=30, group=group,
        )  # fmt: skip

    def ask(self, host: str, port: int, first: bytes | None = None) -> str:
        """One line from a TCP server through whatever the rules send the connection to, after
        sending `first` (a line of its own by default); "" when the connection was closed."""
        extra = () if first is None else (first.hex(),)
        return self.run(sys.executable, "-c", _CLIENT, host, str(port), *extra).stdout.strip()

    def who(self, url: str) -> tuple[str, dict[str, str]]:
        """What the backend's HTTP app saw of a GET by curl: its peer, and the request's headers
        (names lower-cased)."""
        out = self.run("curl", "-sS", "--max-time", "10", url)
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout)
        return seen["peer"], {k.lower(): v for k, v in seen["headers"].items()}

    def stats(self, admin_port: int) -> str:
        out = self.run("curl", "-sS", f"http://127.0.0.1:{admin_port}/stats/prometheus")
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture
def pods(netns_available: None) -> Iterator[tuple[Pod, Pod]]:
    """web and backend, each in a namespace of its own, joined by a veth pair, dual stack; web's
    resolvers are at its own addresses (`ip netns exec` puts /etc/netns/<ns>/resolv.conf in
    place)."""
    tag = f"pysc{os.getpid() % 10**7}"
    web, backend = Pod(f"{tag}-web", WEB, WEB6), Pod(f"{tag}-backend", BACKEND, BACKEND6)
    made: list[str] = []
    etc = Path("/etc/netns") / web.netns
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {WEB}\nnameserver {WEB6}\n")
        for pod in (web, backend):
            _ip("netns", "add", pod.netns)
            made.append(pod.netns)
        _ip("link", "add", f"{tag}w", "type", "veth", "peer", "name", f"{tag}b")
        for pod, end in ((web, f"{tag}w"), (backend, f"{tag}b")):
            _ip("link", "set", end, "netns", pod.netns)
            _ip("-n", pod.netns, "addr", "add", f"{pod.address}/24", "dev", end)
            # nodad: usable at once, not after duplicate address detection's second or so.
            _ip("-n", pod.netns, "-6", "addr", "add", f"{pod.address6}/64", "dev", end, "nodad")
            _ip("-n", pod.netns, "link", "set", end, "up")
            _ip("-n", pod.netns, "link", "set", "lo", "up")
            # The sidecar's IPv6 connections to its app leave from ::6, given to lo here.
            _ip("-n", pod.netns, "-6", "addr", "add", "::6/128", "dev", "lo")
        # The VIPs lead out of web's pod, as a service CIDR would; only the rules catch them.
        _ip("-n", web.netns, "route", "add", "10.251.0.0/16", "dev", f"{tag}w")
        _ip("-n", web.netns, "-6", "route", "add", "fd00:251::/64", "dev", f"{tag}w")
        yield web, backend
    finally:
        for netns in made:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)
        shutil.rmtree(etc, ignore_errors=True)


def _rules(dataplane_file: Path, *extra: str, pod: Pod | None = None) -> str:
    """The rules as `pysidecar transparent-proxy` prints them (in `pod`: its resolv.conf)."""
    out = subprocess.run(
        [*(pod.prefix if pod else ()), sys.executable, "-m", "sidecar", "transparent-proxy",
         "--dataplane", str(dataplane_file), *extra],
        capture_output=True, text=True, check=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    return out.stdout


def _apply(pod: Pod, rules: str, ipv6: bool = False) -> None:
    out = pod.run("ip6tables-restore" if ipv6 else "iptables-restore", "--noflush", stdin=rules)
    assert out.returncode == 0, out.stderr


def _metric(text: str, name: str, label: str, value: str) -> float:
    match = re.search(rf'^{name}\{{[^}}]*{label}="{re.escape(value)}"[^}}]*\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def sidecar_options() -> tuple[str, tuple[str, ...]]:
    """The sidecars' event loop and further flags (tests parametrize them)."""
    return "uvloop", ()


@pytest.fixture
def mesh(
    tmp_path: Path, pods: tuple[Pod, Pod], sidecar_options: tuple[str, tuple[str, ...]]
) -> Iterator[dict]:
    web, backend = pods
    loop, args = sidecar_options
    mesh_dir = tmp_path / "mesh"
    mesh_dir.mkdir()
    pki = Pki(tmp_path / "certs")
    backend_doc = dataplane(
        "backend-1",
        [
            {"port": HTTP_PORT, "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}},
            {
                "port": TCP_PORT,
                "tags": {"kuma.io/service": "backend-tcp", "kuma.io/protocol": "tcp"},
            },
        ],
        address=BACKEND,
    )
    backend_doc["networking"]["transparentProxying"] = TP
    web_doc = dataplane(
        "web-1",
        [{"port": 8081, "tags": {"kuma.io/service": "web"}}],
        [
            {"address": HTTP_VIP, "port": 80, "tags": {"kuma.io/service": "backend"}},
            {"address": TCP_VIP, "port": TCP_PORT, "tags": {"kuma.io/service": "backend-tcp"}},
            {"address": "127.0.0.1", "port": LOOPBACK_OUTBOUND,
             "tags": {"kuma.io/service": "backend"}},
            {"address": HTTP_VIP6, "port": 80, "tags": {"kuma.io/service": "backend"}},
            # Spelled otherwise than the kernel reports it: found all the same.
            {"address": "FD00:251:0:0::2", "port": TCP_PORT,
             "tags": {"kuma.io/service": "backend-tcp"}},
        ],
        address=WEB,
    )  # fmt: skip
    web_doc["networking"]["transparentProxying"] = TP
    files = {}
    for name, doc in (("backend-1", backend_doc), ("web-1", web_doc)):
        files[name] = write_yaml(mesh_dir / f"{name}.yaml", doc)
        # The workload certificate names every service the Dataplane serves.
        issued = ca.issue_workload(pki.ca.cert, pki.ca.key, dataplane_from_document(doc, name))
        ca.write_cert_key(pki.dir / f"{name}.crt", pki.dir / f"{name}.key", issued)
    apps = subprocess.Popen(
        [*backend.prefix, sys.executable, "-m", "tests.netns_servers", "--http", str(HTTP_PORT),
         "--tcp", str(TCP_PORT), "--tcp", str(OTHER_PORT), "--ipv6"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    sidecars: list[Sidecar] = []
    resolver = contextlib.ExitStack()
    try:
        assert apps.stdout is not None and apps.stdout.readline().strip() == "ready"
        resolver.enter_context(dnsmasq(WEB, 53, prefix=tuple(web.prefix)))  # web's own resolver
        members = ((backend, "backend-1", ()), (web, "web-1", ("--redirect-dns",)))
        # Four CLI runs, a Python start-up each: printed side by side, then applied in order.
        with ThreadPoolExecutor(4) as pool:
            printed = {
                (name, family): pool.submit(
                    _rules, files[name], "--gid", str(SIDECAR_GROUP), *dns, *family, pod=pod
                )
                for pod, name, dns in members
                for family in ((), ("--ipv6",))
            }
        for pod, name, _ in members:
            _apply(pod, printed[name, ()].result())
            _apply(pod, printed[name, ("--ipv6",)].result(), ipv6=True)
            sidecars.append(
                Sidecar(
                    files[name],
                    *pki.args(name),
                    *args,
                    loop=loop,
                    prefix=pod.prefix,
                    group=SIDECAR_GROUP,
                    log_dir=tmp_path,
                )
            )
        wait_ready(*sidecars)
        yield {
            "web": web,
            "backend": backend,
            "files": files,
            "admin": {n: d["networking"]["admin"]["port"] for n, d in (("web", web_doc),
                                                                      ("backend", backend_doc))},
            "sidecars": sidecars,
        }  # fmt: skip
    finally:
        stop_all(*sidecars)
        resolver.close()
        apps.terminate()
        apps.wait(10)


@pytest.mark.parametrize("sidecar_options", [("uvloop", ()), ("asyncio", ())])
def test_http_and_tcp_reach_the_backend_app_through_both_sidecars(mesh: dict) -> None:
    web: Pod = mesh["web"]
    peer, headers = web.who(f"http://{HTTP_VIP}/who")
    assert peer == "127.0.0.6"  # from the backend's sidecar, let through by the rules
    assert "spiffe://default/web" in headers["x-forwarded-client-cert"]  # over the mesh's mTLS
    assert headers["host"] == HTTP_VIP

    assert web.ask(TCP_VIP, TCP_PORT) == f"peer=127.0.0.6 local={BACKEND}:{TCP_PORT} got=hello"

    # The backend's inbounds bound nothing: the apps hold their ports, and only the redirect
    # listeners (0.0.0.0:15006 and 15001) are the sidecar's.
    backend_log = mesh["sidecars"][0].log
    assert (
        f"listener=inbound:{BACKEND}:{HTTP_PORT} cluster=localhost:{HTTP_PORT} accept=redirected"
        in backend_log
    )
    stats = web.stats(mesh["admin"]["web"])
    assert _metric(stats, "envoy_cluster_upstream_rq_total", "envoy_cluster_name", "backend") >= 1
    backend_stats = mesh["backend"].stats(mesh["admin"]["backend"])
    tcp = _metric(
        backend_stats, "envoy_tcp_downstream_cx_total", "envoy_tcp_prefix",
        f"inbound_{BACKEND}_{TCP_PORT}",
    )  # fmt: skip
    assert tcp == 1


@pytest.mark.parametrize(
    "sidecar_options", [("uvloop", ()), ("asyncio", ("--tcp-relay", "protocol"))]
)
def test_unknown_destinations_pass_through_both_ways(mesh: dict) -> None:
    web: Pod = mesh["web"]
    # No outbound knows backend's address, and no inbound of backend has this port.
    assert web.ask(BACKEND, OTHER_PORT) == f"peer=127.0.0.6 local={BACKEND}:{OTHER_PORT} got=hello"
    web_stats = web.stats(mesh["admin"]["web"])
    backend_stats = mesh["backend"].stats(mesh["admin"]["backend"])
    name = "envoy_cluster_upstream_cx_total"
    assert _metric(web_stats, name, "envoy_cluster_name", "outbound_passthrough_ipv4") == 1
    assert _metric(backend_stats, name, "envoy_cluster_name", "inbound_passthrough_ipv4") == 1


def test_a_mesh_without_passthrough_closes_what_leaves_it(mesh: dict) -> None:
    web: Pod = mesh["web"]
    mesh_file = mesh["files"]["web-1"].parent / "mesh.yaml"
    write_yaml(mesh_file, {"type": "Mesh", "name": "default",
                           "networking": {"outbound": {"passthrough": False}}})  # fmt: skip

    def blocked() -> float:
        return _metric(
            web.stats(mesh["admin"]["web"]), "envoy_tcp_downstream_cx_no_route",
            "envoy_tcp_prefix", f"outbound_0.0.0.0_{REDIRECT_OUT}",
        )  # fmt: skip

    # The mesh directory is read again within a poll: the first closed connection shows it.
    wait_for(lambda: web.ask(BACKEND, OTHER_PORT) == "" and blocked() >= 1, what="no passthrough")
    assert "event=passthrough_blocked listener=outbound:passthrough:ipv4" in mesh["sidecars"][1].log
    assert f"destination={BACKEND}:{OTHER_PORT}" in mesh["sidecars"][1].log
    # What the mesh knows still goes: a VIP, and IPv6 alike.
    assert web.ask(TCP_VIP, TCP_PORT).startswith("peer=127.0.0.6")
    assert web.ask(TCP_VIP6, TCP_PORT).startswith("peer=127.0.0.6")
    assert web.ask(BACKEND6, OTHER_PORT) == ""

    mesh_file.unlink()  # Kuma's default again
    wait_for(lambda: web.ask(BACKEND, OTHER_PORT).startswith("peer=127.0.0.6"), what="passthrough")


def test_mesh_passthrough_lets_out_only_what_it_matches(mesh: dict) -> None:
    web: Pod = mesh["web"]
    policy_file = mesh["files"]["web-1"].parent / "passthrough.yaml"
    write_yaml(policy_file, {
        "type": "MeshPassthrough", "name": "some-out", "mesh": "default",
        "spec": {
            "targetRef": {"kind": "Dataplane", "name": "web-1"},
            "default": {"passthroughMode": "Matched", "appendMatch": [
                {"type": "IP", "value": BACKEND, "port": OTHER_PORT},
                {"type": "Domain", "value": "*.allowed.example", "port": OTHER_PORT,
                 "protocol": "http"},
                {"type": "Domain", "value": "tls.allowed.example", "port": OTHER_PORT,
                 "protocol": "tls"},
            ]},
        },
    })  # fmt: skip
    sidecar = mesh["sidecars"][1]
    sidecar.wait_log("event=passthrough_changed mode=Matched")
    answered = f"peer=::6 local={BACKEND6}:{OTHER_PORT} got="
    # By address: IPv4 to the backend's port, whatever the bytes; nothing else to that address.
    assert web.ask(BACKEND, OTHER_PORT).startswith("peer=127.0.0.6")
    assert web.ask(BACKEND, TCP_PORT + 1) == ""  # counted below: refused, not just unanswered
    # By name, over IPv6 where no address entry allows anything: a request's Host, a ClientHello's
    # server name (the first line the echo app reads holds part of it).
    allowed = b"GET / HTTP/1.1\r\nHost: api.allowed.example\r\n\r\n"
    assert web.ask(BACKEND6, OTHER_PORT, allowed) == f"{answered}GET / HTTP/1.1"
    hello = client_hello("tls.allowed.example") + b"\n"
    assert web.ask(BACKEND6, OTHER_PORT, hello).startswith(answered)
    refused = b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n"  # not under *.allowed
    assert web.ask(BACKEND6, OTHER_PORT, refused) == ""
    assert web.ask(BACKEND6, OTHER_PORT, client_hello("other.example") + b"\n") == ""
    assert web.ask(BACKEND6, OTHER_PORT) == ""
    # One line per listener (then held back a while): each one's first refusal.
    assert f"destination={BACKEND}:{TCP_PORT + 1} name=- " in sidecar.log
    assert f"destination=[{BACKEND6}]:{OTHER_PORT} name=allowed.example " in sidecar.log
    stats = web.stats(mesh["admin"]["web"])
    counted = _metric(stats, "envoy_listener_no_filter_chain_match", "envoy_listener_address",
                      f"0.0.0.0_{REDIRECT_OUT}")  # fmt: skip
    assert counted == 1  # the IPv4 one; the rest were the IPv6 listener's
    # The mesh's services are not passthrough: still reached.
    assert web.ask(TCP_VIP, TCP_PORT).startswith("peer=127.0.0.6")

    policy_file.unlink()  # no MeshPassthrough: the Mesh's switch (on, without a Mesh) again
    sidecar.wait_log("event=passthrough_changed mode=All")
    assert web.ask(BACKEND6, OTHER_PORT).startswith(answered)


def test_a_loopback_outbound_stays_bound(mesh: dict) -> None:
    assert mesh["web"].who(f"http://127.0.0.1:{LOOPBACK_OUTBOUND}/")[0] == "127.0.0.6"


def test_a_connection_to_the_redirect_port_itself_is_closed_and_counted(mesh: dict) -> None:
    web: Pod = mesh["web"]
    assert web.ask("127.0.0.1", REDIRECT_OUT) == ""  # closed without an answer, not looped
    admin = mesh["admin"]["web"]

    def counted() -> float:
        stats = web.stats(admin)
        return _metric(
            stats, "envoy_listener_no_filter_chain_match", "envoy_listener_address",
            f"0.0.0.0_{REDIRECT_OUT}",
        )  # fmt: skip

    wait_for(lambda: counted() == 1, what="no_filter_chain_match")
    assert "event=not_redirected listener=outbound:passthrough:ipv4" in mesh["sidecars"][1].log
    # ... and the sidecar goes on serving.
    assert web.ask(TCP_VIP, TCP_PORT).startswith("peer=127.0.0.6")


def test_uninstall_takes_every_rule_out(mesh: dict) -> None:
    web: Pod = mesh["web"]
    before = web.run("iptables-save", "-t", "nat").stdout
    assert "PYSIDECAR_OUTBOUND_REDIRECT" in before and "--to-ports 15006" in before
    _apply(web, _rules(mesh["files"]["web-1"], "--uninstall"))
    after = web.run("iptables-save", "-t", "nat").stdout
    assert "PYSIDECAR" not in after
    # Without the rules web's connections go out as they are: around its sidecar.
    assert web.ask(BACKEND, OTHER_PORT).startswith("peer=127.0.0.6")  # backend's still redirects
    stats = web.stats(mesh["admin"]["web"])
    name = "envoy_cluster_upstream_cx_total"
    assert _metric(stats, name, "envoy_cluster_name", "outbound_passthrough_ipv4") == 0


def test_mesh_names_resolve_to_the_vips_and_other_names_upstream(mesh: dict) -> None:
    web: Pod = mesh["web"]
    # glibc's resolver asks web's resolver (10.250.0.1:53); the rules hand the query to the
    # sidecar's DNS proxy, whose answer comes back as if from 10.250.0.1.
    found = web.run("getent", "ahostsv4", "backend.mesh")
    assert found.returncode == 0 and found.stdout.split()[0] == HTTP_VIP, found
    _, headers = web.who("http://backend.mesh/who")
    assert headers["host"] == "backend.mesh"
    assert "spiffe://default/web" in headers["x-forwarded-client-cert"]
    assert web.ask("backend-tcp.mesh", TCP_PORT).startswith("peer=127.0.0.6")
    # Names outside the mesh: forwarded to the same resolver, by the sidecar, which the rules
    # let through to dnsmasq.
    upstream = web.run("getent", "ahostsv4", UPSTREAM_NAME)
    assert upstream.returncode == 0 and upstream.stdout.split()[0] == UPSTREAM_ADDRESS, upstream
    assert web.run("getent", "ahostsv4", "nothing-here.mesh").returncode == 2  # NXDOMAIN
    stats = web.stats(mesh["admin"]["web"])
    label = ("envoy_dns_filter_prefix", "kuma_dns")
    assert _metric(stats, "envoy_dns_filter_known_domain_queries", *label) >= 3
    assert _metric(stats, "envoy_dns_filter_externally_resolved_queries", *label) >= 1
    assert _metric(stats, "envoy_dns_filter_unanswered_queries", *label) == 0


def test_the_sidecars_own_queries_never_take_the_apps_redirection(mesh: dict) -> None:
    """Conntrack zones apart, as Kuma's rules put them: the app's queries (redirected to the DNS
    proxy) in one, the sidecar's own (to the real resolver) in another. Otherwise a query of the
    sidecar's that leaves from a port an app query used a moment before matches that query's
    conntrack entry, and the entry's redirection sends it back to the sidecar's own DNS proxy."""
    web: Pod = mesh["web"]
    query = ("dig", "+time=2", "+tries=1", "-b", f"{WEB}#{DNS_CLIENT_PORT}", f"@{WEB}")
    app = web.run(*query, "+short", "backend.mesh")
    assert app.stdout.split() == [HTTP_VIP], app  # answered by the DNS proxy
    # The same addresses and ports from the sidecar's group: dnsmasq itself answers, refusing
    # a name it does not serve, as it answers every query the sidecar forwards.
    own = web.run(*query, "backend.mesh", group=SIDECAR_GROUP)
    assert "status: REFUSED" in own.stdout, own.stdout + own.stderr


def test_ipv6_is_redirected_as_ipv4_is(mesh: dict) -> None:
    web: Pod = mesh["web"]
    # An IPv6 VIP, through both sidecars over mTLS (their hop is backend's IPv4 address).
    _, headers = web.who(f"http://[{HTTP_VIP6}]/who")
    assert "spiffe://default/web" in headers["x-forwarded-client-cert"]
    assert headers["host"] == f"[{HTTP_VIP6}]"
    assert web.ask(TCP_VIP6, TCP_PORT) == f"peer=127.0.0.6 local={BACKEND}:{TCP_PORT} got=hello"
    # Passthrough both ways over IPv6: backend's app sees its sidecar's ::6.
    expected = f"peer=::6 local={BACKEND6}:{OTHER_PORT} got=hello"
    assert web.ask(BACKEND6, OTHER_PORT) == expected
    name = "envoy_cluster_upstream_cx_total"
    web_stats = web.stats(mesh["admin"]["web"])
    backend_stats = mesh["backend"].stats(mesh["admin"]["backend"])
    assert _metric(web_stats, name, "envoy_cluster_name", "outbound_passthrough_ipv6") == 1
    assert _metric(backend_stats, name, "envoy_cluster_name", "inbound_passthrough_ipv6") == 1
    assert _metric(web_stats, name, "envoy_cluster_name", "outbound_passthrough_ipv4") == 0
    # Names: the AAAA record of the IPv6 VIP, also when asked of the IPv6 nameserver, whose
    # queries ip6tables hands to the sidecar's DNS proxy on ::1.
    found = web.run("getent", "ahostsv6", "backend.mesh")
    assert found.returncode == 0 and found.stdout.split()[0] == HTTP_VIP6, found
    asked = web.run("dig", "+short", "+time=2", "+tries=1", f"@{WEB6}", "backend.mesh", "AAAA")
    assert asked.stdout.split() == [HTTP_VIP6], asked
    assert "event=transparent_source_missing" not in mesh["sidecars"][1].log


def test_without_the_ipv6_source_address_the_sidecar_says_how_to_add_it(
    netns_available: None, tmp_path: Path
) -> None:
    """A pod without ::6 on loopback: the sidecar starts (IPv4 and the outbound direction do not
    need it) and names the command that gives it, once. A reload to `ipFamilyMode: IPv4` then
    takes the IPv6 listeners and the DNS proxy's ::1 away."""
    netns = f"pysc{os.getpid() % 10**7}-bare"
    _ip("netns", "add", netns)
    sidecar = None
    try:
        _ip("-n", netns, "link", "set", "lo", "up")
        doc = dataplane("web-1", [{"port": 8081, "tags": {"kuma.io/service": "web"}}])
        doc["networking"]["transparentProxying"] = TP
        path = write_yaml(tmp_path / "web-1.yaml", doc)
        sidecar = Sidecar(path, prefix=("ip", "netns", "exec", netns), log_dir=tmp_path)
        sidecar.wait_ready()
        log = sidecar.log
        assert log.count("event=transparent_source_missing address=::6") == 1
        assert "fix='ip -6 addr add ::6/128 dev lo'" in log
        assert "listener=inbound:passthrough:ipv6" in log  # bound all the same
        prefix = ("ip", "netns", "exec", netns)
        # The sidecar's own zone answers, a name it lacks included (nothing else answers here).
        assert dig("::1", DNS_PORT, "web.mesh", "AAAA", prefix=prefix).status == "NXDOMAIN"

        doc["networking"]["transparentProxying"] = {**TP, "ipFamilyMode": "IPv4"}
        write_yaml(path, doc)
        sidecar.wait_log("event=listener_removed listener=outbound:passthrough:ipv6")
        sidecar.wait_log("event=listener_removed listener=inbound:passthrough:ipv6")
        wait_for(lambda: sidecar.log.count("event=dns_bound") == 2, what="the DNS proxy again")
        assert "event=dns_bound address=127.0.0.1:15053 " in sidecar.log
        assert dig("::1", DNS_PORT, "web.mesh", "AAAA", prefix=prefix).status == ""  # no answer
        assert dig("127.0.0.1", DNS_PORT, "web.mesh", prefix=prefix).status == "NXDOMAIN"
    finally:
        if sidecar is not None:
            sidecar.stop()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)
