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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.apps import Hypercorn
from tests.attack import (
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    HEADERS,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Legit,
    RawH2,
    cut_off,
    frame,
    refused,
    request_headers,
    settings_payload,
)
from tests.conftest import Mesh
from tests.observe_support import admin_port, stats
from tests.support import LOOPBACK, Sidecar, recv_all, wait_for, wait_ready

# Short timeouts, so that the slow attacks are judged in a second or two.
LIMITS = (
    "--limit", "request_headers_timeout=1",
    "--limit", "http_idle_timeout=2",
    "--limit", "outbound_stream_idle_timeout=1",
    "--limit", "inbound_stream_idle_timeout=1",
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
        _, web = wait_ready(
            mesh.start(backend, *LIMITS, ready=False), mesh.start(web_file, *LIMITS, ready=False)
        )
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
        assert len(block) < 5000  # a 50-fold expansion at least
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


# A response far larger than any buffer: were it buffered rather than paused, the sidecars'
# memory would grow by about as much in the second before the stream idle timeout.
HUGE = 200_000_000
BOUND = 8 * 1024 * 1024  # windows, high-water marks, sockets (about 1 MiB measured)


def peaks(site: Site) -> list[int]:
    return [sidecar.memory("VmHWM") for sidecar in site.mesh.sidecars]


def reset_peaks(site: Site) -> list[int]:
    for sidecar in site.mesh.sidecars:
        sidecar.reset_peak()
    return peaks(site)


def test_zero_window_forever_is_closed_and_memory_bounded(site):
    """A client that never grants flow-control credit: the response waits, neither sidecar
    holding more than a bounded amount of it (the peak RSS, both hops), the stream idle timeout
    resets it (counted), then the connection's idle timeout closes the connection."""
    before = site.count("downstream_rq_idle_timeout")
    with Legit(site.port):
        start = reset_peaks(site)
        conn = RawH2(site.port, settings_payload(initial_window_size=0))
        conn.request(1, f"/bytes/{HUGE}")
        received = conn.read(lambda r: r.rst(1) is not None, timeout=10)
        assert received.rst(1) is not None
        grown = [p - s for p, s in zip(peaks(site), start, strict=True)]
        assert max(grown) < BOUND, f"peak RSS grew by {grown}"
        received = cut_off(conn)
        assert received.goaway() is not None  # idle: GOAWAY NO_ERROR, then closed
    assert site.count("downstream_rq_idle_timeout") - before == 1
    assert site.count("downstream_cx_idle_timeout") >= 1


def test_oversized_and_malformed_frames_close_only_that_connection(site):
    """Each ends its own connection with GOAWAY and is counted as a protocol error."""
    before = site.count("downstream_cx_protocol_error")
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
    assert site.count("downstream_cx_protocol_error") - before == 3


INVALID_FIELDS = {
    "space in a name": ("bad name", "x"),
    "empty name": ("", "x"),
    "colon in a name": ("x:y", "z"),
    "upper-case name": ("X-Upper", "z"),
    "NUL in a value": ("x", "a\x00b"),
    "CR in a value": ("x", "a\rb"),
    "LF in a value": ("x", "a\nb"),
    "connection-specific field": ("connection", "close"),
}

ABSURD_HEADS = {  # each answered 400 on its stream by the sidecar; the connection goes on
    "path of no form": request_headers("nowhere"),
    "path with a fragment": request_headers("/a#b"),
    "path with a space": request_headers("/a b"),
    "asterisk path on GET": request_headers("*"),
    "method with a space": request_headers("/", method="G ET"),
    "authority with a space": [(":method", "GET"), (":scheme", "http"),
                               (":authority", "a b"), (":path", "/")],
    "authority with userinfo": [(":method", "GET"), (":scheme", "http"),
                                (":authority", "user@backend"), (":path", "/")],
}  # fmt: skip


def test_http2_invalid_fields_and_absurd_targets_are_refused(site):
    """Invalid field names and values end the connection (PROTOCOL_ERROR, Envoy's default for a
    malformed request), counted; a request line nobody could forward — a :path of no form, a
    space or fragment in it, a bad :method or :authority — gets 400 on its stream (counted as
    http2.rx_messaging_error) and is never sent to the app; a 70 000-byte :path gets 431."""
    errors = site.count("downstream_cx_protocol_error")
    messaging = site.count("http2.rx_messaging_error")
    upstream = stats(site.admin).get("cluster.backend.upstream_rq_total", 0)
    with Legit(site.port) as legit:
        for name, field in INVALID_FIELDS.items():
            conn = RawH2(site.port)
            conn.headers(1, [*request_headers("/"), field], end=True)
            goaway = cut_off(conn).goaway()
            assert goaway is not None and goaway.error_code == PROTOCOL_ERROR, (name, goaway)
        conn = RawH2(site.port)
        stream_id = 1
        for name, head in ABSURD_HEADS.items():
            conn.headers(stream_id, head, end=True)
            status, body = conn.response(stream_id)
            assert status == 400 and body.startswith(b"Bad Request: "), (name, status, body)
            stream_id += 2
        conn.headers(stream_id, request_headers("/" + "a" * 70000), end=True)
        assert conn.response(stream_id)[0] == 431
        conn.request(stream_id + 2, "/after")
        assert conn.response(stream_id + 2)[0] == 200
        conn.close()
    assert site.count("downstream_cx_protocol_error") - errors == len(INVALID_FIELDS)
    assert site.count("http2.rx_messaging_error") - messaging == len(ABSURD_HEADS)
    sent_upstream = stats(site.admin)["cluster.backend.upstream_rq_total"] - upstream
    assert sent_upstream == legit.ok + 1, "the legitimate requests and /after; nothing else"


# -- HTTP/1.1 --------------------------------------------------------------------------------


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(data)
        return recv_all(s)


H = b"Host: backend\r\n"
POST_CHUNKED = b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
# Each refused with its status and the connection closed, by the sidecar (counted), whatever
# parser is behind it: what the next hop could read differently is how requests are smuggled.
BAD_REQUESTS = {
    "CL and TE": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H
                  + b"\r\n", 400),
    "TE and CL": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                  b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "duplicate CL, other value": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n"
                                  b"Content-Length: 40\r\n\r\nabcd", 400),
    "duplicate CL, same value": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n"
                                 b"Content-Length: 4\r\n\r\nabcd", 400),
    "CL list": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4, 4\r\n\r\nabcd", 400),
    "CL negative": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -4\r\n\r\nabcd", 400),
    "CL signed": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd", 400),
    "CL hex": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x4\r\n\r\nabcd", 400),
    "TE not ending in chunked": (b"POST / HTTP/1.1\r\n" + H
                                 + b"Transfer-Encoding: chunked, identity\r\n\r\n", 501),
    "TE on HTTP/1.0": (b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                       b"0\r\n\r\n", 400),
    "TE with a space before the colon": (b"POST / HTTP/1.1\r\n" + H
                                         + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n", 400),
    "bare LF": (b"GET / HTTP/1.1\n" + H + b"\n", 400),
    "bare LF after a header": (b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    "bare CR": (b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    "chunk size line with bare LF": (POST_CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400),
    "bare LF in trailers": (POST_CHUNKED + b"0\r\nX: y\n\r\n", 400),
    "CL in trailers": (POST_CHUNKED + b"0\r\nContent-Length: 5\r\n\r\n", 400),
    "space in a header name": (b"GET / HTTP/1.1\r\n" + H + b"Bad Name: x\r\n\r\n", 400),
    "bad header name": (b"GET / HTTP/1.1\r\n" + H + b"X(y): z\r\n\r\n", 400),
    "empty header name": (b"GET / HTTP/1.1\r\n" + H + b": z\r\n\r\n", 400),
    "NUL in a value": (b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    "ESC in a value": (b"GET / HTTP/1.1\r\n" + H + b"X: a\x1bb\r\n\r\n", 400),
    "DEL in a value": (b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", 400),
    "two Host headers": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "no Host on HTTP/1.1": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "target of no form": (b"GET nowhere HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target with a fragment": (b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "asterisk target on GET": (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute target without a host": (b"GET http:///nohost HTTP/1.1\r\n" + H + b"\r\n", 400),
    "CONNECT to a path": (b"CONNECT /path HTTP/1.1\r\n" + H + b"\r\n", 400),
    "CONNECT without a port": (b"CONNECT host HTTP/1.1\r\n" + H + b"\r\n", 400),
    "CONNECT to a port that is no number": (b"CONNECT host:port HTTP/1.1\r\n" + H + b"\r\n",
                                            400),
    "target of 70 000 bytes": (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n" + H + b"\r\n", 431),
    "101 headers": (b"GET / HTTP/1.1\r\n" + H
                    + b"".join(b"x-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    "HTTP/3.0": (b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    "HTTP/1.2": (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    "HTTP/0.9": (b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
}  # fmt: skip

# Near misses of the above that are well formed: served.
GOOD_REQUESTS = {
    "a header": b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n\r\n",
    "tab and 8-bit bytes in a value": b"GET / HTTP/1.1\r\n" + H + b"X-A: tab\there, \xe9\r\n\r\n",
    "Content-Length": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    "chunked with a trailer": POST_CHUNKED + b"5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n",
    "HTTP/1.0 without Host": b"GET / HTTP/1.0\r\n\r\n",
    "query": b"GET /path?q=1 HTTP/1.1\r\n" + H + b"\r\n",
    "absolute form": b"GET http://backend:80/x HTTP/1.1\r\n" + H + b"\r\n",
    "absolute form, upper-case scheme": b"GET HTTPS://backend HTTP/1.1\r\n" + H + b"\r\n",
    "100 headers": b"GET / HTTP/1.1\r\n"
    + H
    + b"".join(b"x-%d: v\r\n" % i for i in range(99))
    + b"\r\n",
}


def refusals(site: Site) -> int:
    return site.count("downstream_cx_protocol_error") + site.count("http1.header_overflow")


def test_http1_smuggling_and_malformed_requests_are_refused(site):
    """Each gets its status from the sidecar (counted as a protocol error or a header overflow),
    nothing after it (no smuggled second request answered), and the connection closed — judged
    at the socket, so this holds whatever HTTP/1.1 parser the sidecar uses."""
    before = refusals(site)
    with Legit(site.port):
        for name, (raw, status) in BAD_REQUESTS.items():
            answer = raw_exchange(site.port, raw)  # reads to EOF: the sidecar closed it
            assert answer.startswith(b"HTTP/1.1 %d " % status), (name, answer[:100])
            assert answer.count(b"HTTP/1.1") == 1, f"{name}: nothing after the refusal"
    assert refusals(site) - before == len(BAD_REQUESTS)
    # Every one counted, not every one logged: an attacker's flood is not the log's flood.
    assert site.web.log.count("event=bad_request") < len(BAD_REQUESTS) // 2


def test_well_formed_near_misses_are_served(site):
    """They reach the app (its answer, with its `server` header; the app itself answers the
    8-bit value with a 500) and nothing is counted as refused."""
    before = refusals(site)
    for name, raw in GOOD_REQUESTS.items():
        with socket.create_connection((LOOPBACK, site.port), timeout=5) as conn:
            conn.sendall(raw)
            head = b""
            while b"\r\n\r\n" not in head and (data := conn.recv(4096)):
                head += data
        assert head.startswith(b"HTTP/1.1 "), (name, head[:100])
        assert b"\r\nserver: hypercorn" in head, (name, head[:200])
        if b"\xe9" not in raw:
            assert head.startswith(b"HTTP/1.1 200 "), (name, head[:100])
    assert refusals(site) == before


# Request heads built from the pieces smuggling is made of, in any order and with any line ends.
head_lines = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from(
            [b"Content-Length: 5", b"Transfer-Encoding: chunked", b" folded", b"Host: a",
             b"Content-Length: 5, 5", b"X: \x01", b"Transfer-Encoding: identity", b"Host: b"]
        ),
    ),
    max_size=6,
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A body cut short by the client's EOF: the request was forwarded, its upstream stream is reset
# for it, and the client's connection is closed (found by this test: it used to get a 503).
@example(request_line=b"POST /x HTTP/1.0", lines=[b"Content-Length:1"], ending=b"\r\n", body=b"")
@given(
    st.sampled_from([b"GET / HTTP/1.1", b"POST /x HTTP/1.0", b"GET / HTTP/2.0", b"GET x HTTP/1.1"]),
    head_lines,
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
    st.binary(max_size=20),
)
def test_any_request_head_gets_an_answer_or_a_close(site, request_line, lines, ending, body):
    """Whatever the head, the sidecar answers with a status of its own refusals (400, 431, 501,
    505), forwards it (the app's 200), or — for a head never finished — closes it at the
    request headers timeout: never a hang, never a crash (the next connection is served)."""
    raw = ending.join([request_line, *lines]) + ending + ending + body
    with socket.create_connection((LOOPBACK, site.port), timeout=5) as conn:
        conn.sendall(raw)
        conn.shutdown(socket.SHUT_WR)
        answer = recv_all(conn)
    status = answer[9:12]
    assert answer == b"" or status in (b"200", b"400", b"431", b"501", b"505"), answer[:80]


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
    """A client that asks for a large response and does not read: the sidecars stop reading the
    response (each holds a bounded amount: the peak RSS of both hops), and the stream idle
    timeout closes the connection (counted)."""
    before = site.count("downstream_rq_idle_timeout")
    with Legit(site.port):
        start = reset_peaks(site)
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect((LOOPBACK, site.port))
        reader.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: backend\r\n\r\n" % HUGE)
        wait_for(
            lambda: site.count("downstream_rq_idle_timeout") > before,
            what="the stream idle timeout",
        )
        grown = [p - s for p, s in zip(peaks(site), start, strict=True)]
        assert max(grown) < BOUND, f"peak RSS grew by {grown}"
        received = 0
        reader.settimeout(5)
        try:
            while data := reader.recv(65536):
                received += len(data)
        except ConnectionResetError:
            pass
        reader.close()
        assert received < 8 * 1024 * 1024, "only what the socket buffers held"
    assert site.count("downstream_rq_idle_timeout") - before == 1
    assert site.web.log.count("event=stream_idle_timeout") >= 1


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
        wait_ready(mesh.start(backend, ready=False), mesh.start(web_file, *limits, ready=False))
        admin = admin_port(web_file)
        with Legit(port, fresh=False):
            flood = []
            for _ in range(120):
                conn = socket.socket()
                conn.settimeout(5)
                conn.connect((LOOPBACK, port))
                flood.append(conn)
            assert refused(flood, within=0.8) >= 80  # the admitted stay silent till then
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


def test_an_http1_host_that_cannot_be_an_authority_gets_400(site):
    """The HTTP/1.1 codec takes any visible value for Host; one with a space or userinfo would be
    forwarded as the upstream's :authority: 400 and counted, the connection kept."""
    before = site.count("downstream_cx_protocol_error")
    with socket.create_connection((LOOPBACK, site.port), timeout=5) as conn:
        for host in (b"a b", b"user@backend"):
            conn.sendall(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head and (data := conn.recv(4096)):
                head += data
            assert head.startswith(b"HTTP/1.1 400 "), head
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            body = head.partition(b"\r\n\r\n")[2]
            while len(body) < length:
                body += conn.recv(4096)
            assert body == b"Bad Request: invalid authority"
    assert site.count("downstream_cx_protocol_error") - before == 2
