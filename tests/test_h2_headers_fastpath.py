"""HEADERS frames on the sidecar's fast path (sidecar.http.h2: `H2Protocol._take_headers` on
receipt; `_Connection.send_request_headers`, `send_stream_headers` and `_headers_frames` on
sending), against h2 as the peer, both ways.

The fast path decodes a header block and moves h2's state machines by hand; what it leaves to
h2 (CONTINUATION, padding, the PRIORITY flag, streams it does not know, errors) h2 still takes.
Each test checks what the application sees (headers in order, repeated ones, bodies, trailers,
the end of the stream, resets) and that the connection goes on serving other streams. Where it
can, the test also compares with h2 itself fed the same bytes (the "oracle"): the same headers,
the same stream states afterwards, the same answer (GOAWAY or RST_STREAM code) to an error.

Two kinds of harness: in memory (`data_received` fed pieces cut exactly where the test says, on
the test's real event loop), where cut positions must be exact; and real connections on
loopback, with clients and servers built from the h2 library, or raw frames where h2 would not
produce the shape.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.stream
import hpack
import pytest
from hyperframe.frame import (
    Frame,
    GoAwayFrame,
    RstStreamFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.http.exchange import RequestHead, ResponseHead, StreamReset
from sidecar.http.h2 import H2ClientStream, H2Protocol, H2ServerStream
from tests.attack import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    HEADERS,
    PADDED,
    PREFACE,
    PROTOCOL_ERROR,
    RST_STREAM,
    STREAM_CLOSED,
    FakeTransport,
    frame,
)
from tests.support import LOOPBACK

Headers = list[tuple[bytes, bytes]]
PRIORITY_FLAG = 0x20
CLOSED = h2.stream.StreamState.CLOSED
DEADLINE = 5.0  # seconds: a condition not met by then is a failure (each test takes well under 2)


# -- frames ------------------------------------------------------------------------------------


def split_frames(data: bytes, whole: bool = True) -> list[tuple[int, int, int, bytes]]:
    """Frames as (type, flags, stream id, payload), after the client preface if any; all of
    them whole unless `whole` is off (the frames complete so far)."""
    frames = []
    pos = len(PREFACE) if data.startswith(PREFACE) else 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos : pos + 3], "big")
        if not whole and len(data) - pos < 9 + length:
            return frames
        kind, flags = data[pos + 3], data[pos + 4]
        stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        frames.append((kind, flags, stream_id, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data), "a frame was cut short"
    return frames


def parsed(data: bytes) -> list[Frame]:
    out = []
    for kind, flags, stream_id, payload in split_frames(data, whole=False):
        f, _ = Frame.parse_frame_header(memoryview(frame(kind, flags, stream_id)[:9]))
        f.parse_body(memoryview(payload))
        out.append(f)
    return out


def errors_in(data: bytes) -> tuple[int | None, dict[int, list[int]]]:
    """The GOAWAY error code (None without one) and the RST_STREAM codes by stream."""
    goaway = None
    resets: dict[int, list[int]] = {}
    for f in parsed(data):
        if isinstance(f, GoAwayFrame) and goaway is None:
            goaway = f.error_code
        elif isinstance(f, RstStreamFrame):
            resets.setdefault(f.stream_id, []).append(f.error_code)
    return goaway, resets


def reshape(wire: bytes, *, pad: int | None = None, priority: bool = False, pieces: int = 1):
    """h2's own frames, its header blocks re-framed: a padded HEADERS frame, one with the
    PRIORITY flag (stream 0, weight 16), or the block cut into a HEADERS frame and CONTINUATION
    frames (`pieces` frames in all). The block is h2's, byte for byte, so both ends' HPACK
    tables stay in step; every other frame is left as it was."""
    out = bytearray()
    block = bytearray()
    first: tuple[int, int] | None = None  # (flags, stream id) of a block being gathered
    for kind, flags, stream_id, payload in split_frames(wire):
        if kind == HEADERS:
            assert not flags & (PADDED | PRIORITY_FLAG)
            first = (flags, stream_id)
            block = bytearray(payload)
        elif kind == CONTINUATION:
            block += payload
            flags = (first[0] if first else 0) | (flags & END_HEADERS)
            stream_id = first[1] if first else stream_id
        else:
            out += frame(kind, flags, stream_id, payload)
            continue
        if not flags & END_HEADERS:
            continue
        end = flags & END_STREAM
        out += _reframed(bytes(block), stream_id, end, pad, priority, pieces)
        first = None
    return bytes(out)


def _reframed(block: bytes, stream_id: int, end: int, pad, priority, pieces) -> bytes:
    size = -(-len(block) // pieces) if pieces > 1 else len(block)
    parts = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
    flags = end | (END_HEADERS if len(parts) == 1 else 0)
    payload = parts[0]
    if priority:
        flags |= PRIORITY_FLAG
        payload = struct.pack(">IB", 0, 15) + payload
    if pad is not None:
        flags |= PADDED
        payload = bytes([pad]) + payload + b"\x00" * pad
    out = frame(HEADERS, flags, stream_id, payload)
    for i, part in enumerate(parts[1:], 2):
        out += frame(CONTINUATION, END_HEADERS if i == len(parts) else 0, stream_id, part)
    return out


# -- the sidecar's side --------------------------------------------------------------------------


class Spy(H2Protocol):
    """An H2Protocol that records what its fast path took: (stream id, taken) per HEADERS frame
    offered to `_take_headers` (frames with CONTINUATION, padding or priority are not offered);
    and the streams whose headers were sent by h2's `send_headers` (not the fast path's)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.offered: list[tuple[int, bool]] = []
        self.h2_sent: list[int] = []
        send = self.conn.send_headers

        def send_headers(stream_id: int, headers: Any, end_stream: bool = False, **kw: Any):
            self.h2_sent.append(stream_id)
            return send(stream_id, headers, end_stream=end_stream, **kw)

        self.conn.send_headers = send_headers  # type: ignore[method-assign]

    def _take_headers(self, data, start, length, stream_id, end_stream):  # type: ignore[override]
        taken = super()._take_headers(data, start, length, stream_id, end_stream)
        self.offered.append((stream_id, taken))
        return taken

    def taken(self) -> list[int]:
        return [stream_id for stream_id, taken in self.offered if taken]


@dataclass
class Seen:
    """What the application's handler saw of one request."""

    fields: Headers  # pseudo-headers first (as the sidecar keeps them), then the headers
    body: bytes = b""
    trailers: Headers | None = None
    error: str | None = None  # the StreamReset it got, if any


def fields_of(head: RequestHead) -> Headers:
    pseudo = [
        (b":method", head.method),
        (b":scheme", head.scheme),
        (b":authority", head.authority),
        (b":path", head.path),
    ]
    return pseudo + [(bytes(n), bytes(v)) for n, v in head.headers]


class App:
    """The handler behind the sidecar's server, by path:

    /hold…     waits for `release` before anything
    /reset     resets the stream (CANCEL) at once
    /trailers  answers with trailers
    /grpc-only a gRPC trailers-only answer: one HEADERS frame with END_STREAM
    /204, /304 a HEADERS-only answer
    /103       an informational 103 (informational()) before the answer
    /1xx       informational 100 and 103 through respond() (status < 200: h2's send_headers)
    /continue  100 (Expect: 100-continue) before reading the body
    /big       a 40 000-byte header in the answer and its trailers (CONTINUATION frames)
    otherwise  200 echoing the body
    """

    BIG = b"v" * 40_000

    def __init__(self) -> None:
        self.seen: dict[int, Seen] = {}
        self.release = asyncio.Event()
        self.done: set[int] = set()
        self.changed = asyncio.Event()

    async def __call__(self, stream: H2ServerStream) -> None:
        request = stream.request
        seen = self.seen[stream.stream_id] = Seen(fields_of(request))
        path = request.path
        try:
            if path.startswith(b"/hold"):
                await self.release.wait()
            if path == b"/reset":
                stream.reset(h2.errors.ErrorCodes.CANCEL)
                return
            if path == b"/continue":
                stream.informational(ResponseHead(100))
            chunks = []
            while (chunk := await stream.body.read()) is not None:
                chunks.append(chunk)
            seen.body = b"".join(chunks)
            seen.trailers = stream.body.trailers
            await self._answer(stream, path, seen.body)
        except StreamReset as exc:
            seen.error = str(exc)
        finally:
            self.done.add(stream.stream_id)
            self.changed.set()

    async def _answer(self, stream: H2ServerStream, path: bytes, body: bytes) -> None:
        sid = str(stream.stream_id).encode()
        if path == b"/grpc-only":
            grpc = [(b"content-type", b"application/grpc"), (b"grpc-status", b"5")]
            await stream.respond(ResponseHead(200, [*grpc, (b"grpc-message", b"nope")]), end=True)
            return
        if path in (b"/204", b"/304"):
            status = int(path[1:])
            await stream.respond(ResponseHead(status, [(b"x-stream", sid)]), end=True)
            return
        if path == b"/103":
            stream.informational(ResponseHead(103, [(b"link", b"</a.css>; rel=preload")]))
        if path == b"/1xx":
            await stream.respond(ResponseHead(100))
            await stream.respond(ResponseHead(103, [(b"link", b"</b.js>; rel=preload")]))
        headers = [(b"x-stream", sid), (b"x-dup", b"1"), (b"x-dup", b"2")]
        if path == b"/big":
            headers.append((b"x-big", self.BIG))
        await stream.respond(ResponseHead(200, headers))
        await stream.write(b"echo:" + body)
        if path == b"/trailers":
            await stream.finish([(b"x-trailer", b"t1"), (b"x-trailer", b"t2")])
        elif path == b"/big":
            await stream.finish([(b"x-big-trailer", self.BIG)])
        else:
            await stream.finish()

    async def wait(self, condition: Callable[[], bool], what: str = "the handlers") -> None:
        async with asyncio.timeout(DEADLINE):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


