"""An app's answer read whole in one read (head, a whole Content-Length body, nothing after it) is
handled by `H1Client._process` at once, and emitted by `ResponseParser._head` without
`_start_body` (session 14): the same events, the same head and body for the router, the same
reuse of the connection as through the general paths, which every other shape still takes.
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http import h1wire
from sidecar.http.exchange import RequestHead, ResponseHead
from sidecar.http.h1 import H1Client, H1ClientStream
from sidecar.http.h1wire import END, Response, ResponseParser
from tests.attack import FakeTransport


class _Reading(FakeTransport):
    """Counts the pauses of reading (the bodies here are over their mark)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = 0

    def pause_reading(self) -> None:
        self.paused += 1


def _client(body_buffer: int = 1 << 16) -> tuple[H1Client, _Reading, list[H1Client]]:
    idle: list[H1Client] = []
    client = H1Client(on_idle=idle.append, body_buffer=body_buffer)
    transport = _Reading()
    client.connection_made(transport)
    return client, transport, idle


def _get(method: bytes = b"GET", protocol: bytes | None = None) -> RequestHead:
    return RequestHead(method, b"http", b"app", b"/", [], protocol=protocol)


def _head(stream: H1ClientStream) -> ResponseHead:
    assert stream.response_head.done()
    return stream.response_head.result()


def test_a_whole_answer_in_one_read_is_one_final_response_its_body_and_its_end():
    parser = ResponseParser()
    events = parser.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert parser.paused and parser.buf == b"" and parser.keep_alive
    assert parser.receive(b"HTTP/1.1 204 No Content\r\n\r\n") == []  # (paused: the next one)
    assert [type(e) for e in events] == [Response, bytes, h1wire.End]
    assert events[1] == b"hello" and type(events[1]) is bytes
    assert events[2] is END and END.trailers is None


@pytest.mark.parametrize(
    ("method", "raw", "after"),
    [
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", [END]),  # no empty chunk
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", [END]),
        (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", [END]),
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", [b"hel"]),  # not all here
    ],
)
def test_answers_that_are_not_whole_bodies_keep_their_events(
    method: bytes, raw: bytes, after: list[object]
):
    parser = ResponseParser()
    parser.method = method
    events = parser.receive(raw)
    assert type(events[0]) is Response
    assert events[1:] == after and (events[-1] is END) == (after[-1] is END)


def test_bytes_after_a_whole_answer_stay_for_the_next_one():
    parser = ResponseParser()
    events = parser.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 204 No")
    assert events[1:] == [b"hi", END]
    assert parser.buf == b"HTTP/1.1 204 No" and parser.paused


def test_a_whole_answer_reaches_the_stream_and_the_connection_goes_idle():
    async def run() -> None:
        client, transport, idle = _client()
        for n in range(2):  # and again on the same connection, kept alive
            stream = client.open(_get(), True)
            assert transport.written.endswith(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-N: %d\r\n\r\nhello" % n
            client.data_received(answer)
            head = _head(stream)
            fields = [(b"content-length", b"5"), (b"x-n", b"%d" % n)]
            assert (head.status, head.headers) == (200, fields)
            assert stream.body.ended and stream.body.take_whole() == b"hello"
            assert stream.body.at_end and stream.body.on_consumed is None
            assert client.stream is None and not client.parser.paused and client.reusable
            assert idle == [client] * (n + 1) and not transport.closing

    asyncio.run(run())


def test_a_whole_answer_past_the_bodys_mark_leaves_reading_on():
    async def run() -> None:
        client, transport, idle = _client(body_buffer=4)
        stream = client.open(_get(), True)
        client.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
        assert stream.body.take_whole() == b"0123456789"
        assert not client.reading_paused and transport.paused == 0
        assert idle == [client] and client.reusable

    asyncio.run(run())


def test_a_declined_upgrade_answered_whole_resolves_the_tunnel_as_declined():
    async def run() -> None:
        client, transport, idle = _client()
        stream = client.open(_get(b"CONNECT", b"websocket"), False)
        assert stream.tunnel is not None and not stream.tunnel.done()
        client.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
        assert stream.tunnel.done() and stream.tunnel.result() is False
        assert _head(stream).status == 200 and stream.body.take_whole() == b"no"
        assert not client.tunnelling and idle == [client]

    asyncio.run(run())


def test_an_interim_answer_and_a_bodiless_final_one_in_one_read():
    """[100, 204, End]: three events ending without trailers, yet not a whole answer's."""

    async def run() -> None:
        client, transport, idle = _client()
        stream = client.open(_get(), True)
        interim: list[int] = []
        stream.on_informational = lambda head: interim.append(head.status)
        client.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
        assert interim == [100] and _head(stream).status == 204
        assert stream.body.at_end and stream.body.buffered == 0
        assert idle == [client]

    asyncio.run(run())


def test_chunks_and_the_end_in_one_read_go_through_the_general_path():
    """[data, data, End]: three events ending without trailers, with no head among them."""

    async def run() -> None:
        client, transport, idle = _client()
        stream = client.open(_get(), True)
        client.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert _head(stream).status == 200 and not stream.body.ended
        client.data_received(b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")
        assert stream.body.ended and stream.body.buffered == 5
        assert stream.body.ready() == b"ab" and stream.body.ready() == b"cde"
        assert idle == [client]

    asyncio.run(run())


@pytest.mark.parametrize(
    "reads",
    [
        [b"HTTP/1.1 200 OK\r\nContent-", b"Length: 5\r\n\r\nhello"],  # a bytearray buffer
        [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe", b"llo"],
    ],
)
def test_an_answer_in_pieces_gives_the_same_head_and_body(reads: list[bytes]):
    async def run() -> None:
        client, transport, idle = _client()
        stream = client.open(_get(), True)
        for data in reads:
            client.data_received(data)
        assert _head(stream).headers == [(b"content-length", b"5")]
        chunks = []
        while (chunk := stream.body.ready()) is not None:
            assert type(chunk) is bytes
            chunks.append(chunk)
        assert b"".join(chunks) == b"hello" and stream.body.at_end
        assert idle == [client] and client.reusable

    asyncio.run(run())


def test_a_whole_answer_with_bytes_after_it_closes_the_connection():
    async def run() -> None:
        client, transport, idle = _client()
        stream = client.open(_get(), True)
        client.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiextra")
        assert _head(stream).status == 200 and stream.body.take_whole() == b"hi"
        assert transport.closing and idle == []

    asyncio.run(run())


def test_a_whole_answer_that_closes_after_it_is_not_kept():
    async def run() -> None:
        client, transport, idle = _client()
        stream = client.open(_get(), True)
        client.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
        assert stream.body.take_whole() == b"hi"
        assert transport.closing and idle == [] and not client.reusable

    asyncio.run(run())
