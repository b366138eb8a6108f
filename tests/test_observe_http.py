"""HTTP and gRPC stats: exact counters after known L7 traffic, and the HTTP access log."""

from __future__ import annotations

import re

import grpc

from tests.apps import Hypercorn
from tests.observe_support import admin_port, stats
from tests.support import LOOPBACK, wait_for, wait_ready
from tests.test_grpc import OPTIONS, SERVICE, grpc_app  # noqa: F401 - fixture
from tests.test_http import curl


def test_exact_http_counters_both_sides_and_access_log(mesh_uvloop, tmp_path):
    mesh = mesh_uvloop
    app = Hypercorn()
    try:
        backend, inbound = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        web, outbound = mesh.client("web-1")
        log_file = tmp_path / "web-access.log"
        wait_ready(
            mesh.start(backend, ready=False),
            mesh.start(web, "--access-log", str(log_file), ready=False),
        )
        urls = [f"http://{LOOPBACK}:{outbound}/ok/{i}" for i in range(3)]
        urls.append(f"http://{LOOPBACK}:{outbound}/status/404")
        assert (
            curl(
                "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", *urls
            ).returncode
            == 0
        )
        result = curl(
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://{LOOPBACK}:{outbound}/status/503",
        )
        assert result.stdout == "503"
    finally:
        app.close()
    out, inn = f"outbound_127.0.0.1_{outbound}", f"inbound_127.0.0.1_{inbound}"
    web_stats = stats(admin_port(web))
    assert web_stats[f"http.{out}.downstream_rq_total"] == 5
    assert web_stats[f"http.{out}.downstream_rq_http1_total"] == 4
    assert web_stats[f"http.{out}.downstream_rq_http2_total"] == 1
    assert web_stats[f"http.{out}.downstream_rq_2xx"] == 3
    assert web_stats[f"http.{out}.downstream_rq_4xx"] == 1
    assert web_stats[f"http.{out}.downstream_rq_5xx"] == 1
    assert web_stats[f"http.{out}.downstream_rq_active"] == 0
    assert web_stats["cluster.backend.upstream_rq_total"] == 5
    assert web_stats["cluster.backend.upstream_rq_200"] == 3
    assert web_stats["cluster.backend.upstream_rq_404"] == 1
    assert web_stats["cluster.backend.external.upstream_rq_5xx"] == 1
    assert web_stats["cluster.backend.upstream_rq_active"] == 0
    assert web_stats["cluster.backend.upstream_cx_total"] == 1, "one mesh connection for all"
    backend_stats = stats(admin_port(backend))
    local = f"localhost_{app.port}"
    assert backend_stats[f"http.{inn}.downstream_rq_total"] == 5
    assert backend_stats[f"http.{inn}.downstream_rq_http2_total"] == 5, "the mesh hop is h2"
    assert backend_stats[f"cluster.{local}.upstream_rq_total"] == 5
    assert backend_stats[f"cluster.{local}.upstream_rq_2xx"] == 3
    wait_for(lambda: len(log_file.read_text().splitlines()) == 5, what="5 access-log lines")
    lines = log_file.read_text().splitlines()
    assert re.match(r'\[[^]]+\] "GET /ok/0 HTTP/1.1" 200 - 0 \d+ \d+ \d+ ', lines[0]), lines[0]
    assert '"GET /status/503 HTTP/2" 503' in lines[4]
    assert f'"127.0.0.1:{inbound}"' in lines[0] or f"127.0.0.1:{inbound}" in lines[0]


def test_exact_grpc_counters(mesh_uvloop, grpc_app):  # noqa: F811 - the fixture
    mesh = mesh_uvloop
    path, _ = mesh.backend("echo-1", grpc_app, service="echo", tags={"kuma.io/protocol": "grpc"})
    web, port = mesh.client("web-1", service="echo")
    wait_ready(mesh.start(path, ready=False), mesh.start(web, ready=False))
    with grpc.insecure_channel(f"{LOOPBACK}:{port}", options=OPTIONS) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        for _ in range(4):
            assert unary(b"x", timeout=10) == b"x"
        try:
            unary(b"fail:NOT_FOUND", timeout=10)
        except grpc.RpcError:
            pass
        items = list(channel.unary_stream(f"/{SERVICE}/ServerStream")(b"7", timeout=10))
        assert len(items) == 7
    s = stats(admin_port(web))
    assert s["cluster.echo.grpc.total"] == 6
    assert s["cluster.echo.grpc.success"] == 5
    assert s["cluster.echo.grpc.failure"] == 1
    assert s["cluster.echo.grpc.0"] == 5 and s["cluster.echo.grpc.5"] == 1
    assert s["cluster.echo.grpc.request_message_count"] == 6
    assert s["cluster.echo.grpc.response_message_count"] == 4 + 7
