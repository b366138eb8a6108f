"""The shared ended empty body (`sidecar.http.exchange.EMPTY_BODY`) on HTTP/2 request streams.

- A request whose header block carries END_STREAM (a GET; a bodyless POST), taken by the fast
  path (`_take_headers`) or by h2's events (a block with a priority), gets `EMPTY_BODY` and is
  done at its remote end; a request with a body, and a CONNECT even with END_STREAM (its body is
  the tunnel), gets a `Body` of its own, and so does every client stream.
- Nothing writes to the shared body, whatever befalls its streams: answered, held and reset by
  the client (before and after the answer), sent DATA and trailers after END_STREAM (h2 resets
  the stream), reset locally, a GOAWAY, the connection lost. Every attribute is checked after
  each, across many requests on several connections.
- A reset stream with the shared body is still seen as reset (`cancelled`, `reset_error`), and
  its body's `error` stays None, as it stayed on an ended body of its own (`Body.abort` leaves an
  ended body as it is): the router's `exchange_gone` answers as before.
"""

from __future__ import annotations

import asyncio
from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

from sidecar.http.exchange import _NOT_FED, EMPTY_BODY, Body, RequestHead, ResponseHead
from sidecar.http.h2 import H2Protocol, H2ServerStream
from tests.attack import DATA, END_HEADERS, END_STREAM, HEADERS, FakeTransport, frame
from tests.test_h2_cuts import _until


def pristine() -> None:
    body = EMPTY_BODY
    assert body._chunks is _NOT_FED and isinstance(body._chunks, deque) and not body._chunks
    assert body._waiter is None
    assert body.buffered == 0
    assert body.ended is True and body.at_end is True
    assert body.trailers is None
    assert body.error is None
    assert body.on_consumed is None
    assert body.reads == 0
    assert body.high_water == Body().high_water


def h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def headers(method: bytes = b"GET", path: bytes = b"/") -> list[tuple[bytes, bytes]]:
    if method == b"CONNECT":
        return [(b":method", b"CONNECT"), (b":authority", b"backend:443")]
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"backend"),
        (b":path", path),
    ]


class Server:
    """A server-side H2Protocol fed by a plain h2 client; the handler answers at once or holds
    until released, and records the streams it was given."""

    def __init__(self) -> None:
        self.streams: dict[int, H2ServerStream] = {}
        self.release: dict[int, asyncio.Event] = {}
        self.client = h2_client()
        self.wire = FakeTransport()
        self.proto = H2Protocol(client_side=False, handler=self.handle)
        self.proto.connection_made(self.wire)
        self.pump()

    async def handle(self, stream: H2ServerStream) -> None:
        self.streams[stream.stream_id] = stream
        if stream.request.path == b"/hold":
            event = self.release.setdefault(stream.stream_id, asyncio.Event())
            await event.wait()
            if stream.cancelled:
                return
        if stream.request.method == b"POST":
            while await stream.body.read() is not None:
                pass
        await stream.respond(ResponseHead(200, [(b"content-length", b"2")]), last=b"ok")

    def pump(self) -> list[h2.events.Event]:
        """The client's frames to the server, the server's back to the client."""
        data = self.client.data_to_send()
        if data:
            self.proto.data_received(data)
        self.proto._flush_now()
        out = bytes(self.wire.written)
        self.wire.written.clear()
        events = self.client.receive_data(out) if out else []
        data = self.client.data_to_send()
        if data:
            self.proto.data_received(data)
        return events

    def close(self) -> None:
        self.proto.connection_lost(None)


async def test_bodyless_requests_share_the_empty_body_others_get_their_own() -> None:
    server = Server()
    try:
        c = server.client
        c.send_headers(1, headers(), end_stream=True)  # fast path
        c.send_headers(3, headers(b"POST"), end_stream=True)  # a bodyless POST
        c.send_headers(5, headers(b"POST"), end_stream=False)  # a body to come
        c.send_headers(7, headers(), end_stream=True, priority_weight=200)  # h2's events
        server.pump()
        await _until(lambda: len(server.streams) == 4 or 5 in server.proto.streams, "no streams")
        made = server.proto.streams | server.streams
        assert made[1].body is EMPTY_BODY and made[1].remote_done
        assert made[3].body is EMPTY_BODY
        assert made[7].body is EMPTY_BODY
        assert made[5].body is not EMPTY_BODY and not made[5].remote_done
        assert made[5].body.on_consumed is not None
        c.send_data(5, b"abc", end_stream=True)
        server.pump()
        await _until(lambda: 5 not in server.proto.streams, "the POST was not answered")
        pristine()
    finally:
        server.close()
    pristine()


