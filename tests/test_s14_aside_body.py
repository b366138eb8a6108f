"""Session 14 (aside): the response body of a client stream, and the pool's pick of a connection.

- A DATA frame with END_STREAM taken by `_take_data` queues its chunk and ends the body in one
  call (`Body.feed_last`) and ends the stream's remote side there (as `remote_ended` did): the
  body holds the chunk, ended, not yet at its end; a stream done at both ends is dropped from
  both tables, one still sending is not (until it finishes). A body fed earlier gets the last
  chunk behind the others. A reader waiting for the body is woken with the chunk.
- `Body.take_whole` takes the last chunk as `_take` did: the credit given back (the connection's
  window books), `reads` counted, `at_end` set and `on_consumed` dropped.
- `Body.feed_last` on an aborted body queues nothing and leaves it ended with nothing to read,
  as `feed` then `end` left it; on an ended body it changes nothing.
- A client stream's body buffer is the connection's limits' (read once per connection).
- `H2Pool.ready_stream` skips a connection that is closed, going away or at the peer's stream
  limit, as `H2Protocol.available` says.
"""

from __future__ import annotations

import asyncio

import h2.settings

from sidecar.cluster import Target
from sidecar.http.exchange import Body, RequestHead, StreamReset
from sidecar.http.h2 import H2Protocol
from sidecar.http.pool import H2Pool
from sidecar.limits import Limits
from tests.attack import FakeTransport
from tests.test_h2_cuts import h2_server

CODES = h2.settings.SettingCodes
GET = RequestHead(b"GET", b"http", b"b", b"/", [])


def connected(limits: Limits | None = None, settings: dict[int, int] | None = None):  # type: ignore[no-untyped-def]
    """A client H2Protocol and its plain h2 server peer, prefaces exchanged."""
    server = h2_server(settings or {})
    proto = H2Protocol(client_side=True, limits=limits) if limits else H2Protocol(client_side=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    proto.data_received(server.data_to_send())
    proto._flush_now()
    server.receive_data(bytes(wire.written))
    server.data_to_send()
    wire.written.clear()  # (each test hands the server what follows)
    return proto, server, wire


def answer(server, stream_id: int, body: bytes, *, split: bool = False) -> bytes:  # type: ignore[no-untyped-def]
    """The server's HEADERS and DATA (END_STREAM on the last) for `stream_id`, one read's bytes."""
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
    if split:
        server.send_data(stream_id, body[:2])
        server.send_data(stream_id, body[2:], end_stream=True)
    else:
        server.send_data(stream_id, body, end_stream=True)
    return server.data_to_send()


async def test_a_whole_answer_in_one_read_ends_the_body_and_the_stream() -> None:
    limits = Limits(stream_buffer_kb=7)
    proto, server, wire = connected(limits)
    try:
        stream = proto.open_stream(GET, end_stream=True)
        server.receive_data(bytes(wire.written))
        proto.data_received(answer(server, stream.stream_id, b"hello"))
        assert stream.response_head.done() and stream.response_head.result().status == 200
        body = stream.body
        assert body.high_water == 7 * 1024
        assert list(body._chunks) == [b"hello"] and body.buffered == 5
        assert body.ended and not body.at_end and body.trailers is None
        assert body.on_consumed is not None and body.reads == 0
        assert stream.remote_done and stream.local_done
        assert stream.stream_id not in proto.streams  # done at both ends: dropped
        assert stream.stream_id not in proto.conn.streams
        window = proto.conn._inbound_flow_control_window_manager
        processed = window._bytes_processed
        assert body.take_whole() == b"hello"
        assert body.at_end and body.on_consumed is None and body.reads == 1 and not body.buffered
        assert window._bytes_processed == processed + 5  # the credit given back
        assert await body.read() is None
    finally:
        proto.connection_lost(None)


async def test_the_last_of_several_chunks_ends_the_body_behind_them() -> None:
    proto, server, wire = connected()
    try:
        stream = proto.open_stream(GET, end_stream=True)
        server.receive_data(bytes(wire.written))
        proto.data_received(answer(server, stream.stream_id, b"hello", split=True))
        body = stream.body
        assert list(body._chunks) == [b"he", b"llo"] and body.buffered == 5 and body.ended
        assert body.take_whole() is None  # not one chunk
        assert await body.read() == b"he" and await body.read() == b"llo"
        assert body.at_end and await body.read() is None
        assert stream.stream_id not in proto.streams
    finally:
        proto.connection_lost(None)


async def test_a_stream_still_sending_stays_until_it_finishes() -> None:
    proto, server, wire = connected()
    try:
        post = RequestHead(b"POST", b"http", b"b", b"/", [])
        stream = proto.open_stream(post, end_stream=False)
        proto._flush_now()
        server.receive_data(bytes(wire.written))
        proto.data_received(answer(server, stream.stream_id, b"early"))
        assert stream.remote_done and not stream.local_done and stream.body.ended
        assert proto.streams[stream.stream_id] is stream  # its request has not ended
        await stream.finish(None, b"x")
        assert stream.stream_id not in proto.streams
        assert stream.stream_id not in proto.conn.streams
    finally:
        proto.connection_lost(None)


async def test_a_reader_waiting_for_the_body_is_woken_with_the_last_chunk() -> None:
    proto, server, wire = connected()
    try:
        stream = proto.open_stream(GET, end_stream=True)
        server.receive_data(bytes(wire.written))
        server.send_headers(stream.stream_id, [(b":status", b"200")])
        proto.data_received(server.data_to_send())
        reader = asyncio.ensure_future(stream.body.read())
        await asyncio.sleep(0)
        assert stream.body._waiter is not None
        server.send_data(stream.stream_id, b"late", end_stream=True)
        proto.data_received(server.data_to_send())
        assert await asyncio.wait_for(reader, 5) == b"late"
        assert stream.body.at_end
    finally:
        proto.connection_lost(None)


def test_feed_last_on_an_aborted_body_queues_nothing_and_ends_it() -> None:
    fed, alike = Body(lambda _: None), Body(lambda _: None)
    for body in (fed, alike):
        body.abort(StreamReset("cut"))
    fed.feed_last(b"data")
    alike.feed(b"data")
    alike.end()
    for body in (fed, alike):
        assert not body._chunks and body.buffered == 0
        assert body.ended and body.at_end and body.on_consumed is None


def test_feed_last_on_an_ended_body_changes_nothing() -> None:
    body = Body(lambda _: None)
    body.feed(b"a")
    body.end([(b"grpc-status", b"0")])
    body.feed_last(b"b")
    assert list(body._chunks) == [b"a"] and body.buffered == 1
    assert body.trailers == [(b"grpc-status", b"0")]


async def test_the_pool_skips_connections_that_cannot_take_a_stream() -> None:
    target = Target("10.0.0.1", 80)
    going, _, _ = connected()
    closed, _, _ = connected()
    full, _, _ = connected(settings={CODES.MAX_CONCURRENT_STREAMS: 1})
    fine, _, _ = connected()
    try:
        going.going_away = True
        closed.closed = True
        full.open_stream(GET, end_stream=True)
        assert not going.available and not closed.available and not full.available
        pool = H2Pool(lambda *_: None, trusted=True)  # type: ignore[arg-type,return-value]
        pool.connections[target] = [going, closed, full]
        assert pool.ready_stream(target, GET, True) is None
        pool.connections[target].append(fine)
        stream = pool.ready_stream(target, GET, True)
        assert stream is not None and stream.proto is fine
    finally:
        for proto in (going, full, fine):
            proto.connection_lost(None)
