"""The admin API: every Envoy path, POST-only mutations, /ready through drain and health checks."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from tests.observe_support import admin_port, exchange, get, post, request, start_all, stats
from tests.support import LOOPBACK, REPO, echo, free_port, port_open

MUTATIONS = (
    "/quitquitquit",
    "/healthcheck/fail",
    "/healthcheck/ok",
    "/drain_listeners",
    "/reset_counters",
    "/logging?level=debug",
)


@pytest.fixture
def pair(mesh_uvloop):
    """app ← backend-1 ← web-1; returns (mesh, web file, outbound port, web admin port)."""
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, outbound = mesh.client("web-1")
    start_all(mesh, backend, web)
    assert exchange(outbound, b"hello") == b"hello"
    return mesh, web, outbound, admin_port(web)


def test_every_admin_path(pair):
    mesh, web, outbound, port = pair
    backend_inbound = yaml.safe_load((mesh.dir / "backend-1.yaml").read_text())["networking"][
        "inbound"
    ][0]["port"]
    assert request(port, "/ready") == (200, "LIVE\n", request(port, "/ready")[2])

    text = get(port, "/stats")
    assert f"tcp.outbound_127.0.0.1_{outbound}.downstream_cx_total: 1\n" in text
    assert "server.live: 1\n" in text
    assert all(": " in line for line in text.splitlines())
    assert "cluster.backend.upstream_cx_connect_fail: 0" in text
    assert "cluster.backend.upstream_cx_connect_fail" not in get(port, "/stats?usedonly")
    filtered = get(port, "/stats?filter=^cluster%5C.backend%5C.")
    assert filtered and all(line.startswith("cluster.backend.") for line in filtered.splitlines())
    assert request(port, "/stats?filter=(")[0] == 400
    doc = json.loads(get(port, "/stats?format=json"))
    assert {"name": "cluster.backend.upstream_cx_total", "value": 1} in doc["stats"]
    only_backend = "filter=%5Ecluster%5C.backend%5C."
    assert get(port, f"/stats?format=prometheus&{only_backend}") == get(
        port, f"/stats/prometheus?{only_backend}"
    )
    assert 'envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"} 1' in get(
        port, "/stats/prometheus"
    )

    dump = json.loads(get(port, "/config_dump"))
    kinds = [c["@type"].rsplit(".", 1)[-1] for c in dump["configs"]]
    assert kinds == [
        "DataplaneConfigDump",
        "ListenersConfigDump",
        "ClustersConfigDump",
        "EndpointsConfigDump",
        "SecretsConfigDump",
    ]
    assert dump["configs"][0]["dataplane"]["name"] == "web-1"
    listeners = {
        entry["name"]: entry["active_state"]["listener"]
        for entry in dump["configs"][1]["dynamic_listeners"]
    }
    assert listeners[f"outbound:127.0.0.1:{outbound}"]["protocol"] == "auto", "undeclared: sniffed"
    assert listeners[f"outbound:127.0.0.1:{outbound}"]["cluster"] == "backend"
    endpoints = {
        e["endpoint_config"]["cluster_name"]: e["endpoint_config"]["endpoints"][0]["lb_endpoints"]
        for e in dump["configs"][3]["dynamic_endpoint_configs"]
    }
    assert endpoints["backend"] == [
        {
            "endpoint": {
                "address": {"socket_address": {"address": LOOPBACK, "port_value": backend_inbound}}
            },
            "health_status": "HEALTHY",
            "health_flags": "healthy",
        }
    ]
    assert dump["configs"][4]["dynamic_active_secrets"] == []

    clusters = get(port, "/clusters")
    host = f"backend::127.0.0.1:{backend_inbound}"
    assert f"{host}::health_flags::healthy\n" in clusters
    assert f"{host}::cx_total::1\n" in clusters
    assert "backend::default_priority::max_connections::1024\n" in clusters
    statuses = json.loads(get(port, "/clusters?format=json"))["cluster_statuses"]
    backend = next(c for c in statuses if c["name"] == "backend")
    assert backend["host_statuses"][0]["health_status"] == {"eds_health_status": "HEALTHY"}

    assert f"outbound:127.0.0.1:{outbound}::127.0.0.1:{outbound}\n" in get(port, "/listeners")
    listener_statuses = json.loads(get(port, "/listeners?format=json"))["listener_statuses"]
    assert {s["name"] for s in listener_statuses} >= {f"outbound:127.0.0.1:{outbound}"}

    info = json.loads(get(port, "/server_info"))
    assert info["state"] == "LIVE" and info["node"]["id"] == "default.web-1"
    assert json.loads(get(port, "/certs")) == {"certificates": []}
    assert int(json.loads(get(port, "/memory"))["allocated"]) > 1_000_000
    help_text = get(port, "/help")
    for path in ("/ready", "/stats", "/config_dump", "/clusters", "/quitquitquit", "/logging"):
        assert f"  {path}" in help_text
    assert request(port, "/no/such/path")[0] == 404
    assert request(port, "/ready", "HEAD")[0] == 200

    mutations_refuse_get_with_400(port)
    healthcheck_fail_and_ok(mesh, outbound, port)
    logging_levels(port)
    bad_requests_never_take_the_admin_down(port)


def mutations_refuse_get_with_400(port: int) -> None:
    for path in MUTATIONS:
        status, body, _ = request(port, path)
        assert (status, body) == (400, "Method GET not allowed, POST required.\n"), path
    assert request(port, "/ready")[0] == 200, "nothing changed"


def healthcheck_fail_and_ok(mesh, outbound: int, port: int) -> None:
    health = mesh.dir / "web-1.health.yaml"
    assert yaml.safe_load(health.read_text())["inbound"][0]["ready"] is True
    assert post(port, "/healthcheck/fail") == "OK\n"
    assert request(port, "/ready")[:2] == (503, "DRAINING\n")
    assert stats(port)["server.live"] == 0
    assert yaml.safe_load(health.read_text())["inbound"][0]["ready"] is False
    assert exchange(outbound, b"still relaying") == b"still relaying"
    assert post(port, "/healthcheck/ok") == "OK\n"
    assert request(port, "/ready")[:2] == (200, "LIVE\n")
    assert yaml.safe_load(health.read_text())["inbound"][0]["ready"] is True


def logging_levels(port: int) -> None:
    body = post(port, "/logging?level=warning")
    assert "  sidecar: warning" in body
    assert "  sidecar.tcp: warning" in body
    assert "  sidecar.tcp: debug" in post(port, "/logging?sidecar.tcp=debug")
    assert request(port, "/logging?level=loud", "POST")[0] == 400
    assert request(port, "/logging?nobody=info", "POST")[0] == 404


def test_drain_listeners_stops_accepting_and_leaves_ready(pair):
    """As Envoy's: /ready depends on /healthcheck/fail (and the SIGTERM drain), not on
    /drain_listeners (kuma-dp fails the health check first)."""
    mesh, web, outbound, port = pair
    with socket.create_connection((LOOPBACK, outbound), timeout=10) as open_conn:
        open_conn.sendall(b"one")
        assert open_conn.recv(10) == b"one"
        assert post(port, "/drain_listeners") == "OK\n"
        assert not port_open(outbound)
        assert request(port, "/ready")[:2] == (200, "LIVE\n")
        open_conn.sendall(b"two")
        assert open_conn.recv(10) == b"two", "open connections live on"


def test_ready_fails_during_sigterm_drain_on_admin_and_dataplane_address(mesh_uvloop):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    metrics_port = free_port()
    backend, _ = mesh.backend("backend-1", app.port)
    web, outbound = mesh.client(
        "web-1", metrics={"type": "prometheus", "conf": {"port": metrics_port}}
    )
    _, sidecar = start_all(mesh, backend, (web, {"drain_timeout": 20}))
    port = admin_port(web)
    assert request(metrics_port, "/ready")[:2] == (200, "LIVE\n")
    with socket.create_connection((LOOPBACK, outbound), timeout=10) as c:
        c.sendall(b"x")
        assert c.recv(1) == b"x"
        sidecar.signal(signal.SIGTERM)
        sidecar.wait_log("event=draining")
        assert request(port, "/ready")[:2] == (503, "DRAINING\n")
        assert request(metrics_port, "/ready")[:2] == (503, "DRAINING\n")
        health = yaml.safe_load((mesh.dir / "web-1.health.yaml").read_text())
        assert [i["ready"] for i in health["inbound"]] == [False]
    assert sidecar.proc.wait(10) == 0


def test_quitquitquit_stops_gracefully(pair):
    mesh, web, outbound, port = pair
    sidecar = next(s for s in mesh.sidecars if s.dataplane_file == web)
    assert post(port, "/quitquitquit") == "OK\n"
    assert sidecar.proc.wait(10) == 0
    assert "event=quit_requested" in sidecar.log and "event=drained" in sidecar.log


def bad_requests_never_take_the_admin_down(port: int) -> None:
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 4,
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 100_000,
        b"GET /ready HTTP/1.1\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n",
        b"POST /healthcheck/fail HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for payload in garbage:
        with socket.create_connection((LOOPBACK, port), timeout=10) as c:
            try:
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                reply = c.recv(100)
            except (BrokenPipeError, ConnectionResetError):
                continue
            assert reply.startswith((b"HTTP/1.1 4", b"HTTP/1.1 2")) or reply == b"", reply
    # A client that connects and says nothing does not block anyone else.
    with socket.create_connection((LOOPBACK, port), timeout=10):
        assert get(port, "/ready") == "LIVE\n"
    # Keep-alive: two requests on one connection.
    with socket.create_connection((LOOPBACK, port), timeout=10) as c:
        c.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\nGET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"LIVE\n") < 2:
            chunk = c.recv(4096)
            assert chunk
            data += chunk
    assert request(port, "/ready")[:2] == (200, "LIVE\n"), "healthcheck/fail was not half-applied"


def test_admin_bind_failure_stops_start_up(mesh_uvloop):
    mesh = mesh_uvloop
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        inbound = free_port()
        path = mesh.write(
            "web-1",
            [{"port": inbound, "servicePort": free_port(), "tags": {"kuma.io/service": "web"}}],
            admin_port=busy,
        )
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "--dataplane", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
    assert result.returncode == 1
    assert f"listener admin: cannot bind 127.0.0.1:{busy}" in result.stderr
    assert not port_open(inbound)


def test_metrics_port_taken_stops_start_up(mesh_uvloop):
    mesh = mesh_uvloop
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        path = mesh.write(
            "web-1",
            [{"port": free_port(), "servicePort": free_port(), "tags": {"kuma.io/service": "web"}}],
            metrics={"type": "prometheus", "conf": {"port": busy}},
        )
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "--dataplane", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
    assert result.returncode == 1
    assert f"listener metrics: cannot bind 127.0.0.1:{busy}" in result.stderr
