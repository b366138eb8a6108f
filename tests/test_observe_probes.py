"""Probes: virtual probes over plain HTTP; service probes take inbounds out of rotation."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import yaml

from tests.observe_support import admin_port, get, request, start_all, stats
from tests.support import LOOPBACK, free_port, recv_all, wait_for


class App(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path == "/echo":  # what reached the app, as JSON, with headers of its own
            body = json.dumps(
                {
                    "target": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }
            ).encode()
            self.send_response(203)
            self.send_header("content-type", "application/json")
            self.send_header("x-app", "echo")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        status = {"/healthz": 200, "/fail": 500}.get(path, 404)
        body = f"{path} says {status}\n".encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def probed_app(mesh, endpoints: list[dict[str, object]]) -> Iterator[int]:
    """The App behind a sidecar whose virtual probes have `endpoints` (an `inboundPort` of None:
    the App's); yields the probes port."""
    app = ThreadingHTTPServer((LOOPBACK, 0), App)
    threading.Thread(target=app.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        app_port, probes_port = app.server_address[1], free_port()
        endpoints = [{**e, "inboundPort": e["inboundPort"] or app_port} for e in endpoints]
        path = mesh.write(
            "backend-1",
            [{"port": free_port(), "servicePort": app_port, "tags": {"kuma.io/service": "b"}}],
            probes={"port": probes_port, "endpoints": endpoints},
        )
        mesh.start(path)
        yield probes_port
    finally:
        app.shutdown()
        app.server_close()


def test_virtual_probes(mesh_uvloop):
    endpoints = [
        {"inboundPort": None, "inboundPath": "/healthz", "path": "/app/healthz"},
        {"inboundPort": None, "inboundPath": "/fail", "path": "/app/fail"},
        {"inboundPort": free_port(), "inboundPath": "/healthz", "path": "/dead"},
    ]
    with probed_app(mesh_uvloop, endpoints) as probes_port:
        assert request(probes_port, "/app/healthz")[:2] == (200, "/healthz says 200\n")
        assert request(probes_port, "/app/fail")[:2] == (500, "/fail says 500\n")
        assert request(probes_port, "/unknown")[0] == 404
        assert request(probes_port, "/dead")[0] == 503
        assert request(probes_port, "/app/healthz?x=1")[0] == 200, "matched by path"


def call(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, body, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


@pytest.fixture
def echo_probes(mesh_uvloop) -> Iterator[int]:
    """A sidecar whose virtual probes reach the App; yields the probes port."""
    endpoints = [
        {"inboundPort": None, "inboundPath": "/echo", "path": "/8080/echo"},
        {"inboundPort": None, "inboundPath": "/healthz", "path": "/8080/healthz"},
    ]
    with probed_app(mesh_uvloop, endpoints) as probes_port:
        yield probes_port


# Kuma's probe route in Envoy: an exact match on the path (the query aside) and on GET; the path
# rewritten to inboundPath with the query kept; the caller's headers, Host included, forwarded
# less the hop-by-hop ones; the app's status, headers and body passed back.


def test_virtual_probe_forwards_query_and_headers(echo_probes):
    status, body, _ = call(
        echo_probes,
        "/8080/echo?verbose=1&probe=liveness",
        headers={
            "Host": "app.example:8080",
            "X-Probe-Token": "s3cret",
            "X-Hop": "dropped",
            "Connection": "x-hop",
            "Keep-Alive": "timeout=5",
        },
    )
    assert status == 203, body
    seen = json.loads(body)
    assert seen["target"] == "/echo?verbose=1&probe=liveness", "query kept, path rewritten"
    assert seen["headers"]["x-probe-token"] == "s3cret", "the caller's header reaches the app"
    assert seen["headers"]["host"] == "app.example:8080", "Host as the caller sent it"
    assert "x-hop" not in seen["headers"], "a header named by Connection is hop-by-hop"
    assert "keep-alive" not in seen["headers"]
    assert seen["headers"].get("connection", "close") == "close"


def test_virtual_probe_returns_app_headers(echo_probes):
    status, body, headers = call(echo_probes, "/8080/echo")
    assert status == 203
    assert headers["x-app"] == "echo", "the app's header comes back"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["target"] == "/echo"


def test_virtual_probe_is_get_only(echo_probes):
    assert call(echo_probes, "/8080/healthz", "POST")[0] == 404, "a route miss, as in Envoy"
    assert call(echo_probes, "/8080/healthz", "HEAD")[0] == 404
    assert call(echo_probes, "/8080/healthz")[:2] == (200, b"/healthz says 200\n")


def test_virtual_probe_unknown_path(echo_probes):
    assert call(echo_probes, "/8080/unknown")[0] == 404
    assert call(echo_probes, "/8080/healthz/more")[0] == 404, "exact match, not a prefix"
    assert call(echo_probes, "/8080/unknown?x=1", "POST")[0] == 404


def whoami(name: bytes):
    def handler(conn: socket.socket) -> None:
        conn.sendall(name)

    return handler


class Traffic:
    """Opens connection after connection through the outbound, recording who answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.results: list[tuple[float, bytes]] = []  # (when it started, answer; b"" = failed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=5) as c:
                    answer = recv_all(c)
            except OSError:
                answer = b""
            self.results.append((started, answer))
            self._stop.wait(0.005)  # pacing, so three processes do not spin one CPU

    def since(self, moment: float) -> list[bytes]:
        return [answer for started, answer in list(self.results) if started >= moment]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_service_probe_takes_inbound_out_of_rotation_and_back(mesh_uvloop):
    mesh = mesh_uvloop
    probe = {"interval": "0.2s", "timeout": "0.5s", "unhealthyThreshold": 1, "healthyThreshold": 1}
    window = 0.2 * 1 + 2.0  # interval × unhealthy threshold + 2 s
    app_a = mesh.server(whoami(b"a"))
    app_b = mesh.server(whoami(b"b"))
    files = {}
    for name, app in (("backend-a", app_a), ("backend-b", app_b)):
        inbound = {
            "port": free_port(),
            "servicePort": app.port,
            "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "tcp"},
            "serviceProbe": probe,
        }
        files[name] = mesh.write(name, [inbound])
    web, outbound = mesh.client("web-1")
    start_all(mesh, files["backend-a"], files["backend-b"], web)
    traffic = Traffic(outbound)
    try:
        wait_for(lambda: {b"a", b"b"} <= set(traffic.since(0)), what="both backends answering")

        a_port = app_a.port
        app_a.close()  # the app behind backend-a stops answering
        down = time.monotonic()
        wait_for(lambda: len(traffic.since(down + window)) >= 30, timeout=window + 10)
        after = traffic.since(down + window)
        assert set(after) == {b"b"}, "no failed connection after the detection window"
        a_inbound = yaml.safe_load(files["backend-a"].read_text())["networking"]["inbound"][0]
        health = yaml.safe_load((mesh.dir / "backend-a.health.yaml").read_text())
        assert health["inbound"] == [{"port": a_inbound["port"], "ready": False}]
        a_admin, web_admin = admin_port(files["backend-a"]), admin_port(web)
        assert "::health_flags::/failed_active_hc" in get(a_admin, "/clusters")
        assert stats(a_admin)[f"cluster.localhost_{a_port}.membership_healthy"] == 0
        web_clusters = get(web_admin, "/clusters")
        assert f"backend::127.0.0.1:{a_inbound['port']}::health_flags::/failed_eds_health" in (
            web_clusters
        )
        assert stats(web_admin)["cluster.backend.membership_healthy"] == 1
        assert stats(web_admin)["cluster.backend.membership_total"] == 2

        mesh.server(whoami(b"a"), port=a_port)  # the app comes back
        up = time.monotonic()
        wait_for(lambda: b"a" in traffic.since(up), timeout=window + 5, what="traffic back on a")
        wait_for(lambda: len(traffic.since(up + window)) >= 30, timeout=window + 10)
        assert set(traffic.since(up)) <= {b"a", b"b"}, "no failed connection on the way back"
        assert set(traffic.since(up + window)) == {b"a", b"b"}
        assert stats(web_admin)["cluster.backend.membership_healthy"] == 2
    finally:
        traffic.stop()
