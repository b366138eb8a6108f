"""Session 13's cut on the HTTP/2 send side: a response that ended with trailers, all of it here
(a unary gRPC answer: head, one message, grpc-status), goes out in one call, each piece checked
against the calls it replaces.

- `_Connection.send_response(..., trailers)` queues the head, the body and the trailers as
  `send_stream_headers`, `send_plain_data_now` (no END_STREAM) and `send_stream_headers`
  (END_STREAM) queue them one after the other: the same bytes, books and outcome in every case.
- `H2ServerStream.respond(head, last=..., trailers=...)` writes them in one write when they fit,
  and otherwise sends the body and trailers as `finish` does; `H1ServerExchange.respond` sends
  them as the router sent them before (the head, the chunk, `finish`).
- The router (`_attempt`) gives the exchange one `respond` for a body of one chunk ended with
  trailers, and the old calls for one of several chunks, counting each chunk as before.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
import pytest

from sidecar.http.exchange import Body, ResponseHead
from sidecar.http.h1 import H1ServerExchange
from sidecar.http.h2 import H2Protocol, H2ServerStream, _Connection
from sidecar.http.router import _attempt
from tests.test_body_end import h1_writes
from tests.test_h2_cuts import CODES, _until, h2_client, handled, request
from tests.test_h2_lifecycle import _Writes, serve_one
from tests.test_s12_h2tx import CASES, HEAD, _books, _outcome, _server, client_streams

TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def _three_steps(conn: _Connection, body: bytes) -> bool:
    """What `send_response` with trailers replaces: the head, the body, the trailers."""
    conn.send_stream_headers(1, HEAD, False)
    if not conn.send_plain_data_now(1, body, False):
        return False
    conn.send_stream_headers(1, TRAILERS, True)
    return True


@pytest.mark.parametrize(("settings", "end", "frame_size", "body"), CASES)
def test_a_response_body_and_trailers_are_queued_as_the_three_calls_queue_them(
    settings: dict[int, int], end: bool, frame_size: int, body: bytes
) -> None:
    ours, theirs = (_server(settings, end, frame_size) for _ in range(2))
    assert _outcome(lambda: ours.send_response(1, HEAD, body, TRAILERS)) == _outcome(
        lambda: _three_steps(theirs, body)
    )
    assert _books(ours) == _books(theirs)
    # Sent twice: h2 refuses a second head (the stream ended, or headers sent), alike.
    assert _outcome(lambda: ours.send_response(1, HEAD, body, TRAILERS)) == _outcome(
        lambda: _three_steps(theirs, body)
    )
    assert _books(ours) == _books(theirs)


@pytest.mark.parametrize(
    "prepare",
    [
        pytest.param(lambda conn: conn.reset_stream(1), id="reset"),
        pytest.param(lambda conn: setattr(conn, "outbound_flow_control_window", 3), id="window"),
        pytest.param(lambda conn: conn.send_stream_headers(1, HEAD, False), id="head sent"),
        pytest.param(lambda conn: conn.close_connection(), id="closed"),
    ],
)
def test_an_unusual_stream_takes_the_same_path_with_trailers(prepare: Any) -> None:
    ours, theirs = (_server({}, False, 16384) for _ in range(2))
    for conn in (ours, theirs):
        prepare(conn)
    assert _outcome(lambda: ours.send_response(1, HEAD, b"hello", TRAILERS)) == _outcome(
        lambda: _three_steps(theirs, b"hello")
    )
    assert _books(ours) == _books(theirs)


def test_a_clients_stream_takes_the_same_path_with_trailers() -> None:
    ours, theirs = client_streams()
    assert _outcome(lambda: ours.send_response(1, HEAD, b"hello", TRAILERS)) == _outcome(
        lambda: _three_steps(theirs, b"hello")
    )
    assert _books(ours) == _books(theirs)


async def _respond_with_trailers(
    settings: dict[int, int], body: bytes, end: bool = True
) -> tuple[h2.connection.H2Connection, H2Protocol, _Writes, asyncio.Task[None]]:
    """A server connection whose handler answers the client's request with `body` and
    TRAILERS given to `respond`; returned once the handler runs."""
    client = h2_client(settings)
    request(client, 1, end=end)

    async def answer(stream: H2ServerStream) -> None:
        await stream.respond(
            ResponseHead(200, [(b"content-type", b"application/grpc")]),
            last=body,
            trailers=TRAILERS,
        )

    return (client, *await serve_one(client, answer))


def _kinds(events: list[Any]) -> list[str]:
    return [type(event).__name__ for event in events]


async def test_head_body_and_trailers_that_fit_leave_in_one_write() -> None:
    client, proto, transport, task = await _respond_with_trailers({}, b"hello")
    try:
        await handled(proto)
        assert len(transport.writes) == 1 and proto._flush_handle is None
        events = client.receive_data(transport.writes[0])
        assert _kinds(events) == [
            "ResponseReceived",
            "DataReceived",
            "TrailersReceived",
            "StreamEnded",
        ]
        assert events[1].data == b"hello" and events[1].stream_ended is None
        assert events[2].headers == TRAILERS
        assert 1 not in proto.streams and 1 not in proto.conn.streams  # done at both ends
    finally:
        proto.connection_lost(None)


async def test_a_request_still_open_leaves_the_stream_to_its_remote_end() -> None:
    client, proto, transport, task = await _respond_with_trailers({}, b"hello", end=False)
    try:
        await handled(proto)
        (stream,) = proto.streams.values()
        assert stream.local_done and not stream.remote_done
        events = client.receive_data(b"".join(transport.writes))
        assert _kinds(events)[-2:] == ["TrailersReceived", "StreamEnded"]
        client.end_stream(1)
        proto.data_received(client.data_to_send())
        assert 1 not in proto.streams and 1 not in proto.conn.streams
    finally:
        proto.connection_lost(None)


async def test_a_body_short_of_window_goes_as_finish_sends_it_then_the_trailers() -> None:
    client, proto, transport, task = await _respond_with_trailers(
        {CODES.INITIAL_WINDOW_SIZE: 3}, b"hello"
    )
    try:
        await _until(lambda: 1 in proto._window_waiters, "the body did not wait for window")
        await _until(lambda: transport.writes, "the head was not written")
        events = client.receive_data(b"".join(transport.writes))
        assert _kinds(events) == ["ResponseReceived", "DataReceived"]
        assert events[1].data == b"hel"
        transport.writes.clear()
        client.increment_flow_control_window(2, stream_id=1)
        proto.data_received(client.data_to_send())
        await handled(proto)
        events = client.receive_data(b"".join(transport.writes))
        assert _kinds(events)[-3:] == ["DataReceived", "TrailersReceived", "StreamEnded"]
        assert events[-3].data == b"lo" and events[-2].headers == TRAILERS
        assert 1 not in proto.streams
    finally:
        proto.connection_lost(None)


async def test_a_paused_transport_sends_the_head_then_body_and_trailers_when_resumed() -> None:
    client, proto, transport, task = await _respond_with_trailers({}, b"hello")
    proto.pause_writing()  # before the handler's first step
    try:
        await _until(lambda: transport.writes, "the head was not written")
        assert _kinds(client.receive_data(transport.writes[0])) == ["ResponseReceived"]
        assert not task.done()
        proto.resume_writing()
        await handled(proto)
        events = client.receive_data(b"".join(transport.writes[1:]))
        assert _kinds(events) == ["DataReceived", "TrailersReceived", "StreamEnded"]
    finally:
        proto.connection_lost(None)


async def test_an_empty_body_with_trailers_sends_the_head_and_the_trailers() -> None:
    client, proto, transport, task = await _respond_with_trailers({}, b"")
    try:
        await handled(proto)
        events = client.receive_data(b"".join(transport.writes))
        assert _kinds(events) == ["ResponseReceived", "TrailersReceived", "StreamEnded"]
    finally:
        proto.connection_lost(None)


async def test_h1_a_body_with_trailers_is_sent_as_the_router_sent_it() -> None:
    head = ResponseHead(200, [(b"content-type", b"application/grpc")])

    async def one_call(exchange: H1ServerExchange) -> None:
        await exchange.respond(head, last=b"hello", trailers=TRAILERS)

    async def three_calls(exchange: H1ServerExchange) -> None:
        await exchange.respond(head)
        await exchange.write(b"hello")
        await exchange.finish(TRAILERS)

    ours = b"".join(await h1_writes(one_call))
    theirs = b"".join(await h1_writes(three_calls))
    assert ours == theirs and ours.endswith(b"0\r\ngrpc-status: 0\r\ngrpc-message: \r\n\r\n")


# -- the router ---------------------------------------------------------------------------


class _Exchange:
    """Records what the router asks of the downstream exchange."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.body = Body.empty()
        self.status = 0

    async def respond(
        self, head: ResponseHead, end: bool = False, last: Any = None, **kw: Any
    ) -> None:
        self.calls.append(("respond", head.status, end, last, kw.get("trailers")))

    async def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    async def finish(self, trailers: Any = None, last: bytes = b"") -> None:
        self.calls.append(("finish", trailers, last))


