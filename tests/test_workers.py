"""`--workers N`: several processes serve one sidecar; the admin API shows it as a whole."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from sidecar.observe import aggregate
from sidecar.observe.stats import StatsStore
from tests.observe_support import admin_port, exchange, get, post, request, series, stats
from tests.support import (
    LOOPBACK,
    REPO,
    echo,
    free_port,
    port_open,
    recv_all,
    wait_for,
    wait_ready,
)

REQUEST, REPLY, CONNECTIONS = 1000, 2500, 40


def reply_2500(conn: socket.socket) -> None:
    assert len(recv_all(conn)) == REQUEST
    conn.sendall(b"r" * REPLY)


def start(mesh, *files, workers: int = 2, **kw):
    """Start sidecars with --workers at once; several processes each start slower on 2 cores."""
    started = [mesh.start(f, "--workers", str(workers), ready=False, **kw) for f in files]
    for sidecar in started:
        sidecar.wait_ready(timeout=60)
    return started


def workers(port: int) -> list[dict]:
    return json.loads(get(port, "/workers"))["workers"]


def counts(port: int, listener: str) -> list[int]:
    """Connections each worker accepted on one listener, by worker index."""
    rows = sorted(workers(port), key=lambda row: row["index"])
    return [
        row.get("listeners", {}).get(listener, {}).get("downstream_cx_total", 0) for row in rows
    ]


def test_two_worker_pair_spreads_connections_and_admin_shows_the_sum(mesh_uvloop):
    mesh = mesh_uvloop
    mesh.protocol = "tcp"  # the splice relay in every worker
    app = mesh.server(reply_2500)
    metrics_port = free_port()
    backend, inbound = mesh.backend(
        "backend-1", app.port, metrics={"type": "prometheus", "conf": {"port": metrics_port}}
    )
    web, outbound = mesh.client("web-1")
    start(mesh, backend, web)
    assert "event=ready workers=2" in mesh.sidecars[0].log
    for _ in range(CONNECTIONS):
        assert exchange(outbound, b"q" * REQUEST) == b"r" * REPLY
    web_admin, backend_admin = admin_port(web), admin_port(backend)
    out_addr, in_addr = f"127.0.0.1_{outbound}", f"127.0.0.1_{inbound}"

    def settled() -> bool:
        return (
            stats(web_admin)["cluster.backend.upstream_cx_active"] == 0
            and stats(backend_admin)[f"listener.{in_addr}.downstream_cx_active"] == 0
        )

    wait_for(settled, what="every connection to end in every worker")

    # Both workers of each sidecar took connections (SO_REUSEPORT), and the admin sums them.
    for port, listener in ((web_admin, out_addr), (backend_admin, in_addr)):
        per_worker = counts(port, listener)
        assert len(per_worker) == 2 and all(n > 0 for n in per_worker), per_worker
        assert sum(per_worker) == CONNECTIONS
    assert len({row["pid"] for row in workers(web_admin)}) == 2

    s = stats(web_admin)
    assert s[f"listener.{out_addr}.downstream_cx_total"] == CONNECTIONS
    assert s[f"tcp.outbound_{out_addr}.downstream_cx_rx_bytes_total"] == CONNECTIONS * REQUEST
    assert s[f"tcp.outbound_{out_addr}.downstream_cx_tx_bytes_total"] == CONNECTIONS * REPLY
    assert s["cluster.backend.upstream_cx_total"] == CONNECTIONS
    assert s["cluster.backend.membership_total"] == 1, "shared gauges are not summed"
    assert s["server.live"] == 1

    app_cluster = f"localhost_{app.port}"
    prom = series(get(metrics_port, "/metrics"))
    label = f'envoy_cluster_name="{app_cluster}"'
    assert prom[f"envoy_cluster_upstream_cx_total{{{label}}}"] == CONNECTIONS
    assert prom[f"envoy_cluster_upstream_cx_rx_bytes_total{{{label}}}"] == CONNECTIONS * REPLY
    assert prom[f"envoy_cluster_upstream_cx_connect_ms_count{{{label}}}"] == CONNECTIONS
    assert prom[f'envoy_tcp_downstream_cx_total{{envoy_tcp_prefix="inbound_{in_addr}"}}'] == (
        CONNECTIONS
    )
    clusters = get(backend_admin, "/clusters")
    assert f"{app_cluster.replace('_', ':')}::127.0.0.1:{app.port}::cx_total::{CONNECTIONS}" in (
        clusters
    )

    # /reset_counters reaches every worker.
    post(web_admin, "/reset_counters")
    assert stats(web_admin)[f"listener.{out_addr}.downstream_cx_total"] == 0


def test_sigterm_drains_every_worker_then_exits_0(mesh_uvloop):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, port = mesh.client("web-1")
    booting = mesh.start(backend, ready=False)  # boots while the workers start
    (sidecar,) = start(mesh, web, drain_timeout=20)
    booting.wait_ready()
    web_admin = admin_port(web)
    listener = f"127.0.0.1_{port}"
    # Open connections until each worker holds at least one.
    open_ = []
    while not all(n > 0 for n in counts(web_admin, listener)) and len(open_) < 64:
        c = socket.create_connection((LOOPBACK, port), timeout=10)
        c.sendall(b"one")
        assert c.recv(10) == b"one"
        open_.append(c)
    assert all(n > 0 for n in counts(web_admin, listener))
    sidecar.signal(signal.SIGTERM)
    wait_for(lambda: sidecar.log.count("event=draining") == 2, what="both workers to drain")
    assert request(web_admin, "/ready")[0] == 503, "not ready while draining"
    assert not port_open(port), "no worker accepts new connections"
    for c in open_:
        c.sendall(b"two")
        assert c.recv(10) == b"two", "open connections keep working during the drain"
        c.close()
    assert sidecar.proc.wait(15) == 0
    assert sidecar.log.count("closed_at_deadline=0") == 2
    assert "event=workers_stopped failed=0" in sidecar.log


def test_killed_worker_is_restarted_and_counts_survive(mesh_uvloop):
    mesh = mesh_uvloop
    mesh.protocol = "tcp"
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, port = mesh.client("web-1")
    booting = mesh.start(backend, ready=False)  # boots while the workers start
    start(mesh, web)
    booting.wait_ready()
    web_admin = admin_port(web)
    for _ in range(10):
        assert exchange(port, b"x" * 10) == b"x" * 10
    wait_for(lambda: stats(web_admin)["cluster.backend.upstream_cx_active"] == 0)
    before = stats(web_admin)[f"listener.127.0.0.1_{port}.downstream_cx_total"]
    assert before == 10
    victim = next(row for row in workers(web_admin) if row["index"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> bool:
        row = next(row for row in workers(web_admin) if row["index"] == 1)
        return row.get("pid") not in (None, victim["pid"]) and row["state"] == "serving"

    wait_for(restarted, timeout=20, what="worker 1 to be restarted")
    for _ in range(10):
        assert exchange(port, b"y" * 10) == b"y" * 10
    wait_for(lambda: stats(web_admin)["cluster.backend.upstream_cx_active"] == 0)
    # What the dead worker counted (as last read) stays in the totals.
    assert stats(web_admin)[f"listener.127.0.0.1_{port}.downstream_cx_total"] == 20
    assert "event=worker_died index=1" in mesh.sidecars[1].log


def test_reload_and_dataplane_edits_reach_every_worker(mesh_uvloop):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, _ = mesh.client("web-1")
    booting = mesh.start(backend, ready=False)  # boots while the workers start
    (sidecar,) = start(mesh, web)
    booting.wait_ready()
    sidecar.signal(signal.SIGHUP)
    wait_for(lambda: all(f"worker={i} event=reloaded" in sidecar.log for i in (0, 1)))
    # An edit of the Dataplane file: each worker's own watcher binds the new listener.
    import yaml

    from tests.support import write_yaml

    new_port = free_port()
    doc = yaml.safe_load(web.read_text())
    doc["networking"]["outbound"].append({"port": new_port, "tags": {"kuma.io/service": "backend"}})
    write_yaml(web, doc)
    bound = f"event=listener_bound listener=outbound:127.0.0.1:{new_port}"
    wait_for(lambda: all(f"worker={i} {bound}" in sidecar.log for i in (0, 1)), timeout=5)
    with socket.create_connection((LOOPBACK, new_port), timeout=10) as c:
        c.sendall(b"via new")
        assert c.recv(100) == b"via new"
    # /quitquitquit stops the whole sidecar.
    post(admin_port(web), "/quitquitquit")
    assert sidecar.proc.wait(15) == 0


def test_a_worker_that_cannot_start_stops_the_sidecar_with_its_error(mesh_uvloop):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        path = mesh_uvloop.write(
            "web-1",
            [{"port": busy, "servicePort": free_port(), "tags": {"kuma.io/service": "web"}}],
        )
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "--dataplane", str(path), "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
    assert result.returncode == 1
    assert f"listener inbound:127.0.0.1:{busy}: cannot bind 127.0.0.1:{busy}" in result.stderr


def test_sums_of_snapshots():
    """In-process: counters and histograms add up, shared gauges are the primary's, and a dead
    worker's last snapshot keeps its counters but not its gauges."""
    a, b = StatsStore(), StatsStore()
    for store, n in ((a, 3), (b, 4)):
        lst = store.listener("127.0.0.1_1", "inbound_127.0.0.1_1")
        lst.downstream_cx_total = n
        lst.downstream_cx_active = 1
        lst.source("web").downstream_cx_total = n
        cluster = store.cluster("backend")
        cluster.upstream_cx_connect_ms.observe(n)
        cluster.upstream_rq_xx["2"] = n
        cluster.membership_total = 2
        store.server.uptime = 100 * n
    total = StatsStore()
    aggregate.add(total, aggregate.snapshot(a), primary=True)
    aggregate.add(total, aggregate.snapshot(b), primary=False)
    lst = total.listeners["127.0.0.1_1"]
    assert (lst.downstream_cx_total, lst.downstream_cx_active) == (7, 2)
    assert lst.by_source["web"].downstream_cx_total == 7
    cluster = total.clusters["backend"]
    assert cluster.upstream_cx_connect_ms.count == 2 and cluster.upstream_cx_connect_ms.sum == 7
    assert cluster.upstream_rq_xx == {"2": 7}
    assert cluster.membership_total == 2 and total.server.uptime == 300
    kept = StatsStore()
    aggregate.add(kept, aggregate.retire(aggregate.snapshot(b)), primary=False)
    assert kept.listeners["127.0.0.1_1"].downstream_cx_total == 4
    assert kept.listeners["127.0.0.1_1"].downstream_cx_active == 0
    assert json.loads(json.dumps(aggregate.snapshot(a))) == aggregate.snapshot(a)