def request(path: str, method: str = "GET", **extra: str) -> Headers:
    return [
        (b":method", method.encode()),
        (b":scheme", b"http"),
        (b":authority", b"backend"),
        (b":path", path.encode()),
        *((k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()),
    ]


def lib_config(client_side: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(client_side=client_side, header_encoding=None)


# -- h2 as the peer, in memory -------------------------------------------------------------------


@dataclass
class Answer:
    """What an h2 connection saw on one stream."""

    informational: list[Headers] = field(default_factory=list)
    headers: Headers | None = None
    data: bytes = b""
    trailers: Headers | None = None
    ended: bool = False
    reset: int | None = None


def collect(events: Iterable[h2.events.Event], into: dict[int, Answer]) -> int | None:
    """Fold h2's events into answers by stream; the error code of a GOAWAY, if one came."""
    goaway = None
    for event in events:
        sid = getattr(event, "stream_id", None)
        answer = into.setdefault(sid, Answer()) if sid else None
        if isinstance(event, h2.events.InformationalResponseReceived):
            answer.informational.append(list(event.headers))
        elif isinstance(event, h2.events.RequestReceived | h2.events.ResponseReceived):
            answer.headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            answer.data += event.data
        elif isinstance(event, h2.events.TrailersReceived):
            answer.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            answer.ended = True
        elif isinstance(event, h2.events.StreamReset):
            answer.reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            goaway = event.error_code
    return goaway


def stream_states(conn: h2.connection.H2Connection) -> dict[int, tuple]:
    """What the receive side moved in h2's books, stream by stream, and the HPACK table. A
    closed stream counts as closed, and by whom, whether h2 still holds it or has forgotten it
    (the sidecar forgets its streams earlier than h2 itself would: h2 forgets them only while it
    counts the open ones); a stream not closed is compared whole."""
    states: dict[int, tuple] = {
        sid: ("closed", by) for sid, by in getattr(conn, "_closed_streams", {}).items()
    }
    for sid, s in conn.streams.items():
        machine = s.state_machine
        if machine.state is CLOSED:
            states[sid] = ("closed", machine.stream_closed_by)
        else:
            states[sid] = (
                machine.state,
                machine.headers_received,
                machine.trailers_received,
                s._expected_content_length,
                s._actual_content_length,
            )
    states[0] = (
        conn.highest_inbound_stream_id,
        conn.state_machine.state,
        list(conn.decoder.header_table.dynamic_entries),
    )
    return states


def oracle_server(data: bytes) -> tuple[dict[int, Answer], h2.connection.H2Connection]:
    """h2 itself, configured as the sidecar's server is (validation and normalisation of what it
    receives on), fed the same bytes."""
    conn = h2.connection.H2Connection(lib_config(False))
    conn.initiate_connection()
    answers: dict[int, Answer] = {}
    collect(conn.receive_data(data), answers)
    return answers, conn


def requests_of(answers: dict[int, Answer]) -> dict[int, tuple[Headers, bytes, Headers | None]]:
    return {sid: (a.headers, a.data, a.trailers) for sid, a in answers.items() if a.headers}


# The client's side of the in-memory exchanges: h2's operations, replayed identically (h2's
# encoding is deterministic) so that a fresh h2 client can read each run's answers.
CLIENT_OPS: list[tuple] = [
    (
        "headers",
        1,
        request(
            "/trailers",
            "POST",
            content_length="11",
            x_dup="a",
            cookie="a=1",
        )
        + [(b"x-dup", b"b"), (b"cookie", b"b=2; c=3"), (b"x-empty", b"")],
        False,
    ),
    ("headers", 3, request("/two"), True),  # HEADERS-only request (END_STREAM on HEADERS)
    ("data", 1, b"hello ", False),
    ("headers", 5, request("/three", "POST", x_three="3"), False),
    ("data", 5, b"abc", False),
    ("data", 1, b"world", False),
    ("headers", 1, [(b"x-checksum", b"42"), (b"x-checksum", b"43")], True),  # trailers
    ("data", 5, b"def", True),
]
TAIL_OPS: list[tuple] = [("headers", 7, request("/after"), True)]


def replay(conn: h2.connection.H2Connection, ops: list[tuple]) -> bytes:
    for op, sid, payload, end in ops:
        if op == "headers":
            conn.send_headers(sid, payload, end_stream=end)
        else:
            conn.send_data(sid, payload, end_stream=end)
    return conn.data_to_send()


def lib_client() -> tuple[h2.connection.H2Connection, bytes, bytes, bytes]:
    """A fresh h2 client, and its bytes: the preface and SETTINGS, the requests, the tail."""
    conn = h2.connection.H2Connection(lib_config(True))
    conn.initiate_connection()
    preface = conn.data_to_send()
    return conn, preface, replay(conn, CLIENT_OPS), replay(conn, TAIL_OPS)


_, PREFACE_BYTES, REQUEST_BYTES, TAIL_BYTES = lib_client()
_ORACLE_ANSWERS, _ORACLE_CONN = oracle_server(PREFACE_BYTES + REQUEST_BYTES)
ORACLE_REQUESTS = requests_of(_ORACLE_ANSWERS)
ORACLE_STATES = stream_states(_ORACLE_CONN)
# The HEADERS frames the fast path takes: all but the first of the connection (h2's connection
# state machine is not open until h2 has received a HEADERS frame itself): streams 3 and 5,
# and stream 1's trailers.
FAST = [3, 5, 1]


def test_the_oracle_saw_what_was_sent() -> None:
    """The reference the cut tests compare with: h2 reads the requests as they were meant."""
    one, two, three = (ORACLE_REQUESTS[sid] for sid in (1, 3, 5))
    assert one[0][:4] == request("/trailers", "POST")
    assert [v for n, v in one[0] if n == b"x-dup"] == [b"a", b"b"]
    assert (b"x-empty", b"") in one[0]
    assert (b"cookie", b"a=1; b=2; c=3") in one[0]  # crumbs joined (h2's normalisation)
    assert one[1:] == (b"hello world", [(b"x-checksum", b"42"), (b"x-checksum", b"43")])
    assert two == (request("/two"), b"", None)
    assert three[1:] == (b"abcdef", None)


async def run_server(pieces: list[bytes]) -> tuple[Spy, App, FakeTransport]:
    """A sidecar server fed `pieces`, one `data_received` each; its h2 books are compared with
    the oracle's before any handler runs."""
    app = App()
    proto = Spy(client_side=False, handler=app)
    wire = FakeTransport()
    proto.connection_made(wire)
    for piece in pieces:
        proto.data_received(piece)
    assert not proto.closed
    assert stream_states(proto.conn) == ORACLE_STATES
    return proto, app, wire


async def check_served(proto: Spy, app: App, wire: FakeTransport) -> None:
    """The handlers saw what h2 saw; the answers reach an h2 client; the connection serves the
    next stream."""
    await app.wait(lambda: app.done >= {1, 3, 5})
    for sid, (headers, body, trailers) in ORACLE_REQUESTS.items():
        seen = app.seen[sid]
        assert (seen.fields, seen.body, seen.trailers, seen.error) == (
            headers,
            body,
            trailers,
            None,
        ), sid
    client, _, requests, tail = lib_client()
    assert requests == REQUEST_BYTES  # the same operations made the same bytes
    answers: dict[int, Answer] = {}
    proto.data_received(tail)  # stream 7, on the same connection
    await app.wait(lambda: 7 in app.done)
    proto._flush_now()  # what the last turn queued (written at its end otherwise)
    assert collect(client.receive_data(bytes(wire.written)), answers) is None
    assert dict(answers[1].headers)[b":status"] == b"200"
    assert [v for n, v in answers[1].headers if n == b"x-dup"] == [b"1", b"2"]
    assert answers[1].data == b"echo:hello world"
    assert answers[1].trailers == [(b"x-trailer", b"t1"), (b"x-trailer", b"t2")]
    assert answers[3].data == b"echo:" and answers[5].data == b"echo:abcdef"
    assert dict(answers[7].headers)[b":status"] == b"200" and answers[7].ended
    assert all(answers[sid].ended and answers[sid].reset is None for sid in (1, 3, 5, 7))
    assert proto.h2_sent == []  # answers and trailers: all `send_stream_headers`'s


# -- 1. cuts -----------------------------------------------------------------------------------


async def test_request_frames_cut_at_every_byte_reach_the_handlers_as_h2_reads_them() -> None:
    """The requests of three interleaved streams (headers with repeated names, an empty value,
    cookie crumbs; a HEADERS-only GET; bodies; trailers), in two reads cut at every byte,
    the 9-byte frame headers included: every HEADERS frame after the first is taken by the fast
    path, h2's books afterwards are the oracle's, the handlers see what h2 read."""
    for cut in range(1, len(REQUEST_BYTES)):
        proto, app, wire = await run_server(
            [PREFACE_BYTES, REQUEST_BYTES[:cut], REQUEST_BYTES[cut:]]
        )
        assert proto.taken() == FAST, cut
        await check_served(proto, app, wire)


async def test_preface_and_requests_cut_anywhere_in_two_reads() -> None:
    """The same with the client preface in the stream: the first read may end inside the
    preface, its SETTINGS or any frame after (h2 reads until it holds no partial frame, then
    the fast path takes over)."""
    data = PREFACE_BYTES + REQUEST_BYTES
    for cut in range(1, len(data)):
        proto, app, wire = await run_server([data[:cut], data[cut:]])
        await check_served(proto, app, wire)


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces = []
    for size in cuts:
        if not data:
            break
        pieces.append(data[: size or 1])
        data = data[size or 1 :]
    return [*pieces, data] if data else pieces


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 80), max_size=60), st.booleans())
def test_requests_in_random_pieces(cuts: list[int], preface_apart: bool) -> None:
    async def run() -> None:
        if preface_apart:
            pieces = [PREFACE_BYTES, *pieces_of(REQUEST_BYTES, cuts)]
        else:
            pieces = pieces_of(PREFACE_BYTES + REQUEST_BYTES, cuts)
        proto, app, wire = await run_server(pieces)
        if preface_apart:
            assert proto.taken() == FAST
        await check_served(proto, app, wire)

    asyncio.run(run())


