"""A body's last chunk leaves with its end (sidecar.http.router `_send_body`, the codecs'
`finish(trailers, last)`): one HTTP/2 DATA frame with END_STREAM instead of the chunk and an
empty END_STREAM frame after it, one HTTP/1.1 write with a chunked body's terminator. A whole
body that came with its head (`Body.take_whole`) goes with the head: `respond(head, last=...)`.

The codecs are driven in memory (a transport that records writes) with the real h2 library as
the peer's parser; what travels end to end is checked by the transparency, gRPC and tunnel
suites through real sidecars.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events

from sidecar.http.exchange import Body, ResponseHead, StreamReset
from sidecar.http.h1 import H1Server, H1ServerExchange
from sidecar.http.h2 import H2Protocol, H2ServerStream
from sidecar.http.router import _send_body
from tests.attack import FakeTransport

DEADLINE = 5.0  # seconds: a condition not met by then is a failure


class Writes(FakeTransport):
    """Records each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.each: list[bytes] = []

    def write(self, data: Any) -> None:
        self.each.append(bytes(data))
        super().write(data)


async def until(condition: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


class Sink:
    """Records what `_send_body` asks of an exchange or upstream stream."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    async def finish(self, trailers: Any = None, last: bytes = b"") -> None:
        self.calls.append(("finish", trailers, last))


async def test_the_last_chunk_of_a_whole_body_goes_with_the_end() -> None:
    body = Body()
    for chunk in (b"a", b"b", b"c"):
        body.feed(chunk)
    body.end()
    sink, counted = Sink(), []
    await _send_body(body, sink, counted.append)  # type: ignore[arg-type]
    assert sink.calls == [("write", b"a"), ("write", b"b"), ("finish", None, b"c")]
    assert counted == [b"a", b"b", b"c"]


async def test_trailers_and_a_body_still_coming_end_apart() -> None:
    body = Body()
    body.feed(b"a")
    body.end([(b"grpc-status", b"0")])
    sink = Sink()
    await _send_body(body, sink, lambda _: None)  # type: ignore[arg-type]
    assert sink.calls == [("write", b"a"), ("finish", [(b"grpc-status", b"0")], b"")]

    streaming, sink = Body(), Sink()
    streaming.feed(b"x")
    task = asyncio.create_task(_send_body(streaming, sink, lambda _: None))  # type: ignore[arg-type]
    await until(lambda: sink.calls == [("write", b"x")])
    streaming.end()  # the end comes after the last chunk was sent: nothing left to go with it
    await asyncio.wait_for(task, DEADLINE)
    assert sink.calls == [("write", b"x"), ("finish", None, b"")]


def h2_client() -> tuple[h2.connection.H2Connection, bytes]:
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
    client.send_headers(1, request, end_stream=True)
    return client, client.data_to_send()


async def h2_answer(finish: Any, whole: bytes | None = None) -> list[h2.events.Event]:
    """A sidecar HTTP/2 server stream answering with `finish(stream)` after the head, or with
    `respond(head, last=whole)`; the client's events."""
    done = asyncio.get_running_loop().create_future()

    async def handler(stream: H2ServerStream) -> None:
        if whole is not None:
            await stream.respond(ResponseHead(200, []), last=whole)
        else:
            await stream.respond(ResponseHead(200, []))
            await finish(stream)
        done.set_result(None)

    client, opening = h2_client()
    proto = H2Protocol(client_side=False, handler=handler)
    wire = Writes()
    proto.connection_made(wire)
    try:
        proto.data_received(opening)
        await asyncio.wait_for(done, DEADLINE)
        await until(lambda: b"hello" in wire.written)
        return client.receive_data(bytes(wire.written))
    finally:
        proto.connection_lost(None)


async def test_h2_the_last_chunk_is_one_data_frame_with_end_stream() -> None:
    events = await h2_answer(lambda stream: stream.finish(None, b"hello"))
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert [(e.data, e.stream_ended is not None) for e in data] == [(b"hello", True)]


async def test_h2_the_last_chunk_then_trailers() -> None:
    events = await h2_answer(lambda stream: stream.finish([(b"grpc-status", b"0")], b"hello"))
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert [(e.data, e.stream_ended) for e in data] == [(b"hello", None)]
    assert trailers[0].headers == [(b"grpc-status", b"0")] and trailers[0].stream_ended


async def test_h2_a_last_chunk_after_the_end_is_refused() -> None:
    refused: list[str] = []

    async def twice(stream: H2ServerStream) -> None:
        await stream.finish(None, b"hello")
        try:
            await stream.finish(None, b"again")
        except StreamReset as exc:
            refused.append(str(exc))

    await h2_answer(twice)
    assert refused == ["the stream has ended"]


async def h1_writes(answer: Any) -> list[bytes]:
    """A sidecar HTTP/1.1 server answering one GET with `answer(exchange)`; its writes, each
    apart."""
    done = asyncio.get_running_loop().create_future()

    async def handler(exchange: H1ServerExchange) -> None:
        try:
            await answer(exchange)
        finally:
            done.set_result(None)

    server = H1Server(handler, default_authority=b"backend")
    wire = Writes()
    server.connection_made(wire)
    try:
        server.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(done, DEADLINE)
        return wire.each
    finally:
        server.connection_lost(None)


async def h1_answer(head: ResponseHead, last: bytes, whole: bool = False) -> list[bytes]:
    """A sidecar HTTP/1.1 server answering one request with `head` and `finish(None, last)`, or
    (`whole`) with `respond(head, last=last)`; its writes."""

    async def answer(exchange: H1ServerExchange) -> None:
        if whole:
            await exchange.respond(head, last=last)
        else:
            await exchange.respond(head)
            await exchange.finish(None, last)

    return await h1_writes(answer)


async def test_h1_a_chunked_body_of_one_chunk_is_one_write_with_head_and_terminator() -> None:
    (only,) = await h1_answer(ResponseHead(200, []), b"hello")
    assert only.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked\r\n" in only
    assert only.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


async def test_h1_a_counted_body_checks_its_length_with_the_last_chunk() -> None:
    (only,) = await h1_answer(ResponseHead(200, [(b"content-length", b"5")]), b"hello")
    assert only.endswith(b"\r\n\r\nhello")
    # Short of its length: refused (the handler's StreamReset resets the connection), and
    # never sent as if complete.
    writes = await h1_answer(ResponseHead(200, [(b"content-length", b"9")]), b"hello")
    assert not any(b"hello" in w for w in writes)


def test_a_last_data_frame_is_what_h2_sends_with_the_same_books() -> None:
    """`send_plain_data(..., end=True)` against h2's `send_data(..., end_stream=True)`: the same
    bytes, windows and stream state, from an open stream and from a half-closed (remote) one."""
    from tests.test_h2_hop import _connected_pair

    for half_closed in (False, True):
        fast, server = _connected_pair()
        slow, slow_server = _connected_pair()
        if half_closed:  # the peer ended its side first: the last frame closes the stream
            for conn, peer in ((fast, server), (slow, slow_server)):
                peer.send_headers(1, [(b":status", b"200")], end_stream=True)
                conn.receive_data(peer.data_to_send())
        fast.send_plain_data(1, b"hello", end=True)
        slow.send_data(1, b"hello", end_stream=True)
        wire = fast.data_to_send()
        assert wire == slow.data_to_send()
        assert fast.outbound_flow_control_window == slow.outbound_flow_control_window
        mine, theirs = fast.streams[1], slow.streams[1]
        assert mine.outbound_flow_control_window == theirs.outbound_flow_control_window
        assert mine.state_machine.state == theirs.state_machine.state
        assert mine.state_machine.stream_closed_by == theirs.state_machine.stream_closed_by
        events = server.receive_data(wire)
        ended = [e for e in events if isinstance(e, h2.events.StreamEnded)]
        assert [e.stream_id for e in ended] == [1]


async def test_a_whole_body_is_taken_only_when_it_ended_in_one_chunk_without_trailers() -> None:
    consumed: list[int] = []
    body = Body(consumed.append)
    body.feed(b"hello")
    assert body.take_whole() is None  # not ended: more may come
    body.end()
    assert body.take_whole() == b"hello"
    assert (consumed, body.at_end, body.buffered, body.reads) == ([5], True, 0, 1)
    assert await body.read() is None

    two = Body()
    two.feed(b"a")
    two.feed(b"b")
    two.end()
    with_trailers = Body()
    with_trailers.feed(b"a")
    with_trailers.end([(b"grpc-status", b"0")])
    assert two.take_whole() is None and with_trailers.take_whole() is None
    assert await two.read() == b"a"  # left for `read`, untouched


async def test_h1_a_whole_body_leaves_with_its_head_in_one_write() -> None:
    (counted,) = await h1_answer(ResponseHead(200, [(b"content-length", b"5")]), b"hello", True)
    assert counted.startswith(b"HTTP/1.1 200 ") and counted.endswith(b"\r\n\r\nhello")
    (chunked,) = await h1_answer(ResponseHead(200, []), b"hello", True)
    assert chunked.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    # A body that does not match its Content-Length is refused, never sent as if complete.
    short = await h1_answer(ResponseHead(200, [(b"content-length", b"9")]), b"hello", True)
    assert not any(b"hello" in w for w in short)


async def test_h2_a_whole_body_is_one_data_frame_with_end_stream_after_the_head() -> None:
    events = await h2_answer(None, whole=b"hello")
    kinds = [type(e).__name__ for e in events]
    assert kinds[-3:] == ["ResponseReceived", "DataReceived", "StreamEnded"], kinds
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert [(e.data, e.stream_ended is not None) for e in data] == [(b"hello", True)]
