"""Abuse a sidecar must survive while a legitimate client on it keeps being served.

One mesh for the module (app ← backend sidecar ← web sidecar, uvloop; the event-loop specific
paths have their own tests): each test attacks web's outbound with raw sockets and hand-built
HTTP/2 frames, asserts that the attacker is cut off the way Envoy cuts it off (GOAWAY
ENHANCE_YOUR_CALM, RST_STREAM, 400/408/431) and counted, while `Legit` — a kept-alive connection
plus new ones — sees no failure at all. Timeouts are shortened with `--limit` flags.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apps import Hypercorn
from tests.attack import (
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    HEADERS,
    PING,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Legit,
    RawH2,
    cut_off,
    frame,
    request_headers,
    settings_payload,
)
from tests.conftest import Mesh
from tests.observe_support import admin_port, stats
from tests.support import LOOPBACK, Sidecar, recv_all, wait_for

# Short timeouts, so that the slow attacks are judged in a second or two.
LIMITS = (
    "--limit", "request_headers_timeout=1",
    "--limit", "http_idle_timeout=2",
    "--stream-idle-timeout", "1",
)  # fmt: skip


@dataclass
class Site:
    mesh: Mesh
    port: int  # web's outbound, where apps (and attackers) connect
    web: Sidecar
    admin: int

    def count(self, suffix: str) -> int:
        """A counter of web's outbound HTTP connection manager (`http.<prefix>.<suffix>`)."""
        values = stats(self.admin)
        return sum(
            v
            for k, v in values.items()
            if k.startswith("http.outbound") and k.endswith("." + suffix)
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    mesh = Mesh(Path(tmp_path_factory.mktemp("abuse")), "uvloop")
    app = Hypercorn()
    try:
        backend, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        web_file, port = mesh.client("web-1")
        mesh.start(backend, *LIMITS)
        web = mesh.start(web_file, *LIMITS)
        yield Site(mesh, port, web, admin_port(web_file))
    finally:
        mesh.close()
        app.close()


def calm(conn: RawH2) -> None:
    """The server must end the connection; with GOAWAY ENHANCE_YOUR_CALM when it got through."""
    received = cut_off(conn)
    goaway = received.goaway()
    assert goaway is not None or received.reset, f"no GOAWAY: {received.frames[-3:]}"
    if goaway is not None:
        assert goaway.error_code == ENHANCE_YOUR_CALM, goaway


def test_http2_rapid_reset_is_cut_off(site):
    """CVE-2023-44487: streams opened and reset at once. Envoy's rule: once 500 streams were
    opened, more than half reset before their answer ends the connection. None of them costs an
    upstream request once it is reset."""
    before = stats(site.admin).get("cluster.backend.upstream_rq_total", 0)
    with Legit(site.port):
        conn = RawH2(site.port)
        stream_id = 1
        while stream_id < 2 * 5000 and not conn.broken:
            batch = b"".join(
                frame(HEADERS, 0x5, sid, conn.block(request_headers("/reset")))
                + frame(RST_STREAM, 0, sid, b"\x00\x00\x00\x08")
                for sid in range(stream_id, stream_id + 200, 2)
            )
            conn.send(batch)
            stream_id += 200
        calm(conn)
        assert site.count("http2.premature_reset") == 1
    sent_upstream = stats(site.admin)["cluster.backend.upstream_rq_total"] - before
    assert sent_upstream < 500, "reset streams must not become upstream requests"


def test_continuation_flood_is_cut_off_before_it_is_buffered(site):
    with Legit(site.port):
        conn = RawH2(site.port)
        conn.send(frame(HEADERS, 0, 1, conn.block(request_headers("/"))))
        for _ in range(200):  # 3 MiB of header block if nobody stopped it
            if not conn.send(frame(CONTINUATION, 0, 1, b"\x00" * 16000)):
                break
        calm(conn)
        assert site.count("http2.header_overflow") >= 1


def test_hpack_bomb_is_cut_off_and_large_headers_get_431(site):
    """A small header block that decodes to a huge list (entries of the dynamic table referred
    to again and again) ends the connection; one merely over the limit gets 431 on its stream
    and the connection goes on."""
    with Legit(site.port):
        conn = RawH2(site.port)
        big = ("x-bomb", "a" * 4000)
        conn.headers(1, [*request_headers("/first"), big], end=True)
        assert conn.response(1)[0] == 200  # the entry is now in the dynamic table
        block = conn.block([*request_headers("/bomb"), *[big] * 60])  # 240 KiB decoded
        assert len(block) < 4000  # a 60-fold expansion
        conn.send(frame(HEADERS, 0x5, 3, block))
        calm(conn)

        conn = RawH2(site.port)
        many = [(f"x-h{i}", "v" * 7000) for i in range(10)]  # 70 KiB: over 60, under twice
        conn.headers(1, [*request_headers("/large"), *many], end=True)
        assert conn.response(1)[0] == 431
        conn.headers(3, [*request_headers("/many"), *[(f"x-n{i}", "v") for i in range(101)]],
                     end=True)  # fmt: skip
        assert conn.response(3)[0] == 431
        conn.request(5, "/after")
        assert conn.response(5)[0] == 200
        conn.close()
    assert site.count("http2.header_overflow") >= 3


@pytest.mark.parametrize(
    "name, flood, counter",
    [
        ("SETTINGS", frame(SETTINGS, 0, 0), "http2.inbound_control_frames_flood"),
        ("PING", frame(PING, 0, 0, b"12345678"), "http2.inbound_control_frames_flood"),
        ("PRIORITY", frame(PRIORITY, 0, 3, b"\x00\x00\x00\x00\x10"),
         "http2.inbound_priority_frames_flood"),
        ("WINDOW_UPDATE", frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x01"),
         "http2.inbound_window_update_frames_flood"),
        ("empty DATA", frame(DATA, 0, 1), "http2.inbound_empty_frames_flood"),
    ],
)  # fmt: skip
def test_control_and_empty_frame_floods_are_cut_off(site, name, flood, counter):
    before = site.count(counter)
    with Legit(site.port):
        conn = RawH2(site.port)
        if name == "empty DATA":
            conn.request(1, "/sleep/5", end=False)
        for _ in range(20):
            if not conn.send(flood * 500):
                break
        calm(conn)
        assert site.count(counter) == before + 1


def test_zero_window_forever_is_closed_and_memory_bounded(site):
    """A client that never grants flow-control credit: the response waits, holding at most a
    window's worth, and the stream idle timeout resets it (then the connection's idle timeout
    closes the connection)."""
    rss = site.web.memory()
    with Legit(site.port):
        conn = RawH2(site.port, settings_payload(initial_window_size=0))
        conn.request(1, "/bytes/30000000")
        received = conn.read(lambda r: r.rst(1) is not None, timeout=10)
        assert received.rst(1) is not None
        assert site.web.memory() - rss < 30 * 1024 * 1024
        received = cut_off(conn)
        assert received.goaway() is not None  # idle: GOAWAY NO_ERROR, then closed
    assert site.count("downstream_cx_idle_timeout") >= 1


def test_oversized_and_malformed_frames_close_only_that_connection(site):
    with Legit(site.port):
        conn = RawH2(site.port)
        conn.request(1, "/", end=False)
        conn.send(frame(DATA, 0, 1, b"x" * (256 * 1024 + 1)))  # over SETTINGS_MAX_FRAME_SIZE
        received = cut_off(conn)
        assert received.goaway() is not None and received.goaway().error_code == 6
        conn = RawH2(site.port)
        conn.send(frame(SETTINGS, 0, 0, b"\x00" * 5))  # not a multiple of 6
        received = cut_off(conn)
        assert received.goaway() is not None and received.goaway().error_code == 6
        conn = RawH2(site.port)
        conn.send(frame(HEADERS, 0x5, 1, b"\xff\xff\xff"))  # not HPACK
        received = cut_off(conn)
        assert received.goaway() is not None


# -- HTTP/1.1 --------------------------------------------------------------------------------


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(data)
        return recv_all(s)


H = b"Host: backend\r\n"
BAD_REQUESTS = [
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4, 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\n" + H + b"\n", 400),
    (b"GET / HTTP/1.1\r\n" + H + b"Bad Name: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + H + b"X: a\x1bb\r\n\r\n", 400),
    (b"GET nowhere HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n" + H + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + H + b"".join(b"x-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
]  # fmt: skip


def test_http1_smuggling_and_malformed_requests_are_refused(site):
    before = site.count("downstream_cx_protocol_error") + site.count("http1.header_overflow")
    with Legit(site.port):
        for raw, status in BAD_REQUESTS:
            answer = raw_exchange(site.port, raw)
            assert answer.startswith(b"HTTP/1.1 %d " % status), (raw[:80], answer[:100])
            assert answer.count(b"HTTP/1.1") == 1, "nothing after the refusal (no smuggled reply)"
    after = site.count("downstream_cx_protocol_error") + site.count("http1.header_overflow")
    assert after - before == len(BAD_REQUESTS)


def test_slowloris_and_silence_are_cut_off(site):
    """Headers dribbled a byte at a time get 408 once the request headers timeout (1 s here)
    passes; a connection that says nothing is closed after the same time; an HTTP/2 header
    block left unfinished gets GOAWAY."""
    before = site.count("downstream_rq_header_timeout")
    with Legit(site.port):
        dribble = socket.create_connection((LOOPBACK, site.port), timeout=5)
        silent = socket.create_connection((LOOPBACK, site.port), timeout=5)
        stalled = RawH2(site.port).settled()  # no SETTINGS ACK of ours inside the block
        stalled.send(frame(HEADERS, 0, 1, stalled.block(request_headers("/"))))  # no END_HEADERS
        started = time.monotonic()
        dribble.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n")
        answer = b""
        for _ in range(100):
            try:
                dribble.sendall(b"x")
                time.sleep(0.1)  # the attacker's pace, not a synchronisation
            except OSError:
                break
            dribble.setblocking(False)
            try:
                answer += dribble.recv(4096)
            except BlockingIOError:
                pass
            dribble.setblocking(True)
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - started < 4
        assert recv_all(silent) == b""  # closed without a word
        calm(stalled)
        for conn in (dribble, silent):
            conn.close()
    assert site.count("downstream_rq_header_timeout") - before == 3


def test_slow_reader_is_paused_then_closed(site):
    """A client that asks for a large response and does not read: the sidecar stops reading the
    response (it holds a bounded amount), and the stream idle timeout closes the connection."""
    rss = site.web.memory()
    timeouts = site.web.log.count("event=stream_idle_timeout")
    with Legit(site.port):
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect((LOOPBACK, site.port))
        reader.sendall(b"GET /bytes/30000000 HTTP/1.1\r\nHost: backend\r\n\r\n")
        wait_for(
            lambda: site.web.log.count("event=stream_idle_timeout") > timeouts,
            what="the stream idle timeout",
        )
        assert site.web.memory() - rss < 30 * 1024 * 1024
        received = 0
        reader.settimeout(5)
        try:
            while data := reader.recv(65536):
                received += len(data)
        except ConnectionResetError:
            pass
        reader.close()
        assert received < 8 * 1024 * 1024, "only what the socket buffers held"


def test_connection_flood_is_refused_and_counted(tmp_path):
    """Past the listener's connection limit new connections are refused (closed at once) and
    counted as downstream_cx_overflow; a client connected before goes on; the flood's silent
    connections are closed by the request headers timeout, after which new clients get in."""
    mesh = Mesh(tmp_path, "uvloop")
    app = Hypercorn()
    limits = ("--limit", "max_connections=30", "--limit", "request_headers_timeout=1")
    try:
        backend, _ = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        web_file, port = mesh.client("web-1")
        mesh.start(backend)
        mesh.start(web_file, *limits)
        admin = admin_port(web_file)
        with Legit(port, fresh=False):
            flood = []
            for _ in range(120):
                conn = socket.socket()
                conn.settimeout(5)
                conn.connect((LOOPBACK, port))
                flood.append(conn)
            refused = 0
            for conn in flood:
                conn.settimeout(0.5)
                try:
                    if conn.recv(1) == b"":
                        refused += 1
                except TimeoutError:
                    pass  # admitted: silent until the request headers timeout
                except ConnectionResetError:
                    refused += 1
            assert refused >= 80
            overflow = stats(admin)[f"listener.127.0.0.1_{port}.downstream_cx_overflow"]
            assert overflow >= 80
            for conn in flood:
                conn.close()
        request = b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
        wait_for(
            lambda: raw_exchange(port, request).startswith(b"HTTP/1.1 200"),
            what="new clients served again",
        )
    finally:
        mesh.close()
        app.close()