# -- the sidecar as the client, in memory --------------------------------------------------------


def head_of(headers: Headers, method: bytes = b"GET") -> RequestHead:
    pseudo = dict(h for h in headers if h[0][:1] == b":")
    return RequestHead(
        method=pseudo.get(b":method", method),
        scheme=pseudo[b":scheme"],
        authority=pseudo[b":authority"],
        path=pseudo[b":path"],
        headers=[h for h in headers if h[0][:1] != b":"],
    )


CLIENT_REQUEST = request("/one", "POST", x_dup="a", accept="*/*") + [(b"x-dup", b"b")]
CLIENT_TRAILERS = [(b"x-req-trailer", b"1"), (b"x-req-trailer", b"2")]
CLIENT_GETS = {3: request("/grpc"), 5: request("/204"), 7: request("/head", "HEAD")}


@dataclass
class Opened:
    proto: Spy
    wire: FakeTransport
    streams: dict[int, H2ClientStream]
    informational: list[ResponseHead]


async def open_client() -> Opened:
    """The sidecar's client: a POST with a body and trailers on stream 1, a GET on 3 and 5,
    a HEAD on 7 (h2 expects no body on its answer: `send_request_headers` must tell it the
    method)."""
    proto = Spy(client_side=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    informational: list[ResponseHead] = []
    one = proto.open_stream(head_of(CLIENT_REQUEST), end_stream=False)
    one.on_informational = informational.append
    await one.write(b"request body")
    await one.finish(CLIENT_TRAILERS)  # `send_stream_headers`: the client's trailers
    streams = {1: one}
    for sid, headers in CLIENT_GETS.items():
        streams[sid] = proto.open_stream(head_of(headers), end_stream=True)
    assert list(streams) == [s.stream_id for s in streams.values()]
    # Only the first request is h2's to send (h2's connection state machine opens on it).
    assert proto.h2_sent == [1]
    proto._flush_now()
    return Opened(proto, wire, streams, informational)


def respond_as_server(server: h2.connection.H2Connection) -> None:
    """An h2 server's answers to `open_client`'s requests, interleaved: on 1 a 103, the answer
    with repeated headers, a body in two frames, trailers; on 3 a gRPC trailers-only answer; on
    5 a 204 (HEADERS only); on 7 the HEAD's answer with a content-length and no body."""
    server.send_headers(1, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
    grpc = [(b"content-type", b"application/grpc"), (b"grpc-status", b"5")]
    server.send_headers(3, [(b":status", b"200"), *grpc, (b"grpc-message", b"m")], end_stream=True)
    dup = [(b"x-dup", b"a"), (b"x-dup", b"b"), (b"set-cookie", b"s=1"), (b"set-cookie", b"t=2")]
    server.send_headers(1, [(b":status", b"200"), *dup])
    server.send_headers(5, [(b":status", b"204")], end_stream=True)
    server.send_data(1, b"hello ")
    server.send_headers(7, [(b":status", b"200"), (b"content-length", b"10")])
    server.send_data(1, b"world")
    server.send_data(7, b"", end_stream=True)
    server.send_headers(
        1, [(b"grpc-status", b"0"), (b"x-t", b"1"), (b"x-t", b"2")], end_stream=True
    )


def frame_shapes(
    data: bytes, kinds: tuple[int, ...] = (HEADERS, DATA)
) -> list[tuple[int, int, int]]:
    return [(k, f, sid) for k, f, sid, _ in split_frames(data) if k in kinds]


async def record_server_bytes() -> tuple[bytes, bytes, dict[int, Answer]]:
    """An h2 server answering the sidecar's client: its bytes (main and a tail answering stream
    9), and what it read of the requests."""
    opened = await open_client()
    server = h2.connection.H2Connection(lib_config(False))
    server.initiate_connection()
    requests: dict[int, Answer] = {}
    sent = bytes(opened.wire.written)
    assert collect(server.receive_data(sent), requests) is None
    respond_as_server(server)
    main = server.data_to_send()
    opened.proto.data_received(main)
    opened.proto.open_stream(head_of(request("/tail")), end_stream=True)
    opened.proto._flush_now()
    assert collect(server.receive_data(bytes(opened.wire.written)[len(sent) :]), requests) is None
    server.send_headers(9, [(b":status", b"200")])
    server.send_data(9, b"tail", end_stream=True)
    return main, server.data_to_send(), requests


def oracle_client(data: bytes) -> tuple[dict[int, Answer], h2.connection.H2Connection]:
    conn = h2.connection.H2Connection(lib_config(True))
    conn.initiate_connection()
    conn.send_headers(1, CLIENT_REQUEST)
    conn.send_data(1, b"request body")
    conn.send_headers(1, CLIENT_TRAILERS, end_stream=True)
    for sid, headers in CLIENT_GETS.items():
        conn.send_headers(sid, headers, end_stream=True)
    answers: dict[int, Answer] = {}
    collect(conn.receive_data(data), answers)
    return answers, conn


SERVER_BYTES, SERVER_TAIL, SERVER_SAW = asyncio.run(record_server_bytes())
CLIENT_ORACLE, _CLIENT_ORACLE_CONN = oracle_client(SERVER_BYTES)
CLIENT_ORACLE_STATES = stream_states(_CLIENT_ORACLE_CONN)


def test_the_client_fast_path_sends_what_h2_sends() -> None:
    """`send_request_headers` and `send_stream_headers` (the client's trailers): the h2 server
    reads the requests as sent, repeated headers in order; the frames are shaped as h2's own
    client shapes them (HEADERS flags, END_STREAM on the HEADERS of a GET)."""
    assert SERVER_SAW[1].headers == CLIENT_REQUEST
    assert (SERVER_SAW[1].data, SERVER_SAW[1].trailers) == (b"request body", CLIENT_TRAILERS)
    for sid, headers in CLIENT_GETS.items():
        assert (SERVER_SAW[sid].headers, SERVER_SAW[sid].data, SERVER_SAW[sid].ended) == (
            headers,
            b"",
            True,
        )
    assert SERVER_SAW[9].headers == request("/tail")

    async def shapes() -> list[tuple[int, int, int]]:
        opened = await open_client()
        return frame_shapes(bytes(opened.wire.written))

    reference = h2.connection.H2Connection(lib_config(True))
    reference.initiate_connection()
    reference.send_headers(1, CLIENT_REQUEST)
    reference.send_data(1, b"request body")
    reference.send_headers(1, CLIENT_TRAILERS, end_stream=True)
    for sid, headers in CLIENT_GETS.items():
        reference.send_headers(sid, headers, end_stream=True)
    assert asyncio.run(shapes()) == frame_shapes(reference.data_to_send())


async def check_answers(opened: Opened, label: object = None) -> None:
    """What the sidecar's client streams got: the oracle's headers, bodies, trailers and ends;
    then stream 9 on the same connection."""
    streams = opened.streams
    async with asyncio.timeout(DEADLINE):
        heads = {sid: await s.response() for sid, s in streams.items()}
        bodies = {}
        for sid, s in streams.items():
            chunks = []
            while (chunk := await s.body.read()) is not None:
                chunks.append(chunk)
            bodies[sid] = b"".join(chunks)
    for sid, answer in CLIENT_ORACLE.items():
        assert answer.headers is not None and answer.ended
        status = int(dict(answer.headers)[b":status"])
        fields = [h for h in answer.headers if h[0][:1] != b":"]
        assert (heads[sid].status, heads[sid].headers) == (status, fields), (label, sid)
        assert bodies[sid] == answer.data, (label, sid)
        assert streams[sid].trailers == answer.trailers, (label, sid)
    assert [(h.status, h.headers) for h in opened.informational] == [
        (103, [(b"link", b"</a.css>; rel=preload")])
    ]
    assert heads[1].headers[:2] == [(b"x-dup", b"a"), (b"x-dup", b"b")]
    assert bodies[1] == b"hello world"
    assert streams[1].trailers == [(b"grpc-status", b"0"), (b"x-t", b"1"), (b"x-t", b"2")]
    assert streams[3].response_ended_with_head and dict(heads[3].headers)[b"grpc-status"] == b"5"
    assert heads[5].status == 204 and streams[5].response_ended_with_head
    assert heads[7].status == 200 and bodies[7] == b""
    proto = opened.proto
    tail = proto.open_stream(head_of(request("/tail")), end_stream=True)
    assert tail.stream_id == 9
    proto.data_received(SERVER_TAIL)
    async with asyncio.timeout(DEADLINE):
        assert (await tail.response()).status == 200
        assert await tail.body.read() == b"tail"
        assert await tail.body.read() is None
    assert not proto.closed


# HEADERS frames of the answers, in order: the 103 and the answer on 1, 3, 5, 7, 1's trailers.
CLIENT_FAST = [1, 3, 1, 5, 7, 1]


async def run_client(pieces: list[bytes], label: object = None) -> None:
    opened = await open_client()
    for piece in pieces:
        opened.proto.data_received(piece)
    assert not opened.proto.closed, label
    assert opened.proto.taken() == CLIENT_FAST, label
    assert stream_states(opened.proto.conn) == CLIENT_ORACLE_STATES, label
    await check_answers(opened, label)


async def test_answers_cut_at_every_byte_reach_the_client_streams_as_h2_reads_them() -> None:
    """An h2 server's answers (a 103, repeated headers, bodies, trailers, a trailers-only gRPC
    answer, a 204, a HEAD's answer) in two reads cut at every byte, the server's SETTINGS
    included: every HEADERS frame is the fast path's, h2's books are the oracle's, the streams
    get what h2 reads, and the connection serves the next stream."""
    for cut in range(1, len(SERVER_BYTES)):
        await run_client([SERVER_BYTES[:cut], SERVER_BYTES[cut:]], cut)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 60), max_size=60))
