"""Limits, circuit-breaker thresholds, outlier detection, DNS and descriptor guards, unit by unit
(no sockets): the parts the hardening end-to-end tests rely on. (HTTP/1.1 request-head
strictness is tested at the socket, in test_abuse, so that it holds whatever parser is used.)"""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.cluster import Cluster, Resolver, Target
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


def test_stream_idle_timeouts_come_from_the_limits_unless_the_flag_sets_both():
    from sidecar.config.dataplane import parse_dataplane
    from sidecar.plan import Timeouts, plan_listeners

    dataplane = parse_dataplane(
        "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n"
        "  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags:\n"
        "      kuma.io/service: web\n  outbound:\n  - port: 10002\n    tags:\n"
        "      kuma.io/service: backend\n",
        "web-1.yaml",
    )

    def idle(timeouts: Timeouts) -> dict[str, float]:
        plans = plan_listeners(dataplane, timeouts).values()
        return {p.direction: p.stream_idle_timeout for p in plans}

    assert idle(Timeouts()) == {"inbound": 3600.0, "outbound": 1800.0}  # Kuma's defaults
    limits = load_limits(None, ["inbound_stream_idle_timeout=7", "outbound_stream_idle_timeout=0"])
    from_limits = Timeouts(
        inbound_stream_idle=limits.inbound_stream_idle_timeout,
        outbound_stream_idle=limits.outbound_stream_idle_timeout,
    )
    assert idle(from_limits) == {"inbound": 7.0, "outbound": 0.0}  # 0: disabled
    flag = Timeouts(stream_idle=2.5, inbound_stream_idle=7, outbound_stream_idle=0)
    assert idle(flag) == {"inbound": 2.5, "outbound": 2.5}


def test_every_limit_is_described():
    text = describe()
    for name in Limits.__dataclass_fields__:
        assert f"{name}: " in text


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


def test_new_limits_reach_a_clusters_breakers_but_not_a_disabled_outlier_detector():
    """Limits read again (`Cluster.set_limits`): the thresholds follow; a cluster whose outlier
    detection was turned off (a passthrough cluster) stays off."""
    cluster, passthrough = cluster_of(1), cluster_of(1)
    passthrough.outlier.disable()
    for each in (cluster, passthrough):
        each.set_limits(Limits(max_requests=9, outlier_consecutive_5xx=2))
    assert (cluster.stats.cb_max_requests, cluster.outlier.threshold) == (9, 2)
    assert (passthrough.stats.cb_max_requests, passthrough.outlier.threshold) == (9, 0)


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
    assert cluster.outlier.ejected == {first}
    assert cluster.stats.outlier_detection_ejections_overflow == 1
    health = cluster.outlier.health[first]
    loop = asyncio.get_running_loop()
    assert 9 < health.ejected_until - loop.time() <= 10
    cluster.outlier._return(first)  # as its timer would
    for _ in range(5):
        cluster.outlier.failure(first)
    assert 19 < cluster.outlier.health[first].ejected_until - loop.time() <= 20
    cluster.outlier._return(first)
    for _ in range(5):
        cluster.outlier.failure(first)
    assert 24 < cluster.outlier.health[first].ejected_until - loop.time() <= 25  # capped
    cluster.set_targets([])  # endpoints that leave take their timers with them
    assert cluster.stats.outlier_detection_ejections_active == 0


async def test_every_endpoint_ejected_means_panic_not_an_empty_cluster():
    cluster = cluster_of(1)
    only = cluster.targets[0]
    for _ in range(5):
        cluster.outlier.failure(only)
    assert cluster.outlier.ejected == {only}
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


# -- log lines a peer causes: throttled -----------------------------------------------------------


def test_peer_caused_log_lines_are_throttled_and_say_how_many_were_held_back():
    from sidecar.observe.throttle import PeerEventFilter

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect()
    peer_events = PeerEventFilter()
    handler.addFilter(peer_events)
    logger = logging.getLogger("sidecar.test_peer_events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        for i in range(1000):
            logger.info("event=bad_request peer=%s status=%d", f"127.0.0.1:{i}", 400)
        logger.info("event=listener_overflow listener=%s", "x")  # not a peer event: always
        logger.warning("event=h2_abuse kind=premature_reset")  # another kind: its own line
        assert records == [
            "event=bad_request peer=127.0.0.1:0 status=400",
            "event=listener_overflow listener=x",
            "event=h2_abuse kind=premature_reset",
        ]
        # A second later (the throttle's clock moved back instead of waiting for it):
        key = ("sidecar.test_peer_events", "bad_request")
        started, held = peer_events.throttle._last[key]
        peer_events.throttle._last[key] = (started - 1.0, held)
        logger.info("event=bad_request peer=%s status=%d", "127.0.0.1:1000", 431)
        assert records[-1] == "event=bad_request peer=127.0.0.1:1000 status=431 held_back=999"
    finally:
        logger.removeHandler(handler)


def test_buffer_limits_bound_the_relay_and_every_body():
    """`relay_buffer_kb` is the high-water mark of each side of a relayed TCP connection (the
    reading side pauses past it); `stream_buffer_kb` that of every HTTP body, on both codecs and
    both ends (app-facing and toward peers)."""
    import asyncio
    import socket
    from types import SimpleNamespace

    from sidecar.http import h1wire
    from sidecar.http.exchange import RequestHead
    from sidecar.http.h1 import H1Client, H1Server, H1ServerExchange
    from sidecar.http.h2 import H2Protocol, H2ServerStream
    from sidecar.http.pool import H1Pool, H2Pool
    from sidecar.transport.connect import plain_connector
    from sidecar.transport.relay import Relay

    limits = load_limits(None, ["stream_buffer_kb=32", "relay_buffer_kb=48"])
    assert (limits.stream_buffer_bytes, limits.relay_buffer_bytes) == (32 * 1024, 48 * 1024)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        relay = Relay(loop, 0, None, limits.relay_buffer_bytes)
        ours, theirs = socket.socketpair()
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: relay.downstream, ours)
            assert transport.get_write_buffer_limits() == (12 * 1024, 48 * 1024)
            transport.close()
        finally:
            theirs.close()
        head = RequestHead(b"GET", b"http", b"a", b"/")
        h2_stream = H2ServerStream(H2Protocol(client_side=False, limits=limits), 1, head)
        assert h2_stream.body.high_water == 32 * 1024
        pool = H2Pool(plain_connector(1.0), trusted=False, limits=limits)
        assert pool.limits is limits
        assert H1Pool(plain_connector(1.0), None, limits.stream_buffer_bytes).body_buffer == 32768
        client = H1Client(body_buffer=limits.stream_buffer_bytes)
        ours, theirs = socket.socketpair()  # a client is used once connected (connection_made)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: client, ours)
            assert client.open(head, True).body.high_water == 32 * 1024
            transport.close()
        finally:
            theirs.close()
        server = H1Server(lambda exchange: asyncio.sleep(0), b"a", limits=limits)
        wire = SimpleNamespace(keep_alive=True, framing=h1wire._LENGTH)  # a request with a body
        assert H1ServerExchange(server, head, wire).body.high_water == 32 * 1024

    asyncio.run(scenario())