async def test_a_connect_gets_its_own_body_even_with_end_stream() -> None:
    server = Server()
    try:
        server.client.send_headers(1, headers(b"CONNECT"), end_stream=False)
        server.client.send_headers(3, headers(b"CONNECT"), end_stream=True)
        server.pump()
        for stream_id in (1, 3):
            stream = server.proto.streams.get(stream_id) or server.streams.get(stream_id)
            assert stream is not None
            assert stream.body is not EMPTY_BODY
        pristine()
    finally:
        server.close()
    pristine()


async def test_client_streams_keep_a_body_of_their_own() -> None:
    proto = H2Protocol(client_side=True)
    proto.connection_made(FakeTransport())
    try:
        head = RequestHead(method=b"GET", scheme=b"http", authority=b"b", path=b"/", headers=[])
        stream = proto.open_stream(head, end_stream=True)
        assert stream.body is not EMPTY_BODY
    finally:
        proto.connection_lost(None)
    pristine()


async def test_the_shared_body_is_never_written_whatever_befalls_its_streams() -> None:
    for _round in range(5):
        server = Server()
        c = server.client
        proto = server.proto
        sid = 1

        # Answered at once, many times.
        for _ in range(20):
            c.send_headers(sid, headers(), end_stream=True)
            server.pump()
            await _until(lambda s=sid, got=server.streams: s in got, "not served")
            await _until(lambda s=sid, live=proto.streams: s not in live, "not answered")
            server.pump()
            assert server.streams[sid].body is EMPTY_BODY
            pristine()
            sid += 2

        # Held, then reset by the client (RST_STREAM after its END_STREAM): seen as reset.
        for code in (h2.errors.ErrorCodes.CANCEL, h2.errors.ErrorCodes.NO_ERROR):
            c.send_headers(sid, headers(path=b"/hold"), end_stream=True)
            server.pump()
            await _until(lambda s=sid, got=server.streams: s in got, "not served")
            stream = server.streams[sid]
            assert stream.body is EMPTY_BODY
            c.reset_stream(sid, code)
            server.pump()
            assert stream.cancelled and stream.reset_error is not None
            assert stream.body.error is None  # as an ended body of its own kept it
            pristine()
            server.release[sid].set()
            await _until(lambda s=sid, live=proto.streams: s not in live, "held")
            pristine()
            sid += 2

        # DATA and trailers after END_STREAM: h2 resets the stream; nothing reaches the body.
        for late in ("data", "trailers"):
            c.send_headers(sid, headers(path=b"/hold"), end_stream=True)
            server.pump()
            await _until(lambda s=sid, got=server.streams: s in got, "not served")
            stream = server.streams[sid]
            # The client's h2 refuses to send either: frames by hand.
            if late == "data":
                proto.data_received(frame(DATA, END_STREAM, sid, b"late"))
            else:
                block = c.encoder.encode([(b"x-trailer", b"1")])
                proto.data_received(frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
            proto._flush_now()
            server.wire.written.clear()
            pristine()
            assert stream.body is EMPTY_BODY
            server.release.setdefault(sid, asyncio.Event()).set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            pristine()
            sid += 2
            if proto.closed:
                break

        server.close()
        pristine()

        # GOAWAY from the client, and the connection lost with requests held.
        server = Server()
        c = server.client
        proto = server.proto
        for sid in (1, 3, 5):
            c.send_headers(sid, headers(path=b"/hold"), end_stream=True)
        server.pump()
        await _until(lambda got=server.streams: len(got) == 3, "not served")
        server.streams[5].reset()  # reset locally
        assert server.streams[5].cancelled
        pristine()
        c.close_connection()  # GOAWAY
        proto.data_received(c.data_to_send())
        proto._flush_now()
        pristine()
        held = [server.streams[1], server.streams[3]]
        server.close()  # connection lost
        for stream in held:
            assert stream.cancelled and stream.body is EMPTY_BODY
        for event in server.release.values():
            event.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        pristine()