def test_answers_in_random_pieces(cuts: list[int]) -> None:
    asyncio.run(run_client(pieces_of(SERVER_BYTES, cuts), cuts))


# -- the sidecar's server on loopback, h2's client -----------------------------------------------


class Site:
    """The sidecar's HTTP/2 server on an ephemeral port: a Spy protocol and an `App` per
    connection."""

    def __init__(self) -> None:
        self.protos: list[Spy] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    def _protocol(self) -> Spy:
        proto = Spy(client_side=False, handler=App())
        self.protos.append(proto)
        return proto

    async def start(self) -> Site:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, LOOPBACK, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def proto(self, peer: Peer | RawPeer) -> Spy:
        """The server's end of `peer`'s connection."""
        here = peer.writer.get_extra_info("sockname")
        (proto,) = [p for p in self.protos if p.peer_address == here]
        return proto

    def app(self, peer: Peer | RawPeer) -> App:
        app = self.proto(peer).handler
        assert isinstance(app, App)
        return app

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for proto in self.protos:
            assert isinstance(proto.handler, App)
            proto.handler.release.set()
            if proto.transport is not None:
                proto.transport.abort()
        await self.server.wait_closed()


@pytest.fixture
async def site():
    s = await Site().start()
    try:
        yield s
    finally:
        await s.stop()


