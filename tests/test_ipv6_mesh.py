"""Dataplanes on IPv6 addresses: the hop between two sidecars over IPv6, with mTLS, and the names
that Envoy and Kuma give such listeners.

Both sidecars and the app run in a network namespace the test makes (loopback up: `::1`, which
the tests may not use on the host's own loopback). Each Dataplane's `networking.address` is
`::1`, so the inbounds bind `[::1]:port`, the outbound dials the peer there and the inbound's
app is at `[::1]`; the outbounds stay on 127.0.0.1, Kuma's default. What Kuma and Envoy call
them: listeners `inbound:[::1]:port`; in stats the address as Envoy writes it in a stat name,
`:` made `_`, so `[__1]_port` (`envoy_listener_address`, the pattern Envoy's own tag extractor
expects of IPv6) and `inbound_[__1]_port` (the HTTP connection manager's prefix).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pki import Pki
from tests.support import REPO, Sidecar, dataplane, stop_all, wait_for, wait_ready, write_yaml

HTTP_INBOUND, TCP_INBOUND, WEB_INBOUND = 12000, 13000, 11000
HTTP_APP, TCP_APP = 12001, 13001
HTTP_OUTBOUND, TCP_OUTBOUND = 15000, 15001
WEB_ADMIN, BACKEND_ADMIN = 19901, 19902

_ASK = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as s:
    s.sendall(b"over six\\n")
    print(s.makefile("rb").readline().decode(errors="replace").strip())
"""


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """A network namespace with its loopback up; the prefix that runs a command in it."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("curl") is None:
        reason = "needs root, ip and curl for a network namespace"
        if os.environ.get("PYSIDECAR_REQUIRE_NETNS") == "1":
            pytest.fail(f"PYSIDECAR_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)
    name = f"pysc6-{os.getpid() % 10**7}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True
        )
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _run(prefix: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30)


def _get(prefix: list[str], url: str) -> str:
    out = _run(prefix, "curl", "-sS", "--max-time", "10", url)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_two_sidecars_on_ipv6_addresses_carry_http_and_tcp_over_mtls(
    netns: list[str], tmp_path: Path
) -> None:
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    pki = Pki(tmp_path / "certs")
    write_yaml(
        mesh / "backend-1.yaml",
        dataplane(
            "backend-1",
            [
                {"port": HTTP_INBOUND, "servicePort": HTTP_APP,
                 "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}},
                {"port": TCP_INBOUND, "servicePort": TCP_APP,
                 "tags": {"kuma.io/service": "backend-tcp", "kuma.io/protocol": "tcp"}},
            ],
            address="::1",
            admin_port=BACKEND_ADMIN,
        ),
    )  # fmt: skip
    write_yaml(
        mesh / "web-1.yaml",
        dataplane(
            "web-1",
            [{"port": WEB_INBOUND, "servicePort": 11001, "tags": {"kuma.io/service": "web"}}],
            [
                {"port": HTTP_OUTBOUND, "tags": {"kuma.io/service": "backend"}},
                {"port": TCP_OUTBOUND, "tags": {"kuma.io/service": "backend-tcp"}},
            ],
            address="::1",
            admin_port=WEB_ADMIN,
        ),
    )
    for name in ("backend-1", "web-1"):  # each for all its services, as a user issues them
        subprocess.run(
            [sys.executable, "-m", "sidecar", "certs", "issue",
             "--dataplane", str(mesh / f"{name}.yaml"), "--dir", str(pki.dir)],
            check=True, capture_output=True, cwd=REPO, timeout=30,
        )  # fmt: skip
    apps = subprocess.Popen(
        [*netns, sys.executable, "-m", "tests.netns_servers", "--http", str(HTTP_APP),
         "--tcp", str(TCP_APP), "--ipv6"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    sidecars = [
        Sidecar(mesh / f"{name}.yaml", "--mesh", str(mesh), *pki.args(name), prefix=netns,
                log_dir=tmp_path)
        for name in ("backend-1", "web-1")
    ]  # fmt: skip
    try:
        assert apps.stdout is not None and apps.stdout.readline().strip() == "ready"
        wait_ready(*sidecars)
        backend, web = sidecars
        url = f"http://127.0.0.1:{HTTP_OUTBOUND}/over-six"

        def answered() -> bool:  # once web has seen backend's inbounds ready
            out = _run(netns, "curl", "-sf", "--max-time", "5", "-o", "/dev/null", url)
            return out.returncode == 0

        wait_for(answered, 15.0, "an answer through the IPv6 hop")
        seen = json.loads(_get(netns, url))
        headers = {name.lower(): value for name, value in seen["headers"].items()}
        # backend's sidecar called its app from [::1] (the Dataplane's address), over HTTP/1.1
        # (upgraded to HTTP/2 on the hop between the sidecars, and back)
        assert seen["peer"] == "::1"
        assert headers["x-forwarded-proto"] == "http"
        assert "l5d-orig-proto" not in headers
        # TCP through the L4 relay, over the same kind of hop
        tcp = _run(netns, sys.executable, "-c", _ASK, str(TCP_OUTBOUND))
        assert tcp.stdout.strip() == "peer=::1 local=::1:13001 got=over six", tcp.stderr

        stats = _get(netns, f"http://127.0.0.1:{BACKEND_ADMIN}/stats/prometheus")
        for line in (
            'envoy_listener_ssl_handshake{envoy_listener_address="[__1]_12000"} 1',
            'envoy_listener_ssl_handshake{envoy_listener_address="[__1]_13000"} 1',
            "envoy_http_downstream_rq_total"
            '{envoy_http_conn_manager_prefix="inbound_[__1]_12000"} 2',
            'envoy_tcp_downstream_cx_total{envoy_tcp_prefix="inbound_[__1]_13000"} 1',
        ):
            assert line in stats.splitlines(), line
        listeners = _get(netns, f"http://127.0.0.1:{BACKEND_ADMIN}/listeners")
        assert "inbound:[::1]:12000::[::1]:12000" in listeners.splitlines()
        assert "event=ready dataplane=web-1 mesh=default listeners=inbound:[::1]:11000," in web.log
        assert "identity=spiffe://default/web version=TLSv1.3" in backend.log
    finally:
        stop_all(*sidecars)
        apps.terminate()
        apps.wait(10)
