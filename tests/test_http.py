"""HTTP through the mesh with real clients (curl, h2load) and real servers (hypercorn, raw h1).

The app speaks HTTP/1.1 or h2c to its outbound; between the sidecars the requests ride HTTP/2.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess

import h2.config
import h2.connection
import h2.events
import pytest

from tests.apps import Hypercorn
from tests.support import LOOPBACK, free_port, recv_all, wait_ready


@pytest.fixture
def app():
    server = Hypercorn()
    yield server
    server.close()


def http_mesh(mesh, app_port: int, protocol: str | None = "http", replicas: int = 1) -> int:
    """backend (tagged with `protocol`) behind web's outbound; returns the outbound port."""
    tags = {"kuma.io/protocol": protocol} if protocol else {}
    started = []
    for i in range(replicas):
        path, _ = mesh.backend(f"backend-{i}", app_port, tags=tags)
        started.append(mesh.start(path, ready=False))
    web, port = mesh.client("web-1")
    wait_ready(*started, mesh.start(web, ready=False))
    return port


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """curl, with its output kept byte for byte (CRLF included)."""
    result = subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def seen(result: subprocess.CompletedProcess[str]) -> dict:
    body = result.stdout.rsplit("\r\n\r\n", 1)[-1]
    return json.loads(body)


def mesh_connections(port: int) -> int:
    """Established connections accepted on `port` (counted by `ss`, seen from the peer)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len([line for line in out.splitlines() if line.strip()])


def test_http1_app_through_h2_mesh_hop(mesh, app):
    port = http_mesh(mesh, app.port)
    result = curl(
        "-i",
        f"http://{LOOPBACK}:{port}/hello?x=1",
        "-d",
        "payload",
        "-H",
        "Connection: keep-alive, x-hop",
        "-H",
        "x-hop: secret",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "x-multi: a",
        "-H",
        "x-multi: b",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 200 OK\r\n")
    got = seen(result)
    assert got["http_version"] == "1.1"  # HTTP/1.1 again at the app
    assert (got["method"], got["path"], got["query"]) == ("POST", "/hello", "x=1")
    assert got["body_size"] == 7
    names = [k for k, _ in got["headers"]]
    assert "x-hop" not in names and "keep-alive" not in names and "connection" not in names
    assert [v for k, v in got["headers"] if k == "x-multi"] == ["a", "b"], "repeats, in order"
    headers = dict(got["headers"])
    assert headers["host"] == f"{LOOPBACK}:{port}"
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-request-id"])
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert "x-pysidecar-orig-proto" not in headers, "our hop header never reaches the app"


def test_the_mesh_hop_is_http2(mesh, app):
    """The inbound receives HTTP/2: an h1 client behind it on the same port is served by h2."""
    port = http_mesh(mesh, app.port)
    curl(f"http://{LOOPBACK}:{port}/")
    inbound_port = int(re.search(r"inbound:127.0.0.1:(\d+)", mesh.sidecars[0].log).group(1))
    # Prior-knowledge HTTP/2 straight to the inbound works: that is what the outbound speaks.
    direct = curl("--http2-prior-knowledge", f"http://{LOOPBACK}:{inbound_port}/x")
    assert seen(direct)["path"] == "/x"
    assert mesh_connections(inbound_port) >= 1


def test_h2c_prior_knowledge_app_to_http2_service(mesh, app):
    port = http_mesh(mesh, app.port, protocol="http2")
    result = curl("-i", "--http2-prior-knowledge", f"http://{LOOPBACK}:{port}/h2")
    assert result.stdout.startswith("HTTP/2 200")
    assert seen(result)["http_version"] == "2"


def test_h1_app_to_http2_service_gets_h2c_at_the_peer(mesh, app):
    port = http_mesh(mesh, app.port, protocol="http2")
    assert seen(curl(f"http://{LOOPBACK}:{port}/x"))["http_version"] == "2"


def test_head_204_304_and_status_codes(mesh, app):
    port = http_mesh(mesh, app.port)
    head = curl("-I", f"http://{LOOPBACK}:{port}/hello")
    assert head.stdout.startswith("HTTP/1.1 200 OK")
    assert re.search(r"content-length: \d+", head.stdout)
    for status in (204, 304, 404, 500, 503):
        result = curl(
            "-o", "/dev/null", "-w", "%{http_code}", f"http://{LOOPBACK}:{port}/status/{status}"
        )
        assert result.stdout == str(status)


def test_http10_with_and_without_host(mesh, app):
    port = http_mesh(mesh, app.port)
    for request, authority in (
        (b"GET /ten HTTP/1.0\r\nHost: example.test\r\n\r\n", "example.test"),
        (b"GET /ten HTTP/1.0\r\n\r\n", "backend"),
    ):
        with socket.create_connection((LOOPBACK, port), timeout=10) as c:
            c.sendall(request)
            reply = recv_all(c)  # HTTP/1.0: the response ends when the connection closes
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert dict(json.loads(body)["headers"])["host"] == authority


def test_keep_alive_requests_are_balanced_one_by_one(mesh, app):
    """Two endpoints; one client connection; requests alternate between them."""
    port = http_mesh(mesh, app.port, replicas=2)
    inbound_ports = re.findall(
        r"inbound:127.0.0.1:(\d+)", "".join(s.log for s in mesh.sidecars[:2])
    )
    urls = [f"http://{LOOPBACK}:{port}/{i}" for i in range(10)]
    result = curl(*urls)  # curl reuses one connection for all of them
    assert result.returncode == 0
    assert all(mesh_connections(int(p)) == 1 for p in set(inbound_ports)), (
        "each endpoint got its own mesh connection: requests were balanced one by one"
    )


def test_no_healthy_upstream_is_503(mesh):
    web, port = mesh.client("web-1", service="nobody")
    # The service is declared http by a member that is not ready: there is no endpoint.
    path, _ = mesh.backend(
        "nobody-1", free_port(), service="nobody", tags={"kuma.io/protocol": "http"}
    )
    doc = path.read_text().replace("tags:", "health: {ready: false}\n    tags:", 1)
    path.write_text(doc)
    mesh.start(web)
    result = curl("-i", f"http://{LOOPBACK}:{port}/")
    assert result.stdout.startswith("HTTP/1.1 503 Service Unavailable\r\n")
    assert result.stdout.endswith("\r\n\r\nno healthy upstream")


def test_connect_failure_is_503_with_envoy_wording(mesh):
    path, _ = mesh.backend("backend-1", free_port(), tags={"kuma.io/protocol": "http"})
    web, port = mesh.client("web-1")
    mesh.start(web)  # the backend's sidecar never starts: its inbound refuses connections
    result = curl("-i", f"http://{LOOPBACK}:{port}/")
    assert result.stdout.startswith("HTTP/1.1 503 Service Unavailable")
    assert result.stdout.endswith(
        "upstream connect error or disconnect/reset before headers. "
        "reset reason: connection failure"
    )


def test_h2c_request_with_host_and_no_authority_keeps_its_host(mesh, app):
    """RFC 9113 8.3.1: a request may carry Host instead of :authority; Envoy takes Host as the
    authority. The outbound drops Host (the mesh hop carries :authority): the name it held
    must still reach the app."""
    port = http_mesh(mesh, app.port)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    head = [(":method", "GET"), (":scheme", "http"), (":path", "/h"), ("host", "named.test")]
    conn.send_headers(1, head, end_stream=True)
    body = b""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended and (data := sock.recv(65536)):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(len(event.data), 1)
                ended = ended or isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset))
            sock.sendall(conn.data_to_send())
    assert dict(json.loads(body)["headers"])["host"] == "named.test"