class Peer:
    """A client of h2's on a real connection (or raw frames written beside it): what it reads
    is folded into `answers` by stream; `received` keeps the raw bytes for the error tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(lib_config(True))
        self.conn.initiate_connection()
        self.answers: dict[int, Answer] = {}
        self.goaway: int | None = None
        self.closed = False
        self.received = bytearray()
        self.flush()

    @classmethod
    async def connect(cls, port: int) -> Peer:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    def flush(self) -> bytes:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
        return data

    def raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, sid: int, headers: Headers, end: bool = True, **shape: Any) -> bytes:
        """A request's HEADERS from h2, re-framed if `shape` says so (see `reshape`); returns
        what was written."""
        self.conn.send_headers(sid, headers, end_stream=end)
        data = self.conn.data_to_send()
        if shape:
            data = reshape(data, **shape)
        self.writer.write(data)
        return data

    async def until(self, condition: Callable[[], bool], what: str = "") -> None:
        async with asyncio.timeout(DEADLINE):
            while not condition():
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    assert condition(), f"connection closed before {what}"
                    return
                self.received += data
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    events = []  # (what comes after an error: the raw bytes tell)
                goaway = collect(events, self.answers)
                if goaway is not None:
                    self.goaway = goaway
                for event in events:
                    if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                self.flush()

    async def answer(self, sid: int) -> Answer:
        def done() -> bool:
            a = self.answers.get(sid)
            return a is not None and (a.ended or a.reset is not None)

        await self.until(done, f"the answer on stream {sid}")
        return self.answers[sid]

    async def get(self, sid: int, path: str = "/ok", **extra: str) -> Answer:
        self.send(sid, request(path, **extra))
        return await self.answer(sid)

    async def cut_off(self) -> None:
        await self.until(lambda: self.closed, "the server closed the connection")

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def peers(site: Site):
    opened: list[Peer] = []

    async def connect(warm: bool = True) -> Peer:
        peer = await Peer.connect(site.port)
        opened.append(peer)
        if warm:
            # The first HEADERS frame of a connection is h2's (its connection state machine
            # opens on it): one request first, so that what the test sends meets the fast path.
            assert status(await peer.get(1, "/warm")) == 200
            assert offered(site, peer, 1) == []
        return peer

    try:
        yield connect
    finally:
        for peer in opened:
            peer.close()


def status(answer: Answer) -> int:
    assert answer.headers is not None, answer
    return int(dict(answer.headers)[b":status"])


def offered(site: Site, peer: Peer | RawPeer, sid: int) -> list[bool]:
    """What the fast path answered for the HEADERS frames of stream `sid` on `peer`'s
    connection (frames with CONTINUATION, padding or priority are never offered)."""
    return [taken for s, taken in site.proto(peer).offered if s == sid]


# -- 2. and 3.: what the fast path leaves to h2 --------------------------------------------------


async def test_a_header_block_with_continuation_frames_arrives_whole(site, peers) -> None:
    """A header block in a HEADERS frame and two CONTINUATION frames: h2 reads it (the fast path
    is not offered it), the handler gets every header in order, and the fast path takes the
    next request on the same connection."""
    peer = await peers()
    app = site.app(peer)
    sent = request("/ok", x_a="1", x_dup="1") + [(b"x-dup", b"2"), (b"x-b", b"b" * 300)]
    wire = peer.send(3, sent, pieces=3)
    assert [k for k, *_ in split_frames(wire)] == [HEADERS, CONTINUATION, CONTINUATION]
    assert status(await peer.answer(3)) == 200
    assert app.seen[3].fields == sent
    assert offered(site, peer, 3) == []
    assert status(await peer.get(5, "/ok", x_next="1")) == 200
    assert app.seen[5].fields[-1] == (b"x-next", b"1")
    assert offered(site, peer, 5) == [True]


async def test_a_block_h2_cuts_itself_and_an_answer_cut_by_the_sidecar(site, peers) -> None:
    """h2 cuts a request with a 20 000-byte value into HEADERS and CONTINUATION (before the
    server's SETTINGS, a frame carries 16 384 bytes); the answer's 40 000-byte header and trailer
    leave the sidecar in CONTINUATION frames (`_headers_frames`), which h2 reads back whole."""
    peer = await peers(warm=False)
    app = site.app(peer)
    big = request("/big", x_big="y" * 20_000)
    wire = peer.send(1, big)
    assert [k for k, *_ in split_frames(wire)][-2:] == [HEADERS, CONTINUATION]
    answer = await peer.answer(1)
    assert app.seen[1].fields == big
    assert status(answer) == 200 and dict(answer.headers)[b"x-big"] == App.BIG
    assert answer.trailers == [(b"x-big-trailer", App.BIG)] and answer.data == b"echo:"
    shapes = [(k, f) for k, f, sid, _ in split_frames(bytes(peer.received)) if sid == 1]
    assert shapes == [
        (HEADERS, 0),
        (CONTINUATION, 0),
        (CONTINUATION, END_HEADERS),
        (DATA, 0),
        (HEADERS, END_STREAM),
        (CONTINUATION, 0),
        (CONTINUATION, END_HEADERS),
    ]
    assert status(await peer.get(3, "/ok")) == 200 and offered(site, peer, 3) == [True]


@pytest.mark.parametrize(
    "shape",
    [{"pad": 0}, {"pad": 9}, {"priority": True}, {"pad": 3, "priority": True}],
    ids=["padded-0", "padded-9", "priority", "padded-priority"],
)
async def test_padded_and_prioritised_headers_are_h2s_and_served(site, peers, shape) -> None:
    """HEADERS frames with padding or the PRIORITY flag (a request, and trailers after a body):
    h2 reads them, the handler sees the request and its trailers, and the fast path takes the
    next request on the connection."""
    peer = await peers()
    app = site.app(peer)
    sent = request("/trailers", "POST", x_shape="1")
    peer.send(3, sent, end=False, **shape)
    peer.conn.send_data(3, b"body")
    peer.flush()
    peer.send(3, [(b"x-trailer", b"in")], end=True, **shape)
    answer = await peer.answer(3)
    assert status(answer) == 200 and answer.data == b"echo:body"
    assert answer.trailers == [(b"x-trailer", b"t1"), (b"x-trailer", b"t2")]
    seen = app.seen[3]
    assert (seen.fields, seen.body, seen.trailers) == (sent, b"body", [(b"x-trailer", b"in")])
    get = request("/ok", x_shape="2")
    peer.send(5, get, end=True, **shape)
    assert status(await peer.answer(5)) == 200 and app.seen[5].fields == get
    assert offered(site, peer, 3) == offered(site, peer, 5) == []
    assert status(await peer.get(7, "/ok")) == 200 and offered(site, peer, 7) == [True]


# -- 4., 5., 6., 7., 9. on the sidecar's server --------------------------------------------------


async def test_trailers_both_ways_and_a_grpc_trailers_only_answer(site, peers) -> None:
    """A request's body then trailers (HEADERS with END_STREAM after DATA, the fast path's
    trailers branch) reach the handler; the answer's trailers (`send_stream_headers`) reach h2;
    a gRPC trailers-only answer is one HEADERS frame with END_STREAM carrying :status and
    grpc-status."""
    peer = await peers()
    app = site.app(peer)
    peer.send(3, request("/trailers", "POST", content_type="application/grpc"), end=False)
    peer.conn.send_data(3, b"part one,")
    peer.conn.send_data(3, b" part two")
    trailers = [(b"grpc-timeout", b"1S"), (b"x-sum", b"a"), (b"x-sum", b"b")]
    peer.conn.send_headers(3, trailers, end_stream=True)
    peer.flush()
    answer = await peer.answer(3)
    seen = app.seen[3]
    assert seen.body == b"part one, part two"
    assert seen.trailers == [(b"grpc-timeout", b"1S"), (b"x-sum", b"a"), (b"x-sum", b"b")]
    assert answer.data == b"echo:part one, part two"
    assert answer.trailers == [(b"x-trailer", b"t1"), (b"x-trailer", b"t2")] and answer.ended
    assert offered(site, peer, 3) == [True, True]

    before = len(peer.received)
    answer = await peer.get(5, "/grpc-only", content_type="application/grpc")
    assert answer.headers == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"5"),
        (b"grpc-message", b"nope"),
    ]
    assert answer.ended and answer.data == b"" and answer.trailers is None
    frames = [(k, f) for k, f, sid, _ in split_frames(bytes(peer.received[before:])) if sid == 5]
    assert frames == [(HEADERS, END_HEADERS | END_STREAM)]
    assert status(await peer.get(7, "/ok")) == 200


@pytest.mark.parametrize("path", ["/204", "/304"])
async def test_headers_only_request_and_headers_only_answer(site, peers, path) -> None:
    """A GET with END_STREAM on its HEADERS (no DATA frame): the handler's body is empty and
    ended at once; a 204 / 304 answered with end=True is one HEADERS frame with END_STREAM."""
    peer = await peers()
    app = site.app(peer)
    before = len(peer.received)
    answer = await peer.get(3, path, if_none_match='"v1"')
    assert app.seen[3].body == b"" and app.seen[3].trailers is None
    assert app.seen[3].fields[-1] == (b"if-none-match", b'"v1"')
    assert status(answer) == int(path[1:]) and answer.ended and answer.data == b""
    frames = [(k, f) for k, f, sid, _ in split_frames(bytes(peer.received[before:])) if sid == 3]
    assert frames == [(HEADERS, END_HEADERS | END_STREAM)]
    assert offered(site, peer, 3) == [True]
    assert status(await peer.get(5, "/ok")) == 200


@pytest.mark.parametrize("end", [False, True], ids=["open", "half-closed"])
async def test_rst_stream_in_the_same_segment_as_the_headers(site, peers, end) -> None:
    """HEADERS and RST_STREAM (CANCEL) in one write: the fast path opens the stream, h2 resets
    it before the handler has run; the handler sees the reset, nothing is answered on the
    stream, and the connection serves the next one."""
    peer = await peers()
    app = site.app(peer)
    peer.conn.send_headers(3, request("/reset-race", "POST"), end_stream=end)
    peer.conn.reset_stream(3, h2.errors.ErrorCodes.CANCEL)
    before = len(peer.received)
    peer.flush()  # one write, one segment
    assert offered(site, peer, 3) == []  # (not read yet)
    assert status(await peer.get(5, "/ok")) == 200
    await app.wait(lambda: 3 in app.done)
    assert offered(site, peer, 3) == [True]
    seen = app.seen[3]
    assert seen.error is not None and "reset" in seen.error
    assert seen.fields == request("/reset-race", "POST")
    assert [sid for _, _, sid, _ in split_frames(bytes(peer.received[before:]))].count(3) == 0
    assert not site.proto(peer).closed
    assert status(await peer.get(7, "/ok")) == 200


async def test_interleaved_streams_each_get_their_own_body(site, peers) -> None:
    """HEADERS of streams 3, 5 and 7 in one write, then their DATA frames interleaved (and one
    stream's trailers in the middle): each handler gets its own body."""
    peer = await peers()
    app = site.app(peer)
    for sid in (3, 5, 7):
        path = "/trailers" if sid == 5 else f"/s{sid}"
        peer.conn.send_headers(sid, request(path, "POST", x_sid=str(sid)))
    peer.flush()
    for i in range(4):
        for sid in (7, 3, 5):
            peer.conn.send_data(sid, f"{sid}:{i};".encode())
    peer.conn.send_headers(5, [(b"x-end", b"5")], end_stream=True)
    peer.conn.end_stream(3)
    peer.conn.end_stream(7)
    peer.flush()
    answers = {sid: await peer.answer(sid) for sid in (3, 5, 7)}
    for sid in (3, 5, 7):
        body = "".join(f"{sid}:{i};" for i in range(4)).encode()
        assert app.seen[sid].body == body and answers[sid].data == b"echo:" + body
        assert app.seen[sid].fields[-1] == (b"x-sid", str(sid).encode())
    assert app.seen[5].trailers == [(b"x-end", b"5")] and app.seen[3].trailers is None
    assert [s for s, taken in site.proto(peer).offered if taken][-4:] == [3, 5, 7, 5]


async def test_informational_answers_before_the_final_one(site, peers) -> None:
    """A 103 through `informational` and 100 and 103 through `respond` (h2's send_headers),
    then the final answer through `send_stream_headers`: h2 reads them in order. A 100-continue
    for a request whose body waits for it."""
    peer = await peers()
    answer = await peer.get(3, "/103")
    assert answer.informational == [[(b":status", b"103"), (b"link", b"</a.css>; rel=preload")]]
    assert status(answer) == 200 and answer.ended
    answer = await peer.get(5, "/1xx")
    assert [dict(h)[b":status"] for h in answer.informational] == [b"100", b"103"]
    assert answer.informational[1][1] == (b"link", b"</b.js>; rel=preload")
    assert status(answer) == 200 and answer.data == b"echo:"

    peer.send(7, request("/continue", "POST", expect="100-continue"), end=False)
    await peer.until(lambda: 7 in peer.answers and peer.answers[7].informational, "100")
    assert peer.answers[7].informational == [[(b":status", b"100")]]
    assert peer.answers[7].headers is None  # the final answer waits for the body
    peer.conn.send_data(7, b"the body", end_stream=True)
    peer.flush()
    answer = await peer.answer(7)
    assert status(answer) == 200 and answer.data == b"echo:the body"


# -- 8. errors the fast path must still catch, as h2 catches them --------------------------------


class RawPeer:
    """Hand-built frames on a real connection; what comes back is kept raw."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = bytearray()
        self.closed = False

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        return split_frames(bytes(self.received), whole=False)

    def ended(self, sid: int) -> bool:
        return any(
            s == sid and (k == RST_STREAM or (k in (HEADERS, DATA) and f & END_STREAM))
            for k, f, s, _ in self.frames()
        )

    async def until(self, condition: Callable[[], bool], what: str = "") -> None:
        async with asyncio.timeout(DEADLINE):
            while not condition():
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.closed = True
                    assert condition(), f"connection closed before {what}"
                    return
                self.received += data

    def close(self) -> None:
        self.writer.close()


def headers_frame(enc: hpack.Encoder, sid: int, headers: Headers, flags: int) -> bytes:
    return frame(HEADERS, flags, sid, enc.encode(headers))


EH, ES = END_HEADERS, END_STREAM
CANCEL = 8
SYNC = [(b"x-sync", b"in-the-table")]  # indexed by the encoder: the decoders must keep up
Steps = list[tuple[bytes, int | None]]  # bytes to write, the stream whose answer to wait for


def _closed_both_ways(e: hpack.Encoder) -> Steps:
    return [
        (headers_frame(e, 3, request("/ok"), EH | ES), 3),
        (headers_frame(e, 3, request("/again") + SYNC, EH | ES), None),
    ]


def _reset_by_the_server(e: hpack.Encoder) -> Steps:
    return [
        (headers_frame(e, 3, request("/reset", "POST"), EH), 3),
        (headers_frame(e, 3, SYNC, EH | ES), None),  # trailers, after our RST_STREAM
    ]


def _oversize(extra: int) -> Callable[[hpack.Encoder], Steps]:
    """A request whose one HEADERS frame carries a block of the server's bound (twice the
    header list size) plus `extra` bytes, without CONTINUATION."""

    def build(e: hpack.Encoder) -> Steps:
        bound = 2 * H2Protocol(client_side=False).header_list_size
        plain = hpack.Encoder()
        size = bound - 200
        while True:
            block = plain.encode(request("/big") + [(b"x-big", b"a" * size)], huffman=False)
            if len(block) >= bound + extra:
                break
            size += 1
        assert len(block) == bound + extra
        return [(frame(HEADERS, EH | ES, 3, block), None)]

    return build


# name → (steps after a first request on stream 1, the answer RFC 9113 asks for and h2 gives).
# The first HEADERS frame of a connection never meets the fast path (h2's connection state
# machine opens on it): here every frame under test comes after one.
SERVER_ERRORS: dict[str, tuple[Callable[[hpack.Encoder], Steps], tuple]] = {
    "HEADERS on an even stream (5.1.1)": (
        lambda e: [(headers_frame(e, 2, request("/ok"), EH | ES), None)],
        ("goaway", PROTOCOL_ERROR),
    ),
    "a stream id lower than the last one (5.1.1)": (
        lambda e: [
            (headers_frame(e, 5, request("/ok"), EH | ES), 5),
            (headers_frame(e, 3, request("/ok"), EH | ES), None),
        ],
        ("goaway", PROTOCOL_ERROR),
    ),
    "a second header block without END_STREAM (8.1)": (
        lambda e: [
            (headers_frame(e, 3, request("/hold", "POST"), EH), None),
            (headers_frame(e, 3, [(b"x-not", b"trailers")], EH), None),
        ],
        ("goaway", PROTOCOL_ERROR),  # RFC: a malformed request; h2 makes it the connection's
    ),
    "HEADERS on a half-closed (remote) stream (5.1)": (
        lambda e: [
            (headers_frame(e, 3, request("/hold"), EH | ES), None),
            (headers_frame(e, 3, SYNC, EH | ES), None),
        ],
        ("rst", 3, [STREAM_CLOSED]),
    ),
    "HEADERS on a stream closed both ways (5.1)": (
        _closed_both_ways,
        ("goaway", STREAM_CLOSED),
    ),
    "HEADERS on a stream the client reset (5.1)": (
        lambda e: [
            (
                headers_frame(e, 3, request("/hold", "POST"), EH)
                + frame(RST_STREAM, 0, 3, struct.pack(">I", CANCEL))
                + headers_frame(e, 3, SYNC, EH | ES),
                None,
            )
        ],
        ("rst", 3, [STREAM_CLOSED]),
    ),
    "trailers on a stream the server reset (5.1, 5.4.2)": (
        _reset_by_the_server,
        ("rst", 3, [CANCEL, STREAM_CLOSED]),  # ours (/reset), then h2's answer to the trailers
    ),
    "trailers with a pseudo-header (8.1)": (
        lambda e: [
            (
                headers_frame(e, 3, request("/ok", "POST"), EH)
                + frame(DATA, 0, 3, b"x")
                + headers_frame(e, 3, [(b":path", b"/x")], EH | ES),
                None,
            )
        ],
        ("goaway", PROTOCOL_ERROR),
    ),
    "a request that is an informational response (8.1)": (
        lambda e: [(headers_frame(e, 3, [(b":status", b"103")], EH), None)],
        ("goaway", PROTOCOL_ERROR),
    ),
    "content-length not a number (8.1.1)": (
        lambda e: [(headers_frame(e, 3, request("/ok", "POST", content_length="1e3"), EH), None)],
        ("goaway", PROTOCOL_ERROR),
    ),
    "an HPACK index past the tables (RFC 7541 2.3.3)": (
        lambda e: [(frame(HEADERS, EH | ES, 3, b"\x82\x86\x84\xff\xe9\x06"), None)],
        ("goaway", PROTOCOL_ERROR),  # RFC 9113 4.3: COMPRESSION_ERROR; h2 says PROTOCOL_ERROR
    ),
    "HPACK index 0 (RFC 7541 6.1)": (
        lambda e: [(frame(HEADERS, EH | ES, 3, b"\x82\x86\x80"), None)],
        ("goaway", PROTOCOL_ERROR),  # (the same)
    ),
    "an HPACK index past the tables in trailers": (
        lambda e: [
            (
                headers_frame(e, 3, request("/hold", "POST"), EH)
                + frame(HEADERS, EH | ES, 3, b"\xff\xe9\x06"),
                None,
            )
        ],
        ("goaway", PROTOCOL_ERROR),
    ),
    "a block one byte over the bound, in one HEADERS frame": (
        _oversize(1),
        ("goaway", ENHANCE_YOUR_CALM),
    ),
    "a block at the bound decoding past twice the header list size": (
        _oversize(0),
        ("goaway", ENHANCE_YOUR_CALM),
    ),
}
OVERSIZE = {name for name in SERVER_ERRORS if "bound" in name}  # the sidecar's rule, not h2's


def oracle_answer(chunks: list[bytes]) -> tuple[int | None, dict[int, int]]:
    """h2 as a server, answering as `App` does (a request answered once it has ended, /hold
    never, /reset reset at once), fed the same chunks: its GOAWAY and RST_STREAM codes."""
    conn = h2.connection.H2Connection(lib_config(False))
    conn.initiate_connection()
    out = bytearray(conn.data_to_send())
    paths: dict[int, bytes] = {}
    for chunk in chunks:
        try:
            events = conn.receive_data(chunk)
        except h2.exceptions.ProtocolError:
            out += conn.data_to_send()
            break
        for event in events:
            sid = getattr(event, "stream_id", 0)
            ended = isinstance(event, h2.events.StreamEnded)
            if isinstance(event, h2.events.RequestReceived):
                paths[sid] = dict(event.headers)[b":path"]
                if paths[sid] == b"/reset":
                    conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    paths[sid] = b"/hold"
            if ended and not paths.get(sid, b"/hold").startswith(b"/hold"):
                conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
        out += conn.data_to_send()
    return errors_in(bytes(out))


@pytest.mark.parametrize("name", list(SERVER_ERRORS))
async def test_errors_in_header_blocks_are_answered_as_h2_answers_them(site, name) -> None:
    build, expected = SERVER_ERRORS[name]
    encoder = hpack.Encoder()
    warm = PREFACE + frame(4, 0, 0) + headers_frame(encoder, 1, request("/warm"), EH | ES)
    steps: Steps = [(warm, 1), *build(encoder)]
    goaway, resets = oracle_answer([chunk for chunk, _ in steps])
    if expected[0] == "goaway":
        if name not in OVERSIZE:
            assert (goaway, resets) == (expected[1], {}), "the oracle"
    else:
        assert (goaway, resets) == (None, {expected[1]: expected[2]}), "the oracle"

    peer = await RawPeer.connect(site.port)
    try:
        for chunk, wait in steps:
            peer.send(chunk)
            if wait is not None:
                await peer.until(lambda: peer.ended(wait), f"the answer on {wait}")  # noqa: B023
        if expected[0] == "goaway":
            await peer.until(lambda: peer.closed, "the connection's end")
            assert errors_in(bytes(peer.received)) == (expected[1], {})
            assert site.proto(peer).closed
        else:
            sid = expected[1]
            n = len(expected[2])
            await peer.until(
                lambda: len(errors_in(bytes(peer.received))[1].get(sid, [])) >= n,
                f"RST_STREAM on {sid}",
            )
            assert errors_in(bytes(peer.received)) == (None, {sid: expected[2]})
            # The connection goes on, its HPACK table in step: the block was decoded.
            peer.send(headers_frame(encoder, 9, request("/ok") + SYNC, EH | ES))
            await peer.until(lambda: peer.ended(9), "the next answer")
            assert site.app(peer).seen[9].fields == request("/ok") + SYNC
            assert errors_in(bytes(peer.received)) == (None, {sid: expected[2]})
    finally:
        peer.close()
    assert [s for s, _ in site.proto(peer).offered if s != 1]  # it met the fast path
    if expected[0] == "goaway":  # the server goes on: a new connection is served
        fresh = await RawPeer.connect(site.port)
        try:
            first = headers_frame(hpack.Encoder(), 1, request("/"), EH | ES)
            fresh.send(PREFACE + frame(4, 0, 0) + first)
            await fresh.until(lambda: fresh.ended(1), "an answer on a new connection")
            assert errors_in(bytes(fresh.received)) == (None, {})
        finally:
            fresh.close()


def answer_block(e: hpack.Encoder, sid: int, headers: Headers, flags: int) -> bytes:
    return frame(HEADERS, flags, sid, e.encode(headers))


OK = [(b":status", b"200")]

# name → (the server's frames after its SETTINGS, given its encoder; the client's answer:
# GOAWAY code or RST_STREAM codes). The sidecar's client has opened streams 1 and 3 (GETs);
# after the frames under test come an answer on 3 (which a stream error leaves to be read).
CLIENT_ERRORS: dict[str, tuple[Callable[[hpack.Encoder], bytes], tuple]] = {
    "an informational answer with END_STREAM (8.1)": (
        lambda e: answer_block(e, 1, [(b":status", b"103")], EH | ES),
        ("goaway", PROTOCOL_ERROR),
    ),
    "an informational answer after the final one (8.1)": (
        lambda e: answer_block(e, 1, OK, EH) + answer_block(e, 1, [(b":status", b"103")], EH),
        ("goaway", PROTOCOL_ERROR),
    ),
    "a second header block without END_STREAM (8.1)": (
        lambda e: answer_block(e, 1, OK, EH) + answer_block(e, 1, [(b"x-t", b"1")], EH),
        ("goaway", PROTOCOL_ERROR),
    ),
    "trailers with :status (8.1)": (
        lambda e: answer_block(e, 1, OK, EH) + answer_block(e, 1, OK, EH | ES),
        ("goaway", PROTOCOL_ERROR),
    ),
    "an answer without :status (8.3.2)": (
        lambda e: answer_block(e, 1, [(b"x-a", b"1")], EH | ES),
        ("goaway", PROTOCOL_ERROR),
    ),
    "an upper-case header name (8.2.1)": (
        lambda e: answer_block(e, 1, [*OK, (b"X-Upper", b"1")], EH | ES),
        ("goaway", PROTOCOL_ERROR),
    ),
    "content-length not a number (8.1.1)": (
        lambda e: answer_block(e, 1, [*OK, (b"content-length", b"ten")], EH | ES),
        ("goaway", PROTOCOL_ERROR),
    ),
    "an answer on a stream the client never opened (5.1.1)": (
        lambda e: answer_block(e, 5, OK, EH | ES),
        ("goaway", PROTOCOL_ERROR),
    ),
    "HEADERS after the answer ended (5.1)": (
        lambda e: answer_block(e, 1, OK, EH | ES) + answer_block(e, 1, OK, EH | ES),
        ("goaway", STREAM_CLOSED),
    ),
    "an HPACK index past the tables": (
        lambda e: frame(HEADERS, EH | ES, 1, b"\x88\xff\xe9\x06"),
        ("goaway", PROTOCOL_ERROR),  # RFC 9113 4.3: COMPRESSION_ERROR; h2 says PROTOCOL_ERROR
    ),
}


def oracle_client_answer(data: bytes) -> tuple[int | None, dict[int, list[int]]]:
    conn = h2.connection.H2Connection(lib_config(True))
    conn.initiate_connection()
    for sid in (1, 3):
        conn.send_headers(sid, request(f"/s{sid}"), end_stream=True)
    conn.data_to_send()
    try:
        conn.receive_data(data)
    except h2.exceptions.ProtocolError:
        pass
    return errors_in(conn.data_to_send())


@pytest.mark.parametrize("name", list(CLIENT_ERRORS))
async def test_errors_in_answers_are_answered_as_h2_answers_them(name) -> None:
    """The client's fast path: what is wrong in an answer's header block ends the connection
    with the GOAWAY h2 would send; the streams learn it (a reset, not a hang)."""
    build, expected = CLIENT_ERRORS[name]
    encoder = hpack.Encoder()
    data = frame(4, 0, 0) + build(encoder) + answer_block(encoder, 3, OK, EH | ES)
    assert oracle_client_answer(data) == (expected[1], {}), "the oracle"
    proto = Spy(client_side=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    streams = [proto.open_stream(head_of(request(f"/s{sid}")), end_stream=True) for sid in (1, 3)]
    proto._flush_now()
    sent = len(wire.written)
    proto.data_received(data)
    assert errors_in(bytes(wire.written[sent:])) == (expected[1], {})
    assert proto.closed and wire.closing
    assert [sid for sid, _ in proto.offered][:1] in ([1], [5])  # it met the fast path
    async with asyncio.timeout(DEADLINE):
        for stream in streams:
            if stream.remote_done and stream.reset_error is None:
                continue  # answered whole before the error (HEADERS after the answer ended)
            with pytest.raises(StreamReset):
                await stream.response()
                await stream.body.read()
    assert streams[1].reset_error is not None  # its answer came after the error: not read


async def test_an_answer_on_a_stream_the_client_reset_is_h2s_and_the_others_go_on() -> None:
    """The sidecar reset stream 1 (CANCEL) and the server's answer crossed it: h2 takes it (the
    fast path knows no such stream), decodes it (the HPACK table stays in step: the answer on
    3 refers to it), answers as h2 answers, and stream 3 gets its answer."""
    encoder = hpack.Encoder()
    sync = [(b"x-sync", b"in-the-table")]
    data = (
        frame(4, 0, 0)
        + answer_block(encoder, 1, [*OK, *sync], EH | ES)
        + answer_block(encoder, 3, [*OK, *sync], EH | ES)
    )
    oracle = h2.connection.H2Connection(lib_config(True))
    oracle.initiate_connection()
    for sid in (1, 3):
        oracle.send_headers(sid, request(f"/s{sid}"), end_stream=True)
    oracle.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    oracle.data_to_send()
    oracle.receive_data(data)
    expected = errors_in(oracle.data_to_send())

    proto = Spy(client_side=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    one, three = (
        proto.open_stream(head_of(request(f"/s{sid}")), end_stream=True) for sid in (1, 3)
    )
    one.reset(h2.errors.ErrorCodes.CANCEL)
    proto._flush_now()
    sent = len(wire.written)
    proto.data_received(data)
    assert errors_in(bytes(wire.written[sent:])) == expected
    assert expected[0] is None and not proto.closed
    async with asyncio.timeout(DEADLINE):
        head = await three.response()
        assert await three.body.read() is None
    assert (head.status, head.headers) == (200, sync)
    assert proto.offered == [(1, False), (3, True)]


async def test_an_informational_answer_with_a_bad_content_length_is_refused_as_h2_does() -> None:
    """h2 checks the content-length of every header block it receives, a 1xx's too
    (`H2Stream.receive_headers` calls `_initialize_content_length` before telling informational
    answers apart): `content-length: ten` on a 103 is a PROTOCOL_ERROR there, and in the fast
    path (which once skipped the check for a 1xx and handed the 103 on)."""
    encoder = hpack.Encoder()
    data = (
        frame(4, 0, 0)
        + answer_block(encoder, 1, [(b":status", b"103"), (b"content-length", b"ten")], EH)
        + answer_block(encoder, 1, OK, EH | ES)
    )
    expected = oracle_client_answer(data)
    proto = Spy(client_side=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    for sid in (1, 3):
        proto.open_stream(head_of(request(f"/s{sid}")), end_stream=True)
    proto._flush_now()
    sent = len(wire.written)
    proto.data_received(data)
    assert expected == (PROTOCOL_ERROR, {})
    assert errors_in(bytes(wire.written[sent:])) == expected


# -- the sidecar's client on loopback, h2's server -----------------------------------------------


class LibServer(asyncio.Protocol):
    """h2's server, answering each request once it has ended, by path (see `_answer`)."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(lib_config(False))
        self.requests: dict[int, Answer] = {}
        self.answered: set[int] = set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.write()

    def write(self, data: bytes | None = None) -> None:
        assert self.transport is not None
        data = self.conn.data_to_send() if data is None else data
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def headers(self, sid: int, headers: Headers, end: bool = False, **shape: Any) -> None:
        self.write()
        self.conn.send_headers(sid, headers, end_stream=end)
        data = self.conn.data_to_send()
        self.write(reshape(data, **shape) if shape else data)

    def data_received(self, data: bytes) -> None:
        events = self.conn.receive_data(data)
        collect(events, self.requests)
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        for sid, request in self.requests.items():
            if request.ended and sid not in self.answered:
                self.answered.add(sid)
                self._answer(sid, dict(request.headers or [])[b":path"], request.data)
        self.write()

    def _answer(self, sid: int, path: bytes, body: bytes) -> None:
        """/cont: the answer's header block and trailers in CONTINUATION frames; /padded,
        /priority: its HEADERS frames padded, with the PRIORITY flag; /grpc-only: trailers
        only; /204, /304: HEADERS only; /1xx: 100 and 103 first; /rst: HEADERS and RST_STREAM
        in one write; otherwise 200, the body echoed."""
        shape: dict[str, Any] = {
            b"/cont": {"pieces": 3},
            b"/padded": {"pad": 5},
            b"/priority": {"priority": True},
        }.get(path, {})
        answer = [*OK, (b"x-dup", b"a"), (b"x-dup", b"b"), (b"x-path", path)]
        if path == b"/grpc-only":
            grpc = [(b"content-type", b"application/grpc"), (b"grpc-status", b"7")]
            self.headers(sid, [*OK, *grpc, (b"grpc-message", b"denied")], end=True)
            return
        if path in (b"/204", b"/304"):
            self.headers(sid, [(b":status", path[1:]), (b"etag", b'"v1"')], end=True)
            return
        if path == b"/1xx":
            self.headers(sid, [(b":status", b"100")])
            self.headers(sid, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
        if path == b"/rst":
            self.conn.send_headers(sid, answer)
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.write()  # one write: HEADERS and RST_STREAM in one segment
            return
        self.headers(sid, answer, **shape)
        self.conn.send_data(sid, b"echo:" + body)
        self.headers(sid, [(b"x-t", b"1"), (b"x-t", b"2")], end=True, **shape)


@pytest.fixture
async def upstream():
    """h2's server on an ephemeral port, and a connection of the sidecar's client to it."""
    loop = asyncio.get_running_loop()
    servers: list[LibServer] = []

    def make() -> LibServer:
        servers.append(LibServer())
        return servers[-1]

    server = await loop.create_server(make, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    transport, proto = await loop.create_connection(lambda: Spy(client_side=True), LOOPBACK, port)
    try:
        yield proto, servers
    finally:
        transport.abort()
        server.close()
        for s in servers:
            if s.transport is not None:
                s.transport.abort()
        await server.wait_closed()


@dataclass
class Fetched:
    head: ResponseHead
    informational: list[ResponseHead]
    body: bytes
    trailers: Headers | None
    ended_with_head: bool


async def fetch(proto: Spy, path: str, method: str = "GET", body: bytes = b"", **extra: str):
    informational: list[ResponseHead] = []
    stream = proto.open_stream(head_of(request(path, method, **extra)), end_stream=not body)
    stream.on_informational = informational.append
    async with asyncio.timeout(DEADLINE):
        if body:
            await stream.write(body)
            await stream.finish([(b"x-req-trailer", b"1")])
        head = await stream.response()
        chunks = []
        while (chunk := await stream.body.read()) is not None:
            chunks.append(chunk)
    return Fetched(
        head, informational, b"".join(chunks), stream.trailers, stream.response_ended_with_head
    )


async def test_the_client_reads_answers_h2_shapes_any_way(upstream) -> None:
    """Answers in HEADERS and CONTINUATION frames, padded HEADERS, HEADERS with the PRIORITY
    flag (h2's to read, trailers too), and plain ones (the fast path's): every header in order,
    the body, the trailers; the fast path takes what follows on the connection."""
    proto, servers = upstream
    first = await fetch(proto, "/ok")  # (the first request of a connection is h2's to send)
    assert first.head.status == 200
    for path in ("/cont", "/padded", "/priority", "/ok"):
        got = await fetch(proto, path, "POST", b"payload", x_path=path)
        assert got.head.status == 200
        assert got.head.headers == [(b"x-dup", b"a"), (b"x-dup", b"b"), (b"x-path", path.encode())]
        assert got.body == b"echo:payload"
        assert got.trailers == [(b"x-t", b"1"), (b"x-t", b"2")]
    (server,) = servers
    for sid, path in ((3, "/cont"), (5, "/padded"), (7, "/priority"), (9, "/ok")):
        seen = server.requests[sid]
        assert seen.headers == request(path, "POST", x_path=path)
        assert (seen.data, seen.trailers) == (b"payload", [(b"x-req-trailer", b"1")])
    assert [sid for sid, taken in proto.offered if taken] == [1, 1, 9, 9]  # head and trailers
    assert not proto.closed


async def test_the_client_reads_trailers_only_headers_only_and_informational_answers(
    upstream,
) -> None:
    proto, _ = upstream
    assert (await fetch(proto, "/ok")).head.status == 200
    got = await fetch(proto, "/grpc-only", content_type="application/grpc")
    assert got.head.status == 200 and got.ended_with_head
    assert got.head.headers == [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"7"),
        (b"grpc-message", b"denied"),
    ]
    assert got.body == b"" and got.trailers is None
    for status_code in (204, 304):
        got = await fetch(proto, f"/{status_code}")
        assert (got.head.status, got.head.headers) == (status_code, [(b"etag", b'"v1"')])
        assert got.ended_with_head and got.body == b""
    got = await fetch(proto, "/1xx", "POST", b"body")
    assert [(h.status, h.headers) for h in got.informational] == [
        (100, []),
        (103, [(b"link", b"</a.css>; rel=preload")]),
    ]
    assert got.head.status == 200 and got.body == b"echo:body"
    assert got.trailers == [(b"x-t", b"1"), (b"x-t", b"2")]
    assert not proto.closed and all(taken for _, taken in proto.offered)


async def test_rst_stream_right_after_the_answers_headers(upstream) -> None:
    """The server's HEADERS and RST_STREAM in one segment: the stream has its head, then its
    body read fails with the reset; the connection serves the next stream."""
    proto, _ = upstream
    assert (await fetch(proto, "/ok")).head.status == 200
    stream = proto.open_stream(head_of(request("/rst")), end_stream=True)
    async with asyncio.timeout(DEADLINE):
        head = await stream.response()
        with pytest.raises(StreamReset, match="INTERNAL_ERROR"):
            await stream.body.read()
    assert head.status == 200 and head.headers[-1] == (b"x-path", b"/rst")
    assert (stream.stream_id, True) in proto.offered
    got = await fetch(proto, "/ok", "POST", b"after")
    assert got.body == b"echo:after" and not proto.closed