class _Accounting:
    counts_bodies = True
    grpc = True

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended: list[Any] = []

    def upstream_response(self, status: int) -> None:
        pass

    def response_chunk(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def grpc_response_ended(self, headers: Any, trailers: Any) -> None:
        self.ended.append(trailers)


async def _route_response(chunks: list[bytes]) -> tuple[_Exchange, _Accounting]:
    """`_attempt`'s response part for an upstream answer of `chunks` ended with TRAILERS, all
    here when the router takes it."""
    body = Body()
    for chunk in chunks:
        body.feed(chunk)
    body.end(TRAILERS)
    head = asyncio.get_running_loop().create_future()
    head.set_result(ResponseHead(200, [(b"content-type", b"application/grpc")]))
    upstream = SimpleNamespace(response_head=head, body=body, response_ended_with_head=False)
    outlier = SimpleNamespace(
        success=lambda target: None, failure=lambda target: None, health={}
    )  # (`health`: the endpoints with failures on record, none here)
    route = SimpleNamespace(
        cluster=SimpleNamespace(outlier=outlier), heads=None, strips_responses=True
    )
    exchange, acct = _Exchange(), _Accounting()
    assert await _attempt(exchange, route, upstream, acct, None) is None  # type: ignore[arg-type]
    return exchange, acct


async def test_the_router_sends_a_whole_body_with_trailers_in_one_respond() -> None:
    exchange, acct = await _route_response([b"hello"])
    assert exchange.calls == [("respond", 200, False, b"hello", TRAILERS)]
    assert acct.chunks == [b"hello"] and acct.ended == [TRAILERS]


async def test_the_router_sends_a_body_of_several_chunks_and_trailers_as_before() -> None:
    exchange, acct = await _route_response([b"a", b"b", b"c"])
    assert exchange.calls == [
        ("respond", 200, False, None, None),
        ("write", b"a"),
        ("write", b"b"),
        ("write", b"c"),
        ("finish", TRAILERS, b""),
    ]
    assert acct.chunks == [b"a", b"b", b"c"] and acct.ended == [TRAILERS]


async def test_the_router_sends_an_empty_chunk_with_trailers_in_one_respond() -> None:
    exchange, acct = await _route_response([b""])
    assert exchange.calls == [("respond", 200, False, b"", TRAILERS)]
    assert acct.chunks == [b""] and acct.ended == [TRAILERS]


async def test_an_interim_status_given_a_body_and_trailers_does_not_end_with_the_body() -> None:
    """A status below 200 goes through h2's rules; the body then must not carry END_STREAM,
    the trailers do."""
    from hyperframe.frame import Frame

    client = h2_client({})
    request(client, 1, end=True)

    async def answer(stream: H2ServerStream) -> None:
        await stream.respond(ResponseHead(103, []), last=b"hello", trailers=TRAILERS)

    proto, transport, task = await serve_one(client, answer)
    try:
        await handled(proto)
        wire, frames = memoryview(b"".join(transport.writes)), []
        while wire:
            frame, length = Frame.parse_frame_header(wire[:9])
            frame.parse_body(wire[9 : 9 + length])
            frames.append((frame.type, "END_STREAM" in frame.flags))
            wire = wire[9 + length :]
        assert frames == [(1, False), (0, False), (1, True)]
    finally:
        proto.connection_lost(None)