def test_http_through_two_worker_pair_is_counted_once(mesh_uvloop):
    """HTTP/1.1 → HTTP/2 between the sidecars (several connections per endpoint with workers)."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Ok(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    app = ThreadingHTTPServer((LOOPBACK, 0), Ok)
    threading.Thread(target=app.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    mesh = mesh_uvloop
    try:
        backend, _ = mesh.backend(
            "backend-1", app.server_address[1], tags={"kuma.io/protocol": "http"}
        )
        web, outbound = mesh.client("web-1")
        start(mesh, backend, web)
        for _ in range(CONNECTIONS):  # a connection each: both of web's workers get some
            conn = http.client.HTTPConnection(LOOPBACK, outbound, timeout=10)
            for _ in range(3):
                conn.request("GET", "/")
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, b"ok")
            conn.close()
        s = stats(admin_port(web))
        assert s["cluster.backend.upstream_rq_total"] == 3 * CONNECTIONS
        assert s[f"http.outbound_127.0.0.1_{outbound}.downstream_rq_total"] == 3 * CONNECTIONS
        assert all(n > 0 for n in counts(admin_port(web), f"127.0.0.1_{outbound}"))
    finally:
        app.shutdown()
        app.server_close()


def test_certificate_rotation_reaches_every_worker(mesh_uvloop, pki):
    """Each worker watches the credential files: after a rotation every one serves the new
    certificate to new connections (16 connections: both workers get some)."""
    from tests.pki import ask, mtls_pair
    from tests.test_mtls_rotation import served_serial

    pair = mtls_pair(mesh_uvloop, pki, backend_args=("--workers", "2"))
    for i in range(8):
        assert ask(pair.outbound, b"call %d\n" % i) == b"call %d\n" % i
    old = pki.serial("backend-1")
    assert {served_serial(pair.inbound, pki, "web-1") for _ in range(16)} == {old}
    pki.issue("backend-1", "backend")
    new = pki.serial("backend-1")
    assert new != old
    for i in (0, 1):
        pair.backend.wait_log(f"worker={i} event=credentials_loaded generation=2")
    assert {served_serial(pair.inbound, pki, "web-1") for _ in range(16)} == {new}
    assert ask(pair.outbound, b"after\n") == b"after\n"


def test_dev_mode_with_workers_issues_one_certificate(mesh_uvloop, pki):
    """Dev mode (--ca-key): worker 0 issues the certificate, the others load its files."""
    from tests.pki import ask

    mesh = mesh_uvloop
    mesh.protocol = "tcp"
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, outbound = mesh.client("web-1")
    dev = ["--ca", str(pki.ca_path), "--ca-key", str(pki.ca_key_path)]
    b, _ = wait_ready(
        mesh.start(backend, *dev, "--workers", "2", ready=False),
        mesh.start(web, *dev, ready=False),
        timeout=60,
    )
    assert b.log.count("dev_mode=issued") == 1, "only worker 0 issues"
    assert "worker=1 event=mtls_enabled" in b.log
    for i in range(8):
        assert ask(outbound, b"call %d\n" % i) == b"call %d\n" % i
