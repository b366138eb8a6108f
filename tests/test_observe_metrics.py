"""Metrics: exact Envoy counters after known TCP traffic, the exposition, a real Prometheus."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sidecar.observe import metrics
from sidecar.observe.stats import StatsStore
from tests.conftest import TCP_RELAYS, Mesh, tcp_mesh
from tests.observe_support import admin_port, exchange, get, request, series, stats
from tests.support import LOOPBACK, echo, free_port, recv_all, wait_for, wait_ready


@pytest.fixture(params=TCP_RELAYS)
def mesh(request: pytest.FixtureRequest, tmp_path: Path, loop_kind: str) -> Iterator[Mesh]:
    """Every test here twice per loop: through the splice relay and the sniffed Protocol relay."""
    yield from tcp_mesh(tmp_path, loop_kind, request.param)


@pytest.fixture(params=TCP_RELAYS)
def mesh_uvloop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    yield from tcp_mesh(tmp_path, "uvloop", request.param)


REQUEST, REPLY = 1000, 2500


def reply_2500(conn: socket.socket) -> None:
    """Reads the whole request, answers 2,500 bytes."""
    assert len(recv_all(conn)) == REQUEST
    conn.sendall(b"r" * REPLY)


def closed(port: int, listener: str) -> bool:
    return stats(port).get(f"listener.{listener}.downstream_cx_active", 1) == 0


def test_exact_tcp_counters_and_access_log(mesh, tmp_path):
    app = mesh.server(reply_2500)
    metrics_port = free_port()
    backend, inbound = mesh.backend(
        "backend-1", app.port, metrics={"type": "prometheus", "conf": {"port": metrics_port}}
    )
    web, outbound = mesh.client("web-1")
    web_log, backend_log = tmp_path / "web-access.log", tmp_path / "backend-access.log"
    wait_ready(
        mesh.start(backend, "--access-log", str(backend_log), ready=False),
        mesh.start(web, "--access-log", str(web_log), ready=False),
    )
    for _ in range(3):
        assert exchange(outbound, b"q" * REQUEST) == b"r" * REPLY
    web_admin, backend_admin = admin_port(web), admin_port(backend)
    out_addr, in_addr = f"127.0.0.1_{outbound}", f"127.0.0.1_{inbound}"
    wait_for(lambda: closed(web_admin, out_addr) and closed(backend_admin, in_addr))

    s = stats(web_admin)
    assert s[f"listener.{out_addr}.downstream_cx_total"] == 3
    assert s[f"tcp.outbound_{out_addr}.downstream_cx_total"] == 3
    assert s[f"tcp.outbound_{out_addr}.downstream_cx_rx_bytes_total"] == 3 * REQUEST
    assert s[f"tcp.outbound_{out_addr}.downstream_cx_tx_bytes_total"] == 3 * REPLY
    assert s["cluster.backend.upstream_cx_total"] == 3
    assert s["cluster.backend.upstream_cx_connect_fail"] == 0
    assert s["cluster.backend.upstream_cx_active"] == 0
    assert s["cluster.backend.upstream_cx_tx_bytes_total"] == 3 * REQUEST
    assert s["cluster.backend.upstream_cx_rx_bytes_total"] == 3 * REPLY
    assert s["cluster.backend.membership_healthy"] == 1
    assert s["cluster.backend.membership_total"] == 1

    app_cluster = f"localhost_{app.port}"
    s = stats(backend_admin)
    assert s[f"tcp.inbound_{in_addr}.downstream_cx_total"] == 3
    assert s[f"tcp.inbound_{in_addr}.downstream_cx_rx_bytes_total"] == 3 * REQUEST
    assert s[f"tcp.inbound_{in_addr}.downstream_cx_tx_bytes_total"] == 3 * REPLY
    assert s[f"cluster.{app_cluster}.upstream_cx_total"] == 3
    assert s[f"cluster.{app_cluster}.upstream_cx_rx_bytes_total"] == 3 * REPLY

    # The same numbers in Prometheus form, on the Dataplane's metrics port (dataplane address).
    prom = series(get(metrics_port, "/metrics"))
    assert prom[f'envoy_tcp_downstream_cx_total{{envoy_tcp_prefix="inbound_{in_addr}"}}'] == 3
    assert prom[f'envoy_listener_downstream_cx_total{{envoy_listener_address="{in_addr}"}}'] == 3
    label = f'envoy_cluster_name="{app_cluster}"'
    assert prom[f"envoy_cluster_upstream_cx_total{{{label}}}"] == 3
    assert prom[f"envoy_cluster_upstream_cx_rx_bytes_total{{{label}}}"] == 3 * REPLY
    assert prom[f"envoy_cluster_upstream_cx_connect_ms_count{{{label}}}"] == 3
    assert prom[f'envoy_cluster_upstream_cx_length_ms_bucket{{{label},le="+Inf"}}'] == 3
    assert prom[f'envoy_cluster_upstream_cx_length_ms_bucket{{{label},le="3600000"}}'] == 3
    assert prom["envoy_server_live"] == 1
    assert not any(name.startswith("envoy_tcp_downstream_cx_total_total") for name in prom)

    # The app goes away: the inbound's connect to it is refused, and counted.
    app.close()
    try:
        assert exchange(outbound, b"q" * REQUEST) == b""
    except ConnectionResetError:
        pass  # closed with the request unread: a reset is as right as a FIN
    wait_for(lambda: stats(backend_admin)[f"cluster.{app_cluster}.upstream_cx_connect_fail"] == 1)
    assert stats(backend_admin)[f"cluster.{app_cluster}.upstream_cx_total"] == 4

    # Access log: one line per connection, Envoy's default format adapted to TCP.
    wait_for(lambda: len(backend_log.read_text().splitlines()) == 4, what="4 access log lines")
    lines = web_log.read_text().splitlines()
    assert len(lines) >= 3
    pattern = re.compile(
        r'^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "- - TCP" 0 - 1000 2500 \d+ - '
        rf'"-" "-" "-" "-" "127\.0\.0\.1:{inbound}" "127\.0\.0\.1:\d+" "-" "backend"$'
    )
    assert all(pattern.match(line) for line in lines[:3]), lines
    failed = backend_log.read_text().splitlines()[3]
    # Bytes received depend on whether the request arrived before the refusal: 0 or 1000.
    assert re.search(r'"- - TCP" 0 UF (0|1000) 0 \d+ - .* "-" "localhost:\d+"$', failed), failed


def test_refused_endpoint_counts_one_connect_fail_and_fails_over(mesh_uvloop):
    mesh = mesh_uvloop
    app = mesh.server(reply_2500)
    backend, _ = mesh.backend("backend-1", app.port)
    dead, _ = mesh.backend("backend-2", free_port())  # a member whose sidecar is not running
    web, outbound = mesh.client("web-1")
    wait_ready(
        mesh.start(backend, ready=False),
        mesh.start(web, ready=False),
    )
    # Round robin over [alive, dead]: every connection reaches the live one, some after failing
    # over from the dead one. Each attempt counts in upstream_cx_total, each refusal in
    # upstream_cx_connect_fail.
    for _ in range(4):
        assert exchange(outbound, b"q" * REQUEST) == b"r" * REPLY
    s = stats(admin_port(web))
    fails = s["cluster.backend.upstream_cx_connect_fail"]
    assert fails >= 2, "round robin sends at least every other first attempt to the dead one"
    assert s["cluster.backend.upstream_cx_total"] == 4 + fails
    assert s["cluster.backend.upstream_cx_connect_timeout"] == 0
    assert s["cluster.backend.membership_total"] == 2
    assert dead.exists()


def test_reset_counters_zeroes_counters_not_gauges(mesh_uvloop):
    mesh = mesh_uvloop
    app = mesh.server(echo)
    backend, _ = mesh.backend("backend-1", app.port)
    web, outbound = mesh.client("web-1")
    wait_ready(
        mesh.start(backend, ready=False),
        mesh.start(web, ready=False),
    )
    port = admin_port(web)
    with socket.create_connection((LOOPBACK, outbound), timeout=10):
        wait_for(lambda: stats(port).get("cluster.backend.upstream_cx_active") == 1)
        assert request(port, "/reset_counters", "POST")[0] == 200
        s = stats(port)
        assert s["cluster.backend.upstream_cx_total"] == 0
        assert s["cluster.backend.upstream_cx_active"] == 1, "a gauge is not a counter"
    # Used once, used for good (Envoy's flag): the counters counted before the reset, and the
    # gauge back at 0, stay in usedonly reads.
    with socket.create_connection((LOOPBACK, outbound), timeout=10):
        wait_for(lambda: stats(port).get("cluster.backend.upstream_cx_active") == 1)
    wait_for(lambda: stats(port).get("cluster.backend.upstream_cx_active") == 0)
    listener = f"tcp.outbound_127.0.0.1_{outbound}.downstream_cx_total"
    assert request(port, "/reset_counters", "POST")[0] == 200
    used = get(port, "/stats?usedonly")
    assert "cluster.backend.upstream_cx_active: 0\n" in used
    assert "cluster.backend.upstream_cx_total: 0\n" in used
    assert f"{listener}: 0\n" in used


# -- the exposition format ------------------------------------------------------------------------

# promtool's lint rules that Envoy's own names break (and Kuma's dashboards depend on): counters
# without `_total`, `_ms` and `days` units, `…_count` counters, gauges ending in `_total`.
# Debian's promtool 2.42 has no flag to turn linting off (`--lint=none` came later), so the test
# accepts exactly these messages (exit code 3, "lint problems") and nothing else; a parse error
# exits 1.
ENVOY_NAMING_LINT = (
    'counter metrics should have "_total" suffix',
    'non-counter metrics should not have "_total" suffix',
    'non-histogram and non-summary metrics should not have "_count" suffix',
    "metric names should not contain abbreviated units",
    'use base unit "seconds" instead of "days"',
)


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode in (0, 3), problems
    unexpected = [p for p in problems if not p.endswith(ENVOY_NAMING_LINT)]
    assert not unexpected, unexpected


def every_family_store() -> StatsStore:
    """A store where every declared family has at least one sample, keyed ones included."""
    store = StatsStore()
    lst = store.listener("127.0.0.1_10000", "inbound_127.0.0.1_10000")
    lst.source("web").downstream_cx_total = 2
    cluster = store.cluster("localhost_8080")
    cluster.upstream_rq_xx["2"] = 5
    cluster.upstream_rq_code["200"] = 5
    cluster.external_upstream_rq_xx["5"] = 1
    cluster.grpc_status["14"] = 1
    cluster.upstream_cx_connect_ms.observe(0.3)
    cluster.upstream_cx_length_ms.observe(4000000)
    http = store.http("inbound_127.0.0.1_10000")
    http.downstream_rq_xx["2"] = 5
    http.downstream_rq_time.observe(12)
    kafka = store.kafka('odd"name\\with\nescapes')
    kafka.request["produce_request"] = 3
    kafka.response["produce_response"] = 3
    kafka.duration("produce_response").observe(2.5)
    store.dns("kuma_dns").known_domain_queries = 1
    store.server.days_until_first_cert_expiring = 30
    store.server.seconds_until_first_cert_expiring = 30 * 86400
    return store


def test_every_family_passes_promtool():
    store = every_family_store()
    text = metrics.render_prometheus(metrics.select(store))
    names = {m.group(1) for m in re.finditer(r"^# TYPE (\S+) ", text, re.M)}
    assert names == {f.name for f in metrics.FAMILIES}
    promtool_check(text)
    prom = series(text)
    assert prom['envoy_cluster_upstream_rq_xx{envoy_cluster_name="localhost_8080",'
                'envoy_response_code_class="2"}'] == 5  # fmt: skip
    assert prom['envoy_tcp_source_downstream_cx_total{envoy_tcp_prefix="inbound_127.0.0.1_10000",'
                'source_service="web"}'] == 2  # fmt: skip
    assert 'kafka_name="odd\\"name\\\\with\\nescapes"' in text
    # Envoy's buckets, in ms, cumulative, ending with +Inf; the sum is in ms too.
    buckets = re.findall(
        r'^envoy_cluster_upstream_cx_length_ms_bucket\{.*le="([^"]+)"\} (\d+)$', text, re.M
    )
    assert [b for b, _ in buckets] == [
        "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
        "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
    ]  # fmt: skip
    assert [int(n) for _, n in buckets] == [0] * 19 + [1]


def test_envoy_stats_text_and_json_formats():
    store = every_family_store()
    text = metrics.render_text(metrics.select(store, usedonly=True))
    assert "cluster.localhost_8080.upstream_rq_2xx: 5\n" in text
    assert 'kafka.odd"name\\with\nescapes.request.produce_request: 3' in text
    assert "server.days_until_first_cert_expiring: 30\n" in text
    assert "cluster.localhost_8080.upstream_cx_total" not in text, "usedonly drops zeros"
    assert re.search(r"^cluster\.localhost_8080\.upstream_cx_connect_ms: P0\(nan,0\) ", text, re.M)
    doc = metrics.render_json(metrics.select(store, pattern=re.compile(r"^http\.")))
    names = [s["name"] for s in doc["stats"] if "name" in s]
    assert names and all(n.startswith("http.") for n in names)
    quantiles = doc["stats"][-1]["histograms"]["computed_quantiles"]
    assert quantiles[0]["name"] == "http.inbound_127.0.0.1_10000.downstream_rq_time"


def test_usedonly_keeps_what_was_used_once_as_envoys_flag_does():
    """Envoy's `used` is set by a counter's first count or a gauge's first change and never
    cleared: a counter after /reset_counters and a gauge back at 0 stay in `usedonly` reads."""
    store = StatsStore()
    cluster = store.cluster("backend")
    cluster.upstream_rq_total = 3
    cluster.upstream_cx_total = 1  # its gauge rose and fell between two reads
    used: set[str] = set()

    def names() -> set[str]:
        return {s.stat for s in metrics.select(store, usedonly=True, used=used)}

    assert "cluster.backend.upstream_rq_total" in names()
    metrics.reset_counters(store)
    after = names()
    assert "cluster.backend.upstream_rq_total" in after, "a counter reset to 0 stays used"
    assert "cluster.backend.upstream_cx_active" in after, "its _total counter was used"
    assert "cluster.backend.upstream_rq_active" in after
    assert "cluster.backend.upstream_cx_connect_fail" not in after, "never counted"
    assert "server.state" in after, "set at start (0: live)"
    # Envoy's connection manager has every response class from the start.
    http = store.http("inbound_127.0.0.1_10000")
    text = metrics.render_text(metrics.select(store))
    assert all(f"http.inbound_127.0.0.1_10000.downstream_rq_{c}xx: 0\n" in text for c in "12345")
    assert http.downstream_rq_xx == dict.fromkeys("12345", 0)


def test_live_exposition_passes_promtool(mesh_uvloop):
    mesh = mesh_uvloop
    port = mesh.pair(lambda conn: conn.sendall(recv_all(conn)))
    assert exchange(port, b"hello") == b"hello"
    web = mesh.dir / "web-1.yaml"
    status, body, headers = request(admin_port(web), "/stats/prometheus")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    promtool_check(body)


class Prometheus:
    """A real Prometheus scraping `/custom` on one reserved metrics port per TCP relay.

    Started once for the module's scrape tests: Prometheus hands its first targets to the scrape
    loop only after its discovery update interval (5 s, fixed), which a process per test paid
    every time. Each test's sidecar serves the port of its relay; until then that target is
    simply down."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus not found: apt-get install prometheus")
        self.metrics_ports = {relay: free_port() for relay in TCP_RELAYS}
        self.config = directory / "prometheus.yml"
        targets = [f"{LOOPBACK}:{port}" for port in self.metrics_ports.values()]
        scrape = {
            "job_name": "pysidecar",
            "metrics_path": "/custom",
            "static_configs": [{"targets": targets}],
        }
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [scrape],
                }
            )
        )
        self.web_port = free_port()
        self.log_path = directory / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address={LOOPBACK}:{self.web_port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def query(self, query: str) -> list | None:
        """The result of an instant query, None while empty or unanswered."""
        if self.proc.poll() is not None:
            log = self.log_path.read_text(errors="replace")
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{log}")
        try:
            status, body, _ = request(self.web_port, f"/api/v1/query?query={query}", timeout=2)
        except OSError:
            return None
        import json

        result = json.loads(body)["data"]["result"] if status == 200 else []
        return result or None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# Autouse: started with the module's first test, it is past its first 5 s by the time the scrape
# tests (near the end) need it, instead of each waiting them out.
@pytest.fixture(scope="module", autouse=True)
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()


def test_scraped_by_a_real_prometheus(mesh_uvloop, prometheus):
    mesh = mesh_uvloop
    app = mesh.server(reply_2500)
    metrics_port = prometheus.metrics_ports["splice" if mesh.protocol == "tcp" else "sniffed"]
    backend, inbound = mesh.backend(
        "backend-1",
        app.port,
        metrics={"type": "prometheus", "conf": {"port": metrics_port, "path": "/custom"}},
    )
    mesh.start(backend)
    for _ in range(3):
        assert exchange(inbound, b"q" * REQUEST) == b"r" * REPLY
    query = (
        f"envoy_tcp_downstream_cx_total%7Benvoy_tcp_prefix%3D%22inbound_127.0.0.1_{inbound}%22%7D"
    )
    seen: list[str] = []

    def scraped_all_three() -> list | None:
        # Prometheus scrapes every second on its own clock: a scrape may fall between the
        # exchanges, so wait for one taken after all three, and name the last count seen.
        result = prometheus.query(query)
        if not result:
            return None
        seen.append(result[0]["value"][1])
        return result if seen[-1] == "3" else None

    try:
        result = wait_for(scraped_all_three, timeout=20, what="Prometheus to scrape a count of 3")
    except AssertionError as error:
        raise AssertionError(f"{error}; counts scraped: {seen[-5:]}") from None
    assert result[0]["metric"]["job"] == "pysidecar"
    assert result[0]["metric"]["instance"] == f"{LOOPBACK}:{metrics_port}"


def test_http_connections_count_as_open_connections(mesh_uvloop):
    """An HTTP listener's open connections show in envoy_listener_downstream_cx_active too."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hello(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: object) -> None:
            pass

    mesh = mesh_uvloop
    app = ThreadingHTTPServer((LOOPBACK, 0), Hello)
    threading.Thread(target=app.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        backend, _ = mesh.backend(
            "backend-1", app.server_address[1], tags={"kuma.io/protocol": "http"}
        )
        web, outbound = mesh.client("web-1")
        wait_ready(
            mesh.start(backend, ready=False),
            mesh.start(web, ready=False),
        )
        conn = http.client.HTTPConnection(LOOPBACK, outbound, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"hello"
        s = stats(admin_port(web))
        assert s[f"listener.127.0.0.1_{outbound}.downstream_cx_active"] == 1
        assert s[f"listener.127.0.0.1_{outbound}.downstream_cx_total"] == 1
        conn.close()
        wait_for(lambda: closed(admin_port(web), f"127.0.0.1_{outbound}"))
    finally:
        app.shutdown()
        app.server_close()
