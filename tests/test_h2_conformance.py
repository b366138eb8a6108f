"""RFC 9113's error-handling rules over hand-built frames, against both kinds of HTTP/2 server a
sidecar runs: the outbound an app talks to, and the inbound peer sidecars talk to (the mesh hop).

For every rule: the right answer (GOAWAY with the connection error's code, RST_STREAM with the
stream error's code, or nothing for what must be ignored), and the sidecar keeps serving — the
same connection after a stream error, a new one after a connection error.

Where h2 (and Envoy's default) is stricter than the RFC, the test says so: a malformed request
(RFC 9113 8.1.1: a stream error) closes the connection with PROTOCOL_ERROR, as Envoy does unless
`stream_error_on_invalid_http_message` is set; RFC 9113 5.4.1 allows treating a stream error as
a connection error. Two codes differ from the RFC's and are accepted as h2 sends them: an HPACK
decoding failure (COMPRESSION_ERROR in the RFC, PROTOCOL_ERROR from h2) and a SETTINGS ACK with a
payload (FRAME_SIZE_ERROR in the RFC, PROTOCOL_ERROR from h2); the connection is closed either way.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apps import Hypercorn
from tests.attack import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    RawH2,
    cut_off,
    frame,
    request_headers,
)
from tests.conftest import Mesh
from tests.observe_support import admin_port, stats
from tests.support import wait_ready


@dataclass
class Servers:
    outbound: int  # web's outbound: an app's HTTP/2
    inbound: int  # backend's inbound: the mesh hop
    web_admin: int


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    mesh = Mesh(Path(tmp_path_factory.mktemp("h2conf")), "uvloop")
    app = Hypercorn()
    try:
        backend, inbound = mesh.backend("backend-1", app.port, tags={"kuma.io/protocol": "http"})
        web, outbound = mesh.client("web-1")
        wait_ready(mesh.start(backend, ready=False), mesh.start(web, ready=False))
        yield Servers(outbound, inbound, admin_port(web))
    finally:
        mesh.close()
        app.close()


@pytest.fixture(params=["outbound", "inbound"])
def port(request, servers) -> int:
    return getattr(servers, request.param)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def settings(code: int, value: int) -> bytes:
    return struct.pack(">HI", code, value)


def headers_frame(conn: RawH2, stream_id: int, headers, flags: int = END_HEADERS | END_STREAM):
    return frame(HEADERS, flags, stream_id, conn.block(headers))


def served(port: int) -> None:
    """A new connection still gets an answer."""
    conn = RawH2(port)
    conn.request(1, "/after")
    assert conn.response(1)[0] == 200
    conn.close()


# name → (what to send, given the connection; the GOAWAY error code expected)
CONNECTION_ERRORS = {
    "DATA on stream 0": (lambda c: frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    "HEADERS on stream 0": (lambda c: frame(HEADERS, 0x5, 0, b"\x82"), PROTOCOL_ERROR),
    "HEADERS on an even stream": (lambda c: headers_frame(c, 2, request_headers()), PROTOCOL_ERROR),
    "stream id going down": (
        lambda c: headers_frame(c, 5, request_headers()) + headers_frame(c, 3, request_headers()),
        PROTOCOL_ERROR,
    ),
    "DATA on an idle stream": (lambda c: frame(DATA, 0, 7, b"x"), PROTOCOL_ERROR),
    "SETTINGS on a stream": (lambda c: frame(SETTINGS, 0, 1), PROTOCOL_ERROR),
    "SETTINGS length not a multiple of 6": (
        lambda c: frame(SETTINGS, 0, 0, b"\x00" * 5), FRAME_SIZE_ERROR),
    "SETTINGS ACK with a payload": (
        lambda c: frame(SETTINGS, 1, 0, settings(3, 1)), PROTOCOL_ERROR),  # RFC: FRAME_SIZE
    "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1": (
        lambda c: frame(SETTINGS, 0, 0, settings(4, 2**31)), FLOW_CONTROL_ERROR),
    "SETTINGS_MAX_FRAME_SIZE under 16384": (
        lambda c: frame(SETTINGS, 0, 0, settings(5, 1000)), PROTOCOL_ERROR),
    "SETTINGS_ENABLE_PUSH of 2": (lambda c: frame(SETTINGS, 0, 0, settings(2, 2)), PROTOCOL_ERROR),
    "PING of 7 bytes": (lambda c: frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR),
    "PING on a stream": (lambda c: frame(PING, 0, 1, b"12345678"), PROTOCOL_ERROR),
    "RST_STREAM on stream 0": (lambda c: frame(RST_STREAM, 0, 0, u32(8)), PROTOCOL_ERROR),
    "RST_STREAM on an idle stream": (lambda c: frame(RST_STREAM, 0, 9, u32(8)), PROTOCOL_ERROR),
    "RST_STREAM of 3 bytes": (
        lambda c: headers_frame(c, 1, request_headers(), END_HEADERS)
        + frame(RST_STREAM, 0, 1, b"\x00\x00\x08"),
        FRAME_SIZE_ERROR,
    ),
    "WINDOW_UPDATE of 3 bytes": (
        lambda c: frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), FRAME_SIZE_ERROR),
    "WINDOW_UPDATE of 0 on the connection": (
        lambda c: frame(WINDOW_UPDATE, 0, 0, u32(0)), PROTOCOL_ERROR),
    "connection window past 2^31-1": (
        lambda c: frame(WINDOW_UPDATE, 0, 0, u32(2**31 - 1)), FLOW_CONTROL_ERROR),
    "GOAWAY on a stream": (lambda c: frame(GOAWAY, 0, 1, u32(0) + u32(0)), PROTOCOL_ERROR),
    "CONTINUATION without HEADERS": (
        lambda c: frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),
    "another frame inside a header block": (
        lambda c: headers_frame(c, 1, request_headers(), 0) + frame(PING, 0, 0, b"12345678"),
        PROTOCOL_ERROR,
    ),
    "PUSH_PROMISE from a client": (
        lambda c: frame(PUSH_PROMISE, END_HEADERS, 1, u32(2) + b"\x82"), PROTOCOL_ERROR),
    "undecodable HPACK": (
        lambda c: frame(HEADERS, 0x5, 1, b"\xff\xff\xff\xff"), PROTOCOL_ERROR),  # RFC: COMPRESSION
    "padding longer than the frame": (
        lambda c: headers_frame(c, 1, request_headers(), END_HEADERS)
        + frame(DATA, PADDED, 1, b"\x05x"),
        PROTOCOL_ERROR,
    ),
    "DATA over SETTINGS_MAX_FRAME_SIZE": (
        lambda c: headers_frame(c, 1, request_headers(), END_HEADERS)
        + frame(DATA, 0, 1, b"x" * (256 * 1024 + 1)),
        FRAME_SIZE_ERROR,
    ),
    # DATA frames of open streams are taken before h2 (sidecar.http.h2, `_take_data`): the
    # checks it makes there answer as h2 would.
    "DATA past the content-length, the stream still open": (
        lambda c: headers_frame(c, 1, [*request_headers(method="POST"), ("content-length", "4")],
                                END_HEADERS)
        + frame(DATA, 0, 1, b"abcdef"),
        PROTOCOL_ERROR,
    ),
    "DATA of an open stream inside another stream's header block": (
        lambda c: headers_frame(c, 1, request_headers("/sleep/1", method="POST"), END_HEADERS)
        + headers_frame(c, 3, request_headers(), 0)
        + frame(DATA, 0, 1, b"abc"),
        PROTOCOL_ERROR,
    ),
    "WINDOW_UPDATE of 0 on a stream": (
        lambda c: headers_frame(c, 1, request_headers("/sleep/1"), END_HEADERS)
        + frame(WINDOW_UPDATE, 0, 1, u32(0)),
        PROTOCOL_ERROR,  # RFC: a stream error; h2 makes it a connection error (5.4.1 allows)
    ),
    "PRIORITY on itself": (
        lambda c: frame(PRIORITY, 0, 1, u32(1) + b"\x10"), PROTOCOL_ERROR),
    # Malformed requests (RFC 9113 8.1.1 and 8.2): Envoy's default, a connection error.
    "uppercase header name": (
        lambda c: headers_frame(c, 1, [*request_headers(), ("X-Upper", "1")]), PROTOCOL_ERROR),
    "connection-specific header": (
        lambda c: headers_frame(c, 1, [*request_headers(), ("connection", "close")]),
        PROTOCOL_ERROR,
    ),
    "TE other than trailers": (
        lambda c: headers_frame(c, 1, [*request_headers(), ("te", "gzip")]), PROTOCOL_ERROR),
    "pseudo-header after a regular one": (
        lambda c: headers_frame(c, 1, [("x", "y"), *request_headers()]), PROTOCOL_ERROR),
    "unknown pseudo-header": (
        lambda c: headers_frame(c, 1, [*request_headers(), (":foo", "x")]), PROTOCOL_ERROR),
    "no :path": (lambda c: headers_frame(c, 1, request_headers()[:3]), PROTOCOL_ERROR),
    "empty :path": (
        lambda c: headers_frame(c, 1, [*request_headers()[:3], (":path", "")]), PROTOCOL_ERROR),
    "a NUL in a value": (
        lambda c: headers_frame(c, 1, [*request_headers(), ("x", "a\x00b")]), PROTOCOL_ERROR),
    "content-length not matching the DATA": (
        lambda c: headers_frame(c, 1, [*request_headers(method="POST"), ("content-length", "10")],
                                END_HEADERS)
        + frame(DATA, END_STREAM, 1, b"abc"),
        PROTOCOL_ERROR,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CONNECTION_ERRORS))
def test_connection_errors_get_goaway_and_the_sidecar_keeps_serving(port, name):
    build, code = CONNECTION_ERRORS[name]
    conn = RawH2(port)
    conn.send(build(conn))
    received = cut_off(conn)
    goaway = received.goaway()
    assert goaway is not None, f"{name}: no GOAWAY, got {received.frames[-3:]}"
    assert goaway.error_code == code, f"{name}: {goaway}"
    served(port)


def test_stream_errors_get_rst_stream_and_the_connection_goes_on(port):
    conn = RawH2(port).settled()
    # Flow-control window of one stream past 2^31-1 (6.9.1): FLOW_CONTROL_ERROR on that stream.
    conn.send(headers_frame(conn, 1, request_headers("/sleep/0.2"), END_HEADERS))
    conn.send(frame(WINDOW_UPDATE, 0, 1, u32(2**31 - 1)))
    assert conn.read(lambda r: r.rst(1) is not None).rst(1).error_code == FLOW_CONTROL_ERROR
    # DATA after END_STREAM (5.1, half-closed remote): STREAM_CLOSED.
    conn.request(3, "/sleep/0.5")
    conn.send(frame(DATA, 0, 3, b"late"))
    assert conn.read(lambda r: r.rst(3) is not None).rst(3).error_code == STREAM_CLOSED
    # The connection goes on.
    conn.request(5, "/still")
    assert conn.response(5)[0] == 200
    conn.close()


def test_streams_over_the_concurrent_limit_are_refused_not_the_connection(servers):
    """5.1.2: a stream over SETTINGS_MAX_CONCURRENT_STREAMS (100 toward apps) gets RST_STREAM
    REFUSED_STREAM, counted (downstream_rq_overload); h2 alone would end the connection."""
    overload = f"http.outbound_127.0.0.1_{servers.outbound}.downstream_rq_overload"
    before = stats(servers.web_admin).get(overload, 0)
    conn = RawH2(servers.outbound).settled()
    for stream_id in range(1, 2 * 100, 2):  # 100 open streams, their bodies never sent
        conn.send(headers_frame(conn, stream_id, request_headers("/", method="POST"), END_HEADERS))
    conn.send(headers_frame(conn, 201, request_headers("/one-too-many")))
    received = conn.read(lambda r: r.rst(201) is not None)
    assert received.rst(201).error_code == REFUSED_STREAM
    assert received.goaway() is None
    assert stats(servers.web_admin)[overload] - before == 1
    conn.send(frame(DATA, END_STREAM, 1, b""))  # one ends: a slot is free again
    assert conn.response(1)[0] == 200
    conn.send(headers_frame(conn, 203, request_headers("/now-there-is-room")))
    assert conn.response(203)[0] == 200
    conn.close()


def test_request_bodies_in_pieces_and_between_other_frames(port):
    """Frames are cut by the sidecar before h2 sees them: a body whose frames arrive a byte at a
    time, frames split anywhere across reads, DATA frames of two streams interleaved with PING,
    WINDOW_UPDATE and padded DATA in one write, all arrive whole and in order."""
    conn = RawH2(port).settled()
    post = request_headers("/one", method="POST")
    body = bytes(range(256)) * 64
    conn.send(headers_frame(conn, 1, post, END_HEADERS))
    wire = frame(DATA, 0, 1, body[:5000]) + frame(DATA, 0, 1, body[5000:9000])
    for i in range(len(wire)):  # one byte per write: each read may hold less than a header
        conn.send(wire[i : i + 1])
    conn.send(frame(DATA, END_STREAM, 1, body[9000:]))
    status, answer = conn.response(1)
    assert status == 200
    assert json.loads(answer)["body_sha256"] == hashlib.sha256(body).hexdigest()

    conn.send(headers_frame(conn, 3, request_headers("/two", method="POST"), END_HEADERS))
    conn.send(headers_frame(conn, 5, request_headers("/three", method="POST"), END_HEADERS))
    mixed = (
        frame(DATA, 0, 3, b"a" * 100)
        + frame(PING, 0, 0, b"12345678")
        + frame(DATA, 0, 5, b"b" * 200)
        + frame(DATA, PADDED, 3, b"\x03" + b"c" * 50 + b"\x00" * 3)
        + frame(WINDOW_UPDATE, 0, 0, u32(1000))
        + frame(DATA, 0, 5, b"d" * 300)
    )
    conn.send(mixed[:7])
    conn.send(mixed[7:130] + mixed[130:131])
    conn.send(mixed[131:] + frame(DATA, END_STREAM, 3, b"e") + frame(DATA, END_STREAM, 5, b""))
    for stream_id, expected in ((3, b"a" * 100 + b"c" * 50 + b"e"), (5, b"b" * 200 + b"d" * 300)):
        status, answer = conn.response(stream_id)
        assert status == 200
        seen = json.loads(answer)
        assert seen["body_size"] == len(expected), stream_id
        assert seen["body_sha256"] == hashlib.sha256(expected).hexdigest()
    assert conn.received.goaway() is None
    conn.close()


def test_oversized_frame_arriving_in_pieces_is_refused_whole(port):
    """A DATA frame over SETTINGS_MAX_FRAME_SIZE whose payload arrives over several reads, and
    looks like small DATA frames of an open stream: it is refused (FRAME_SIZE_ERROR) as one
    frame, none of the look-alikes inside it is taken for a frame."""
    conn = RawH2(port).settled()
    conn.send(headers_frame(conn, 1, request_headers("/sleep/1", method="POST"), END_HEADERS))
    look_alike = frame(DATA, 0, 1, b"x" * 100)
    payload = look_alike * (256 * 1024 // len(look_alike) + 1)
    oversized = frame(DATA, 0, 1, payload)
    for start in range(0, len(oversized), 50_000):
        if not conn.send(oversized[start : start + 50_000]):
            break
    goaway = cut_off(conn).goaway()
    assert goaway is not None and goaway.error_code == FRAME_SIZE_ERROR, goaway
    served(port)


def test_what_must_be_ignored_is_ignored(port):
    """Unknown frame types and settings are ignored (5.5, 6.5.2); PRIORITY may name an idle
    stream (5.1); none of them disturbs the connection."""
    conn = RawH2(port)
    conn.send(frame(0xFA, 0xFF, 0, b"extension"))
    conn.send(frame(SETTINGS, 0, 0, settings(0x7777, 42)))
    conn.send(frame(PRIORITY, 0, 9, u32(0) + b"\x10"))
    conn.request(1, "/ignored")
    assert conn.response(1)[0] == 200
    assert conn.received.goaway() is None
    conn.close()
