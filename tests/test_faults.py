"""Faults a sidecar must contain: the failure reaches the client as a reset or an HTTP status, in
bounded time, and the sidecar recovers by itself once the fault is gone.

Sidecars are started through the CLI; the DNS test runs the runtime in-process with an injected
resolver (no /etc/hosts games), and the certificate-expiry test drives the credential store with
a fake clock.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import resource
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.identity import ca
from sidecar.identity.tls import CredentialStore
from sidecar.runtime import Options
from sidecar.runtime import Sidecar as Runtime
from tests.apps import Hypercorn
from tests.observe_support import admin_port, stats
from tests.support import (
    LOOPBACK,
    dataplane,
    echo,
    free_port,
    http_call,
    wait_for,
    wait_ready,
    write_yaml,
)


def get(port: int, path: str = "/", timeout: float = 10) -> tuple[int, bytes]:
    return http_call(port, "GET", path, timeout=timeout)


def http_pair(mesh, app_port: int, *web_args: str):
    """backend (http) ← web; returns (backend sidecar, backend file, web file, outbound port)."""
    backend_file, _ = mesh.backend("backend-1", app_port, tags={"kuma.io/protocol": "http"})
    web_file, port = mesh.client("web-1")
    backend, _ = wait_ready(
        mesh.start(backend_file, ready=False), mesh.start(web_file, *web_args, ready=False)
    )
    return backend, backend_file, web_file, port


def test_peer_sidecar_killed_mid_request_and_mid_stream(mesh_uvloop):
    """The client gets a 503 (no answer yet) or a cut response (answer under way) at once, never
    a hang; once the peer is back, requests go through again."""
    mesh = mesh_uvloop
    app = Hypercorn()
    try:
        backend, backend_file, _, port = http_pair(mesh, app.port)
        assert get(port)[0] == 200
        result: dict[str, object] = {}

        def waiting() -> None:
            started = time.monotonic()
            result["answer"] = get(port, "/sleep/30")
            result["took"] = time.monotonic() - started

        client = threading.Thread(target=waiting)
        client.start()
        backend_admin = admin_port(backend_file)
        wait_for(
            lambda: stats(backend_admin).get(f"cluster.localhost_{app.port}.upstream_rq_active"),
            what="the request to reach the app",
        )
        backend.kill()
        killed = time.monotonic()
        client.join(10)
        status, body = result["answer"]  # type: ignore[misc]
        assert status == 503 and b"reset" in body, body
        assert time.monotonic() - killed < 3

        backend = mesh.start(backend_file)
        wait_for(lambda: get(port)[0] == 200, what="the peer to be back")
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        conn.request("GET", "/bytes/200000000")
        response = conn.getresponse()
        assert response.status == 200
        assert len(response.read(1024 * 1024)) == 1024 * 1024  # the answer is flowing
        backend.kill()
        killed = time.monotonic()
        with pytest.raises((http.client.IncompleteRead, OSError)):
            while response.read(1024 * 1024):
                pass
        assert time.monotonic() - killed < 3
        conn.close()
    finally:
        app.close()


def test_local_app_killed_and_restarted_and_a_corrupt_mesh_file(mesh):
    """503 while the app is down; served again within a second of it coming back. Meanwhile
    binary garbage lands in the mesh directory: reported once, skipped, traffic unaffected."""
    app = Hypercorn()
    app_port = app.port
    _, _, web_file, port = http_pair(mesh, app_port)
    web_log = mesh.sidecars[-1]
    try:
        assert get(port)[0] == 200
        app.close()
        wait_for(lambda: get(port)[0] == 503, what="503 while the app is down")
        statuses = {get(port)[0] for _ in range(10)}
        assert statuses == {503}

        garbage = mesh.dir / "garbage.yaml"
        garbage.write_bytes(random.Random(7).randbytes(4096) + b"\xff\xfe\x00")
        (mesh.dir / "nul.yaml").write_bytes(b"type: Dataplane\x00\x01name: [")
        wait_for(lambda: web_log.log.count("event=mesh_file_skipped") >= 2, what="reported")

        app = Hypercorn(port=app_port)
        back = time.monotonic()
        wait_for(lambda: get(port)[0] == 200, timeout=5, what="served again")
        assert time.monotonic() - back < 1.0
        assert {get(port)[0] for _ in range(10)} == {200}
        assert web_log.log.count(f"file={garbage}") == 1, "reported once, not on every scan"
    finally:
        app.close()


def test_peer_that_accepts_and_never_answers_times_out_and_is_ejected(mesh_uvloop):
    """An endpoint that accepts connections and never answers: the request timeout answers 504;
    after 5 failures in a row outlier detection ejects it, so requests go to the healthy
    endpoint; after the ejection time it is back in the rotation by itself."""
    mesh = mesh_uvloop
    app = Hypercorn()
    silent = socket.socket()
    silent.bind((LOOPBACK, 0))
    silent.listen(64)  # accepted by the kernel, never read or answered
    try:
        mesh.write(
            "blackhole-1",
            [{"port": silent.getsockname()[1], "servicePort": free_port(),
              "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}],
        )  # fmt: skip
        healthy_file, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        web_file, port = mesh.client("web-1")
        wait_ready(
            mesh.start(healthy_file, ready=False),
            mesh.start(
                web_file,
                "--request-timeout", "0.3",
                "--limit", "outlier_base_ejection_time=1.5",
                ready=False,
            ),
        )  # fmt: skip
        admin = admin_port(web_file)
        statuses = []
        for _ in range(16):
            started = time.monotonic()
            status, _ = get(port)
            statuses.append(status)
            if status == 504:
                assert time.monotonic() - started < 2
        assert statuses.count(504) == 5, statuses  # then ejected: only the healthy one answers
        assert statuses[-6:] == [200] * 6
        values = stats(admin)
        assert values["cluster.backend.upstream_rq_timeout"] == 5
        assert values["cluster.backend.outlier_detection.ejections_enforced_total"] == 1
        assert values["cluster.backend.outlier_detection.ejections_active"] == 1
        wait_for(
            lambda: stats(admin)["cluster.backend.outlier_detection.ejections_active"] == 0,
            what="the endpoint to come back",
        )
        assert 504 in {get(port)[0] for _ in range(4)}, "back in the rotation"
    finally:
        silent.close()
        app.close()


def test_endpoints_answering_5xx_or_refusing_connects_are_ejected_and_return(mesh_uvloop):
    """Envoy's passive outlier detection, its defaults but a short base ejection time: an
    endpoint whose answers are 5xx (a peer sidecar whose app is down: 503) is ejected after 5 in
    a row, one that refuses connections (a member whose sidecar is not running) after 5 connect
    failures — those requests go to the next endpoint, so the client never sees them. Both come
    back by themselves once the ejection time has passed."""
    mesh = mesh_uvloop
    app = Hypercorn()
    try:
        healthy, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        failing, _ = mesh.backend("backend-2", free_port(), tags={"kuma.io/protocol": "http"})
        mesh.backend("backend-3", free_port(), tags={"kuma.io/protocol": "http"})  # no sidecar
        web_file, port = mesh.client("web-1")
        started = [
            mesh.start(healthy, ready=False),
            mesh.start(failing, ready=False),
            mesh.start(
                web_file,
                "--limit", "outlier_base_ejection_time=1.5",
                "--limit", "outlier_max_ejection_percent=100",  # 10 % of 3: one at a time
                ready=False,
            ),
        ]  # fmt: skip
        for sidecar in started:  # started side by side: ready in the time of one
            sidecar.wait_ready()
        admin = admin_port(web_file)
        statuses = [get(port)[0] for _ in range(30)]
        assert statuses.count(503) == 5, statuses
        assert set(statuses) == {200, 503}
        assert statuses[-10:] == [200] * 10, "both ejected: only the healthy one answers"
        values = stats(admin)
        assert values["cluster.backend.outlier_detection.ejections_enforced_total"] == 2
        assert values["cluster.backend.outlier_detection.ejections_active"] == 2
        assert values["cluster.backend.outlier_detection.ejections_enforced_consecutive_5xx"] == 2
        assert values["cluster.backend.membership_healthy"] == 1
        wait_for(
            lambda: stats(admin)["cluster.backend.outlier_detection.ejections_active"] == 0,
            what="the endpoints to come back",
        )
        assert stats(admin)["cluster.backend.membership_healthy"] == 3
        assert 503 in {get(port)[0] for _ in range(6)}, "back in the rotation"
    finally:
        app.close()


async def test_dns_failure_keeps_the_last_good_addresses(tmp_path, caplog):
    """A member dialled by host name: when the name stops resolving, the cluster keeps its last
    addresses (traffic goes on), the outage is logged once, and a new answer is taken."""
    caplog.set_level(logging.INFO)
    import asyncio

    server = await asyncio.start_server(_echo, LOOPBACK, 0)
    app_port = server.sockets[0].getsockname()[1]
    inbound_port, outbound_port = free_port(), free_port()
    backend_doc = dataplane(
        "backend-1",
        [{"port": inbound_port, "servicePort": app_port, "tags": {"kuma.io/service": "backend"}}],
    )
    backend_doc["networking"]["advertisedAddress"] = "backend.test"  # dialled by name
    backend_file = write_yaml(tmp_path / "backend-1.yaml", backend_doc)
    web_file = write_yaml(
        tmp_path / "web-1.yaml",
        dataplane(
            "web-1",
            [{"port": free_port(), "servicePort": free_port(), "tags": {"kuma.io/service": "web"}}],
            [{"port": outbound_port, "tags": {"kuma.io/service": "backend"}}],
        ),
    )
    answers: dict[str, list[str] | None] = {"backend.test": [LOOPBACK]}

    async def lookup(host: str) -> list[str]:
        answer = answers.get(host)
        if answer is None:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return answer

    backend = Runtime(
        Options(
            dataplane=backend_file, mesh_dir=tmp_path, drain_timeout=0.5, dns_refresh_interval=3600
        )
    )
    backend.resolver.lookup = lookup  # it resolves the members too: the same fake DNS
    web = Runtime(
        Options(dataplane=web_file, mesh_dir=tmp_path, drain_timeout=0.5, dns_refresh_interval=0.05)
    )
    web.resolver.lookup = lookup
    await backend.start()
    await web.start()
    try:
        assert await _roundtrip(outbound_port, b"before")
        answers["backend.test"] = None  # the name stops resolving
        while web.resolver.failures < 5:
            await asyncio.sleep(0.05)
        assert web.clusters["backend"].targets[0].host == LOOPBACK
        assert await _roundtrip(outbound_port, b"during the outage")
        assert caplog.text.count("event=dns_failed host=backend.test") == 1
        answers["backend.test"] = [LOOPBACK]
        while "event=dns_recovered host=backend.test" not in caplog.text:
            await asyncio.sleep(0.05)
        assert await _roundtrip(outbound_port, b"after")
    finally:
        await web.drain()
        await backend.drain()
        server.close()


async def _echo(reader, writer) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _roundtrip(port: int, payload: bytes) -> bool:
    import asyncio

    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(payload)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data == payload


def _echo_ok(conn: socket.socket, payload: bytes = b"ping") -> bool:
    try:
        conn.sendall(payload)
        return conn.recv(64) == payload
    except OSError:
        return False


def _new_connection_served(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as conn:
            return _echo_ok(conn)
    except OSError:
        return False


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_running_out_of_file_descriptors(mesh):
    """With RLIMIT_NOFILE lowered under it (prlimit), the sidecar refuses new connections before
    it runs out (counted as downstream_cx_overload_reject), keeps serving the open ones, logs one
    line, and serves new connections again once descriptors are back."""
    app = mesh.server(echo)
    backend_file, _ = mesh.backend("backend-1", app.port)
    web_file, port = mesh.client("web-1")
    _, web = wait_ready(
        mesh.start(backend_file, ready=False),
        mesh.start(web_file, "--limit", "fd_reserve=8", ready=False),
    )
    admin = admin_port(web_file)
    pid = web.proc.pid
    existing = [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(5)]
    try:
        assert all(_echo_ok(c) for c in existing)
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_open_fds(pid) + 12, hard))
        wait_for(lambda: not _new_connection_served(port), what="new connections refused")
        flood = [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(60)]
        refused = sum(not _echo_ok(c) for c in flood)
        for c in flood:
            c.close()
        assert refused >= 55
        assert all(_echo_ok(c, b"still here") for c in existing), "open connections go on"
        listener = f"listener.127.0.0.1_{port}"
        assert stats(admin)[f"{listener}.downstream_cx_overload_reject"] >= 55
        assert web.log.count("event=fd_exhausted") == 1, "one line, not one per refusal"

        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        wait_for(lambda: _new_connection_served(port), what="served again")
        wait_for(lambda: "event=fd_recovered" in web.log, what="the recovery to be logged")
        assert web.log.count("event=fd_exhausted") == 1
        assert all(_echo_ok(c, b"and still") for c in existing)
    finally:
        for c in existing:
            c.close()


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_certificate_expiry_is_warned_before_it_happens(tmp_path, caplog):
    """A workload certificate whose rotation does not come: a warning once a fifth of its
    lifetime is left, an error once it has expired, each logged once; the seconds left are
    there for the metric all along."""
    from sidecar.config.dataplane import parse_dataplane

    caplog.set_level(logging.INFO, "sidecar.identity")
    mesh_ca = ca.create_ca("default")
    dataplane = parse_dataplane(
        "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n"
        "  inbound:\n  - port: 10001\n    servicePort: 8080\n"
        "    tags:\n      kuma.io/service: web\n",
        "web-1.yaml",
    )
    issued = ca.issue_workload(mesh_ca.cert, mesh_ca.key, dataplane, valid_for=timedelta(hours=10))
    paths = tmp_path / "ca.crt", tmp_path / "tls.crt", tmp_path / "tls.key"
    ca.write_certificate(paths[0], mesh_ca.cert)
    ca.write_cert_key(paths[1], paths[2], issued)
    not_after = issued.cert.not_valid_after_utc
    clock = _Clock(datetime.now(UTC))
    store = CredentialStore.from_files(*paths, clock=clock)
    store.tick()
    assert "event=certificate_expiring" not in caplog.text
    assert store.seconds_until_first_expiring() > 9 * 3600

    clock.now = not_after - timedelta(hours=1.5)  # under a fifth of 10 h left
    for _ in range(5):
        store.tick()
    assert caplog.text.count("event=certificate_expiring") == 1
    assert f"file={paths[1]}" in caplog.text
    assert 5300 < store.seconds_until_first_expiring() <= 5400

    clock.now = not_after + timedelta(seconds=1)
    for _ in range(5):
        store.tick()
    assert caplog.text.count("event=certificate_expired") == 1
    assert store.seconds_until_first_expiring() == 0
    assert store.days_until_first_expiring() == 0
    assert [r.levelname for r in caplog.records if "certificate_exp" in r.message] == [
        "WARNING",
        "ERROR",
    ]


def test_circuit_breakers_answer_503_overflow_when_open(mesh_uvloop):
    """Kuma's circuit breakers, made small: requests past `max_requests` in flight get 503
    `overflow` at once (counted, with the rq_open gauge up meanwhile); TCP connections past
    `max_upstream_connections` are closed."""
    mesh = mesh_uvloop
    app = Hypercorn()
    echo_app = mesh.server(echo)
    try:
        backend_file, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        echo_file, _ = mesh.backend("echo-1", echo_app.port, service="echo",
                                    tags={"kuma.io/protocol": "tcp"})  # fmt: skip
        http_port, tcp_port = free_port(), free_port()
        web_file = mesh.write(
            "web-1",
            [{"port": free_port(), "servicePort": free_port(), "tags": {"kuma.io/service": "web"}}],
            [{"port": http_port, "tags": {"kuma.io/service": "backend"}},
             {"port": tcp_port, "tags": {"kuma.io/service": "echo"}}],
        )  # fmt: skip
        wait_ready(
            mesh.start(backend_file, ready=False),
            mesh.start(echo_file, ready=False),
            mesh.start(
                web_file,
                "--limit", "max_requests=3",
                "--limit", "max_upstream_connections=2",
                ready=False,
            ),
        )  # fmt: skip
        admin = admin_port(web_file)

        results: list[tuple[int, bytes]] = []
        lock = threading.Lock()

        def call() -> None:
            answer = get(http_port, "/sleep/1.5")
            with lock:
                results.append(answer)

        slow = [threading.Thread(target=call) for _ in range(3)]
        for thread in slow:
            thread.start()
        wait_for(
            lambda: stats(admin)["cluster.backend.upstream_rq_active"] == 3, what="3 in flight"
        )
        assert stats(admin)["cluster.backend.circuit_breakers.default.rq_open"] == 1
        started = time.monotonic()
        refused = [get(http_port, "/now") for _ in range(5)]
        assert time.monotonic() - started < 1, "refused at once, not queued"
        assert all(s == 503 and b"reset reason: overflow" in b for s, b in refused), refused
        for thread in slow:
            thread.join(10)
        assert [s for s, _ in results] == [200, 200, 200]
        values = stats(admin)
        assert values["cluster.backend.upstream_rq_pending_overflow"] == 5
        assert values["cluster.backend.circuit_breakers.default.rq_open"] == 0
        assert get(http_port, "/after")[0] == 200

        kept = [socket.create_connection((LOOPBACK, tcp_port), timeout=5) for _ in range(2)]
        for conn in kept:
            conn.sendall(b"in\n")
            assert conn.recv(16) == b"in\n"
        with socket.create_connection((LOOPBACK, tcp_port), timeout=5) as third:
            third.sendall(b"over\n")
            try:  # closed: the echo cluster is at its 2 connections (a FIN, or an RST when the
                data = third.recv(16)  # splice relay closes with our bytes still unread)
            except ConnectionResetError:
                data = b""
            assert data == b""
        assert stats(admin)["cluster.echo.upstream_cx_overflow"] == 1
        for conn in kept:
            conn.close()
    finally:
        app.close()


def test_pending_requests_past_the_breaker_get_503_overflow(mesh_uvloop):
    """`max_pending_requests`: requests waiting for a connection to an endpoint (here one whose
    accept queue is full, so the connection attempt hangs) count as pending; past the limit the
    next one gets 503 `overflow` at once, counted, with the rq_pending_open gauge up."""
    mesh = mesh_uvloop
    clogged = socket.socket()
    clogged.bind((LOOPBACK, 0))
    clogged.listen(0)
    address = clogged.getsockname()
    queued = []  # fill the accept queue: the kernel drops the next SYNs, a connect hangs
    for _ in range(8):
        conn = socket.socket()
        conn.setblocking(False)
        conn.connect_ex(address)
        queued.append(conn)
    waiting: list[socket.socket] = []
    try:
        mesh.write(
            "backend-1",
            [{"port": address[1], "servicePort": free_port(),
              "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}],
        )  # fmt: skip
        web_file, port = mesh.client("web-1")
        mesh.start(web_file, "--limit", "max_pending_requests=2")
        admin = admin_port(web_file)
        for _ in range(2):
            conn = socket.create_connection((LOOPBACK, port), timeout=10)
            conn.sendall(b"GET /waits HTTP/1.1\r\nHost: backend\r\n\r\n")
            waiting.append(conn)
        wait_for(
            lambda: stats(admin)["cluster.backend.upstream_rq_pending_active"] == 2,
            what="two requests pending",
        )
        assert stats(admin)["cluster.backend.circuit_breakers.default.rq_pending_open"] == 1
        started = time.monotonic()
        status, body = get(port, "/one-too-many")
        assert status == 503 and b"reset reason: overflow" in body, body
        assert time.monotonic() - started < 1, "refused at once, not queued"
        assert stats(admin)["cluster.backend.upstream_rq_pending_overflow"] == 1
    finally:
        for conn in [*waiting, *queued]:
            conn.close()
        clogged.close()


def test_finished_websocket_tunnels_leave_no_sockets_behind(mesh_uvloop):
    """Found by the soak: once both directions of an upgraded connection to the app had ended,
    its socket stayed open (the transport was told to outlive the app's EOF) until a garbage
    collection. Forty tunnels later the backend holds what it held before."""
    from websockets.sync.client import connect

    from tests.test_websocket import EchoServer

    mesh = mesh_uvloop
    ws_app = EchoServer()
    try:
        backend_file, _ = mesh.backend(
            "echo-1", ws_app.port, service="echo", tags={"kuma.io/protocol": "http"}
        )
        web_file, port = mesh.client("web-1", service="echo")
        backend, _ = wait_ready(
            mesh.start(backend_file, ready=False), mesh.start(web_file, ready=False)
        )
        url = f"ws://{LOOPBACK}:{port}/"
        with connect(url) as ws:  # warm: the mesh connection is up
            ws.send("warm")
            assert ws.recv(timeout=5) == "warm"
        wait_for(lambda: _open_fds(backend.proc.pid) > 0, what="the backend")
        baseline = _open_fds(backend.proc.pid)
        for i in range(40):
            with connect(url) as ws:
                ws.send(f"m{i}")
                assert ws.recv(timeout=5) == f"m{i}"
        wait_for(
            lambda: _open_fds(backend.proc.pid) <= baseline + 1,
            timeout=5,
            what=f"the backend back to {baseline} descriptors",
        )
    finally:
        ws_app.close()


def _live_and_dead_backends(mesh, app_port: int, *web_args: str) -> tuple[int, int]:
    """backend = one member serving `app_port` and one whose sidecar never runs (its inbound
    port refuses every connection); web (started with `web_args`) calls it. Returns web's
    outbound port and its admin port."""
    live_file, _ = mesh.backend("backend-live", app_port, tags={"kuma.io/protocol": "http"})
    mesh.backend("backend-dead", free_port(), tags={"kuma.io/protocol": "http"})
    web_file, port = mesh.client("web-1")
    wait_ready(mesh.start(live_file, ready=False), mesh.start(web_file, *web_args, ready=False))
    return port, admin_port(web_file)


def test_retries_past_the_retry_budget_get_503_and_are_counted(mesh_uvloop):
    """Kuma's `max_retries` breaker end to end: a request whose first endpoint refuses the
    connection is retried on the other while the budget allows; with a budget of none it gets
    503 at once, counted as `upstream_rq_retry_overflow`, and nothing else is disturbed."""
    app = Hypercorn()
    try:
        port, admin = _live_and_dead_backends(mesh_uvloop, app.port, "--limit", "max_retries=0")
        answers = [get(port, f"/r{i}") for i in range(4)]  # round robin: two meet the dead one
        refused = [(s, b) for s, b in answers if s != 200]
        assert len(refused) == 2, answers
        assert all(s == 503 and b"upstream connect error" in b for s, b in refused), refused
        values = stats(admin)
        assert values["cluster.backend.upstream_rq_retry_overflow"] == 2
        assert values["cluster.backend.upstream_cx_connect_fail"] == 2
        assert values["cluster.backend.upstream_rq_retry"] == 0
    finally:
        app.close()


def test_a_retry_within_the_budget_hides_a_refused_connection(mesh_uvloop):
    """The same mesh with Kuma's default budget: every request is answered, the retries counted."""
    app = Hypercorn()
    try:
        port, admin = _live_and_dead_backends(mesh_uvloop, app.port)
        answers = [get(port, f"/r{i}") for i in range(4)]
        assert [s for s, _ in answers] == [200] * 4, answers
        values = stats(admin)
        # Each refused connection was one retry (how many requests met the dead member first
        # depends on where round robin starts and on retries moving it on).
        assert values["cluster.backend.upstream_cx_connect_fail"] >= 1
        assert (
            values["cluster.backend.upstream_rq_retry"]
            == values["cluster.backend.upstream_cx_connect_fail"]
        )
        assert values["cluster.backend.upstream_rq_retry_overflow"] == 0
    finally:
        app.close()
