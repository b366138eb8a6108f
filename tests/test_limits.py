"""Limits, request-head strictness, circuit-breaker thresholds and outlier detection, unit by unit
(no sockets): the parts the hardening end-to-end tests rely on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.cluster import Cluster, Resolver, Target
from sidecar.http.h1 import target_problem
from sidecar.http.h1wire import End, ProtocolError, RequestParser
from sidecar.limits import Limits, LimitsError, describe, load_limits
from sidecar.observe.stats import ClusterStats
from sidecar.transport.fds import FdGuard

# -- limits: one object, a file and flags --------------------------------------------------------


def test_defaults_are_envoys_and_kumas():
    limits = Limits()
    assert limits.max_request_headers_bytes == 60 * 1024
    assert limits.max_headers_count == 100
    assert limits.h2_max_concurrent_streams == 100
    assert limits.mesh_max_concurrent_streams == 1024
    assert (limits.max_upstream_connections, limits.max_pending_requests) == (1024, 1024)
    assert (limits.max_requests, limits.max_retries) == (1024, 3)
    assert limits.outlier_consecutive_5xx == 5
    assert limits.outlier_base_ejection_time == 30.0
    assert limits.changed() == {}


def test_file_then_flags_win(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text("max_headers_count: 50\nrequest_headers_timeout: 2.5\nmax_requests: 7\n")
    limits = load_limits(path, ["max_requests=9", "http_idle_timeout=60"])
    assert limits.max_headers_count == 50
    assert limits.request_headers_timeout == 2.5
    assert limits.max_requests == 9
    assert limits.changed() == {
        "max_headers_count": 50,
        "request_headers_timeout": 2.5,
        "max_requests": 9,
        "http_idle_timeout": 60.0,
    }


@pytest.mark.parametrize(
    "content, flags, message",
    [
        ("nope: 1\n", [], "unknown limit 'nope'"),
        ("max_headers_count: many\n", [], "max_headers_count: expected a number"),
        ("max_headers_count: 1.5\n", [], "expected a whole number"),
        ("max_headers_count: true\n", [], "expected a number"),
        ("max_headers_count: 0\n", [], "must be at least 1"),
        ("- a\n- b\n", [], "expected a mapping"),
        ("key: [unclosed\n", [], "not YAML"),
        ("", ["max_requests"], "expected NAME=VALUE"),
        ("", ["request_headers_timeout=-1"], "must be at least 0"),
        ("", ["request_headers_timeout=inf"], "finite"),
    ],
)
def test_bad_limits_name_source_and_field(tmp_path, content, flags, message):
    path = tmp_path / "limits.yaml"
    path.write_text(content)
    with pytest.raises(LimitsError, match=message.replace("[", r"\[")):
        load_limits(path, flags)


def test_every_limit_is_described():
    text = describe()
    for name in Limits.__dataclass_fields__:
        assert f"{name}: " in text


# -- the request head: what the strict parser refuses ----------------------------------------------


def parse(raw: bytes, max_headers: int = 100) -> tuple[str, int | None]:
    """("ok", None) once a whole request was read, or ("error", the status a server answers)."""
    parser = RequestParser(max_fields=max_headers)
    try:
        events = parser.receive(raw)
    except ProtocolError as exc:
        return "error", exc.status
    return ("ok", None) if any(type(e) is End for e in events) else ("incomplete", None)


HOST = b"Host: a\r\n"
SMUGGLING = {
    "CL and TE": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE and CL": b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "duplicate CL, same value": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    "duplicate CL, other value": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "CL list": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5, 5\r\n\r\nhello",
    "CL signed": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: +5\r\n\r\nhello",
    "CL hex": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 0x5\r\n\r\nhello",
    "TE on HTTP/1.0": b"POST / HTTP/1.0\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    "TE with space before colon": b"POST / HTTP/1.1\r\n"
    + HOST
    + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + HOST + b"X-A: b\r\n c\r\n\r\n",
    "bare LF in head": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare LF after a header": b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "bare LF in trailers": b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
    b"0\r\nX: y\n\r\n",
    "CL in trailers": b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
    b"0\r\nContent-Length: 5\r\n\r\n",
    "chunk size with bare LF": b"POST / HTTP/1.1\r\n"
    + HOST
    + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    "NUL in value": b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x00b\r\n\r\n",
    "control character in value": b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x01b\r\n\r\n",
    "DEL in value": b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x7fb\r\n\r\n",
    "bad header name": b"GET / HTTP/1.1\r\n" + HOST + b"X(y): z\r\n\r\n",
    "empty header name": b"GET / HTTP/1.1\r\n" + HOST + b": z\r\n\r\n",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_ambiguous_or_malformed_requests_get_400(name):
    assert parse(SMUGGLING[name]) == ("error", 400)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n" + HOST + b"X-A: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"X-A: tab\there, 8-bit \xe9\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ],
)
def test_well_formed_requests_pass(raw):
    assert parse(raw) == ("ok", None)


def test_header_count_over_the_limit_is_431():
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(11))
    assert parse(b"GET / HTTP/1.1\r\n" + HOST + many + b"\r\n", max_headers=12) == ("ok", None)
    assert parse(b"GET / HTTP/1.1\r\n" + HOST + many + b"\r\n", max_headers=11) == ("error", 431)


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9"])
def test_unknown_http_versions_get_505(version):
    assert parse(b"GET / " + version + b"\r\n" + HOST + b"\r\n") == ("error", 505)


@pytest.mark.parametrize(
    "method, target, ok",
    [
        (b"GET", b"/path?q=1", True),
        (b"GET", b"http://host:80/x", True),
        (b"GET", b"HTTPS://host", True),
        (b"OPTIONS", b"*", True),
        (b"CONNECT", b"example.com:443", True),
        (b"GET", b"*", False),
        (b"GET", b"foo", False),
        (b"GET", b"/a#frag", False),
        (b"GET", b"http:///nohost", False),
        (b"CONNECT", b"/path", False),
        (b"CONNECT", b"host", False),
        (b"CONNECT", b"host:port", False),
    ],
)
def test_request_target_forms(method, target, ok):
    assert (target_problem(method, target) is None) is ok


# -- circuit-breaker thresholds and outlier detection ---------------------------------------------


def cluster_of(n: int, **limits: float) -> Cluster:
    cluster = Cluster("backend", ClusterStats("backend"), limits=Limits(**limits))
    cluster.set_targets([Target("127.0.0.1", 1000 + i) for i in range(n)])
    return cluster


def test_cluster_carries_breaker_thresholds():
    cluster = cluster_of(1, max_requests=7, max_pending_requests=3, max_retries=1)
    stats = cluster.stats
    assert (stats.cb_max_requests, stats.cb_max_pending_requests, stats.cb_max_retries) == (7, 3, 1)
    assert stats.circuit_breakers_rq_open == 0
    stats.upstream_rq_active = 7
    assert stats.circuit_breakers_rq_open == 1


async def test_consecutive_failures_eject_then_the_endpoint_returns(caplog):
    caplog.set_level(logging.INFO, "sidecar.cluster")
    cluster = cluster_of(10, outlier_base_ejection_time=0.2)
    bad = cluster.targets[3]
    for _ in range(4):
        cluster.outlier.failure(bad)
    cluster.outlier.success(bad)  # a success resets the run
    for _ in range(4):
        cluster.outlier.failure(bad)
    assert cluster.stats.outlier_detection_ejections_active == 0
    cluster.outlier.failure(bad)
    assert cluster.stats.outlier_detection_ejections_active == 1
    assert cluster.stats.outlier_detection_ejections_enforced_total == 1
    assert cluster.stats.membership_healthy == 9
    assert all(cluster.pick() != bad for _ in range(50))
    assert "event=outlier_ejected cluster=backend endpoint=127.0.0.1:1003" in caplog.text
    await asyncio.sleep(0.3)
    assert cluster.stats.outlier_detection_ejections_active == 0
    assert bad in {cluster.pick() for _ in range(20)}
    assert "event=outlier_returned" in caplog.text


async def test_ejection_grows_with_repeats_and_respects_max_percent():
    cluster = cluster_of(10, outlier_base_ejection_time=10, outlier_max_ejection_time=25)
    first, second = cluster.targets[0], cluster.targets[1]
    for _ in range(5):
        cluster.outlier.failure(first)
    for _ in range(5):
        cluster.outlier.failure(second)  # 10% of 10 endpoints: one at a time
    assert cluster.outlier.ejected == {first.key}
    assert cluster.stats.outlier_detection_ejections_overflow == 1
    health = cluster.outlier.health[first.key]
    loop = asyncio.get_running_loop()
    assert 9 < health.ejected_until - loop.time() <= 10
    cluster.outlier._return(first.key)  # as its timer would
    for _ in range(5):
        cluster.outlier.failure(first)
    assert 19 < cluster.outlier.health[first.key].ejected_until - loop.time() <= 20
    cluster.outlier._return(first.key)
    for _ in range(5):
        cluster.outlier.failure(first)
    assert 24 < cluster.outlier.health[first.key].ejected_until - loop.time() <= 25  # capped
    cluster.set_targets([])  # endpoints that leave take their timers with them
    assert cluster.stats.outlier_detection_ejections_active == 0


async def test_every_endpoint_ejected_means_panic_not_an_empty_cluster():
    cluster = cluster_of(1)
    only = cluster.targets[0]
    for _ in range(5):
        cluster.outlier.failure(only)
    assert cluster.outlier.ejected == {only.key}
    assert cluster.pick() == only  # Envoy's panic mode: route to all rather than to none
    cluster.set_targets([])


async def test_outlier_detection_can_be_disabled():
    cluster = cluster_of(3, outlier_consecutive_5xx=0)
    for _ in range(50):
        cluster.outlier.failure(cluster.targets[0])
    assert not cluster.outlier.ejected


# -- DNS: the last good answer is kept, the outage logged once ------------------------------------


async def test_resolver_keeps_last_good_addresses_and_logs_once(caplog):
    caplog.set_level(logging.INFO, "sidecar.cluster")
    answers: list[object] = [["10.0.0.1", "10.0.0.2"], OSError("no such host")]

    async def lookup(host: str) -> list[str]:
        answer = answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    resolver = Resolver(lookup)
    assert await resolver.refresh(["backend.test"])
    assert resolver.cached("backend.test") == ("10.0.0.1", "10.0.0.2")
    answers.pop(0)
    for _ in range(5):
        assert not await resolver.refresh(["backend.test"])
    assert resolver.cached("backend.test") == ("10.0.0.1", "10.0.0.2")
    assert resolver.failures == 5
    assert caplog.text.count("event=dns_failed") == 1
    answers[0] = ["10.0.0.3"]
    assert await resolver.refresh(["backend.test"])
    assert resolver.cached("backend.test") == ("10.0.0.3",)
    assert "event=dns_recovered host=backend.test" in caplog.text


# -- file descriptors ----------------------------------------------------------------------------


def test_fd_guard_refuses_near_the_limit_and_says_so_once(caplog):
    caplog.set_level(logging.INFO, "sidecar.fds")
    guard = FdGuard(reserve=10)
    guard.limit = guard.counted + 16  # room for three connections (two descriptors each)
    assert [guard.admit() for _ in range(5)] == [True, True, True, False, False]
    guard.accept_failed()
    assert caplog.text.count("event=fd_exhausted") == 1
    guard.refresh()  # the real limit again: recovered
    assert guard.admit()
    assert caplog.text.count("event=fd_recovered") == 1


# -- HTTP/2: a peer that does not read -----------------------------------------------------------


async def test_a_peer_that_does_not_read_what_it_makes_us_send_is_closed():
    """PING (or SETTINGS, or frames that draw a RST_STREAM) from a peer that reads nothing: our
    answers pile up in the transport; past `h2_max_outbound_buffer` the connection is closed."""
    from sidecar.http.h2 import PREFACE, H2Protocol
    from sidecar.observe.stats import HttpStats
    from tests.attack import PING, SETTINGS, FakeTransport, frame

    class Clogged(FakeTransport):
        def get_write_buffer_size(self) -> int:
            return len(self.written)  # nothing ever leaves

    stats = HttpStats("outbound_test")
    limits = Limits(h2_max_outbound_buffer=65536, h2_max_control_frames_per_second=10**6)
    server = H2Protocol(client_side=False, handler=None, limits=limits, stats=stats)
    transport = Clogged()
    server.connection_made(transport)
    server.pause_writing()  # the transport is past its high-water mark
    server.data_received(PREFACE + frame(SETTINGS, 0, 0))
    for _ in range(10000):
        if transport.closing:
            break
        server.data_received(frame(PING, 0, 0, b"12345678") * 10)
    assert transport.closing
    assert stats.http2_outbound_flood == 1
    assert len(transport.written) < 65536 + 20 * 17  # bounded: one batch past the limit at most
