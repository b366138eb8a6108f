"""A stream ended by the peer's last DATA frame while its local end is done: what
`H2Protocol._stream_finished` does (the DATA path does it inline, session 15).

- A client stream's answer ends with its last DATA frame: the stream is forgotten (gone from
  the sidecar's table and h2's, remembered as closed), and a request waiting for a slot on a
  connection at the peer's stream limit is woken.
- On a connection the peer is draining (GOAWAY NO_ERROR), the last stream's last DATA frame
  closes the connection.
- A server stream answered before its request body ended: the request's last DATA frame leaves
  the connection idle, and its idle clock starts then.
- A request's HEADERS frame carries END_STREAM exactly when the request has no body.
"""

from __future__ import annotations

import asyncio

from sidecar.http.exchange import RequestHead, ResponseHead
from sidecar.http.h2 import H2ClientStream, H2Protocol, H2ServerStream
from tests.attack import DATA, END_HEADERS, END_STREAM, HEADERS, FakeTransport, frame
from tests.test_h2_cuts import CODES, DEADLINE, _until, h2_client, h2_server, handled, request
from tests.test_h2_lifecycle import serve_one

HEAD = RequestHead(method=b"GET", scheme=b"http", authority=b"b", path=b"/", headers=[])


def _client(settings: dict[int, int]) -> tuple[H2Protocol, FakeTransport, object]:
    """A client connection and its peer (a plain h2 server), their settings exchanged."""
    server = h2_server(settings)
    proto = H2Protocol(client_side=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    proto.data_received(server.data_to_send())
    proto._flush_now()
    server.receive_data(bytes(wire.written))
    wire.written.clear()
    return proto, wire, server


def _answer(proto: H2Protocol, wire: FakeTransport, server: object, stream: H2ClientStream) -> None:
    """The peer answers `stream`: a head, then a body in one DATA frame with END_STREAM."""
    proto._flush_now()
    server.receive_data(bytes(wire.written))  # type: ignore[attr-defined]
    wire.written.clear()
    stream_id = stream.stream_id
    server.send_headers(stream_id, [(b":status", b"200")])  # type: ignore[attr-defined]
    proto.data_received(server.data_to_send())  # type: ignore[attr-defined]
    assert not stream.remote_done
    server.send_data(stream_id, b"hello", end_stream=True)  # type: ignore[attr-defined]
    proto.data_received(server.data_to_send())  # type: ignore[attr-defined]


async def test_the_last_data_frame_forgets_the_stream_and_wakes_a_waiting_request() -> None:
    proto, wire, server = _client({CODES.MAX_CONCURRENT_STREAMS: 1})
    try:
        first = proto.open_stream(HEAD, end_stream=True)
        assert not proto.available
        waiting = asyncio.ensure_future(proto.wait_slot())
        await _until(lambda: proto._slot_waiters, "the request did not wait for a slot")
        _answer(proto, wire, server, first)
        assert first.remote_done and first.forgotten
        assert first.stream_id not in proto.streams
        assert first.stream_id not in proto.conn.streams
        assert first.stream_id in proto.conn._closed_streams
        await asyncio.wait_for(waiting, DEADLINE)
        assert proto.available
        assert first.body.take_whole() == b"hello"
    finally:
        proto.connection_lost(None)


async def test_the_last_data_frame_of_a_draining_connections_last_stream_closes_it() -> None:
    proto, wire, server = _client({})
    try:
        stream = proto.open_stream(HEAD, end_stream=True)
        proto._flush_now()
        server.receive_data(bytes(wire.written))  # type: ignore[attr-defined]
        server.close_connection(last_stream_id=stream.stream_id)  # type: ignore[attr-defined]
        proto.data_received(server.data_to_send())  # type: ignore[attr-defined]
        assert proto.going_away and not wire.closing
        # The answer, framed by hand (h2 sends nothing once it closed its connection):
        # HEADERS with `:status: 200` (static index 8) alone, then DATA ending the stream.
        block = b"\x88"
        proto.data_received(frame(HEADERS, END_HEADERS, stream.stream_id, block))
        assert not wire.closing
        proto.data_received(frame(DATA, END_STREAM, stream.stream_id, b"hello"))
        assert stream.forgotten
        assert wire.closing, "the draining connection was left open"
    finally:
        proto.connection_lost(None)


async def test_a_requests_last_data_frame_after_the_answer_starts_the_idle_clock() -> None:
    client = h2_client({})
    request(client, 1, end=False)  # a POST whose body comes after the answer
    answered: list[H2ServerStream] = []

    async def answer(stream: H2ServerStream) -> None:
        await stream.respond(ResponseHead(204, []), end=True)
        answered.append(stream)

    proto, _, task = await serve_one(client, answer)
    try:
        await handled(proto)
        assert answered, "the handler did not answer"
        (stream,) = answered
        assert stream.local_done and not stream.remote_done and 1 in proto.streams
        proto.idle_since = -1.0
        client.send_data(1, b"late", end_stream=True)
        proto.data_received(client.data_to_send())
        assert stream.forgotten and not proto.streams
        assert proto.idle_since > 0
    finally:
        proto.connection_lost(None)


async def test_a_requests_headers_frame_ends_the_stream_exactly_when_it_has_no_body() -> None:
    proto, wire, server = _client({})
    try:
        # (The connection's first request goes through h2, which opens the connection.)
        for end in (False, True, False):
            stream = proto.open_stream(HEAD, end_stream=end)
            proto._flush_now()
            events = server.receive_data(bytes(wire.written))  # type: ignore[attr-defined]
            wire.written.clear()
            names = [type(e).__name__ for e in events]
            assert names == (["RequestReceived", "StreamEnded"] if end else ["RequestReceived"])
            assert events[0].stream_id == stream.stream_id
    finally:
        proto.connection_lost(None)
