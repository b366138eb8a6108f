"""Session 15: a read that is one whole request head and nothing else (the usual one) is taken by
`RequestParser.request_alone` and handled by `H1Server.data_received` without the event list,
the parsing loop and `_handle`. The parser ends in the state `receive` leaves it in, the request
is the same, refused the same way, and the exchange sees its request ended (or its body to come)
as through `_handle`; every other read is left to `receive` untouched.
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http import h1wire
from sidecar.http.exchange import EMPTY_BODY, ResponseHead
from sidecar.http.h1 import H1Server, H1ServerExchange
from sidecar.http.h1wire import END, ProtocolError, Request, RequestParser
from tests.attack import FakeTransport

_HOST = b"GET /p HTTP/1.1\r\nHost: a\r\n"

# Heads alone in their read: taken.
_ALONE = [
    _HOST + b"\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    _HOST + b"Connection: close\r\nX-A: 1\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: a\r\nUser-Agent: h2load\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
]
# Reads that are not a head alone: left to `receive`.
_OTHERS = [
    b"\r\n" + _HOST + b"\r\n",  # an empty line first
    _HOST,  # part of a head
    _HOST + b"\r\n" + _HOST + b"\r\n",  # pipelined
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",  # with its body
    b"abc",
    b"",
]


def _state(parser: RequestParser) -> tuple[object, ...]:
    return (
        bytes(parser.buf),
        parser.paused,
        parser._in_body,
        parser._framing,
        parser._remaining,
        parser._scanned,
    )


def _fields(request: Request) -> tuple[object, ...]:
    return tuple(getattr(request, name) for name in Request.__slots__)


@pytest.mark.parametrize("data", _ALONE)
def test_a_head_alone_is_taken_as_receive_takes_it(data: bytes) -> None:
    parser, general = RequestParser(), RequestParser()
    request = parser.request_alone(data)
    events = general.receive(data)
    assert request is not None
    assert _fields(request) == _fields(events[0])  # type: ignore[arg-type]
    assert events[1:] == ([END] if parser.paused else [])
    assert _state(parser) == _state(general)
    # What follows is parsed as it would be (a body, or nothing while paused).
    assert parser.receive(b"abcde") == general.receive(b"abcde")


@pytest.mark.parametrize("data", _OTHERS)
def test_any_other_read_is_left_to_receive_untouched(data: bytes) -> None:
    parser = RequestParser()
    before = _state(parser)
    assert parser.request_alone(data) is None
    assert _state(parser) == before


def test_not_taken_while_paused_in_a_body_or_with_bytes_buffered() -> None:
    head = _HOST + b"\r\n"
    paused = RequestParser()
    paused.receive(head)
    in_body = RequestParser()
    in_body.receive(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n")
    buffered = RequestParser()
    buffered.receive(b"GET / HTTP/1.1\r\n")
    for parser in (paused, in_body, buffered):
        before = _state(parser)
        assert parser.request_alone(head) is None and _state(parser) == before


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",  # 505
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",  # 501
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    ],
)
def test_a_refused_head_is_refused_the_same_way(data: bytes) -> None:
    with pytest.raises(ProtocolError) as alone:
        RequestParser().request_alone(data)
    with pytest.raises(ProtocolError) as general:
        RequestParser().receive(data)
    assert (str(alone.value), alone.value.status) == (str(general.value), general.value.status)


def test_a_head_over_the_size_limit_is_left_to_receive() -> None:
    data = _HOST + b"X: " + b"a" * 100 + b"\r\n\r\n"
    parser = RequestParser(max_head_bytes=len(data) - 1)
    assert parser.request_alone(data) is None
    with pytest.raises(ProtocolError) as refused:
        parser.receive(data)
    assert refused.value.status == 431


def _serve(data: list[bytes]) -> tuple[list[tuple[bool, bool, bytes]], FakeTransport]:
    """Each request's (request ended when the handler starts, body is the shared empty one,
    body read), for requests fed read by read."""
    seen: list[tuple[bool, bool, bytes]] = []
    transport = FakeTransport()

    async def answer(exchange: H1ServerExchange) -> None:
        ended, empty = exchange.request_ended, exchange.body is EMPTY_BODY
        body = b""
        if not empty:
            while (chunk := await exchange.body.read()) is not None:
                body += chunk
        seen.append((ended, empty, body))
        await exchange.respond(ResponseHead(200, [(b"content-length", b"2")]), last=b"ok")

    async def run() -> None:
        server = H1Server(answer, default_authority=b"backend")
        server.connection_made(transport)
        for piece in data:
            server.data_received(piece)
            for _ in range(5):
                await asyncio.sleep(0)
        server.connection_lost(None)

    asyncio.run(run())
    return seen, transport


def test_the_server_sees_a_bodyless_request_ended_with_its_head() -> None:
    seen, transport = _serve([_HOST + b"\r\n", _HOST + b"\r\n"])
    assert seen == [(True, True, b""), (True, True, b"")]
    assert bytes(transport.written).count(b"HTTP/1.1 200 OK\r\n") == 2
    assert not transport.closing


def test_a_content_length_zero_body_ends_with_its_head() -> None:
    head = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
    seen, transport = _serve([head, head])
    assert seen == [(True, False, b""), (True, False, b"")]
    assert bytes(transport.written).count(b"HTTP/1.1 200 OK\r\n") == 2


def test_a_body_that_follows_its_head_is_read_then_the_next_request() -> None:
    head = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
    seen, transport = _serve([head, b"hel", b"lo", _HOST + b"\r\n"])
    assert seen == [(False, False, b"hello"), (True, True, b"")]
    assert bytes(transport.written).count(b"HTTP/1.1 200 OK\r\n") == 2


def test_a_refused_head_alone_gets_its_status_and_the_connection_closes() -> None:
    seen, transport = _serve([b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"])
    assert seen == []
    assert bytes(transport.written).startswith(b"HTTP/1.1 505 ")
    assert transport.eof_written or transport.closing


def test_an_upgrade_alone_keeps_its_body_open_for_the_tunnel() -> None:
    exchanges: list[H1ServerExchange] = []

    async def run() -> None:
        async def hold(exchange: H1ServerExchange) -> None:
            exchanges.append(exchange)

        server = H1Server(hold, default_authority=b"backend")
        server.connection_made(FakeTransport())
        server.data_received(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        exchange = server.exchange
        assert exchange is not None and exchange.upgrade and exchange.request_ended
        assert exchange.body is not EMPTY_BODY and not exchange.body.ended
        server.connection_lost(None)
        await asyncio.sleep(0)

    asyncio.run(run())


def test_h1wire_events_for_a_head_alone_stay_request_then_end() -> None:
    events = RequestParser().receive(_HOST + b"\r\n")
    assert [type(e) for e in events] == [Request, h1wire.End] and events[1] is END
