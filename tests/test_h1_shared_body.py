"""Per-request work cut in the HTTP/1.1 ends and the accounting (session 11): the shared empty
body of bodyless requests, the response body's callback bound once per connection, gRPC told
from the names at C level, and status lines made once."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http import h1, h1wire
from sidecar.http.accounting import RequestAccounting
from sidecar.http.exchange import EMPTY_BODY, Body, RequestHead, ResponseHead, StreamReset
from sidecar.http.h1 import H1Client, H1Server, H1ServerExchange
from sidecar.observe.stats import ClusterStats, HttpStats
from tests.attack import FakeTransport


def _pristine(body: Body) -> bool:
    """The shared empty body as it was made: ended, nothing queued or read, no error."""
    return (
        body.ended
        and body.at_end
        and body.error is None
        and body.trailers is None
        and body.on_consumed is None
        and (body.buffered, body.reads, len(body._chunks)) == (0, 0, 0)
        and body._waiter is None
    )


def test_the_shared_empty_body_cannot_be_changed():
    assert _pristine(EMPTY_BODY)
    assert EMPTY_BODY.feed(b"x") is False
    EMPTY_BODY.end([(b"x", b"1")])
    EMPTY_BODY.abort(StreamReset("gone"))
    assert EMPTY_BODY.ready() is None and EMPTY_BODY.take_whole() is None
    assert asyncio.run(EMPTY_BODY.read()) is None
    assert _pristine(EMPTY_BODY)


def test_bodyless_requests_share_the_empty_body_and_leave_it_as_it_was():
    """Pipelined requests, with and without bodies: each is read as it came, and the shared
    body is the same after all of them (no feed, end or trailers of another request reach it)."""
    seen: list[tuple[bytes, bool, bytes]] = []

    async def echo(exchange: H1ServerExchange) -> None:
        data = b""
        while (chunk := await exchange.body.read()) is not None:
            data += chunk
        seen.append((exchange.request.method, exchange.body is EMPTY_BODY, data))
        await exchange.respond(ResponseHead(200, [(b"content-length", b"0")]), end=True)

    async def run() -> bytes:
        server = H1Server(echo, default_authority=b"backend")
        transport = FakeTransport()
        server.connection_made(transport)
        server.data_received(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
            b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nde\r\n0\r\nx-t: 1\r\n\r\n"
            b"DELETE / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"
        )
        for _ in range(200):
            await asyncio.sleep(0)
        return bytes(transport.written)

    written = asyncio.run(run())
    assert seen == [
        (b"GET", True, b""),
        (b"POST", False, b"abc"),
        (b"HEAD", True, b""),
        (b"PUT", False, b"de"),
        (b"DELETE", False, b""),  # a Content-Length of 0 is a body (an empty one) of its own
        (b"OPTIONS", True, b""),
    ]
    assert written.count(b"HTTP/1.1 200 OK\r\n") == 6
    assert _pristine(EMPTY_BODY)


def test_a_client_gone_during_a_bodyless_request_cancels_it_and_not_the_shared_body():
    async def hold(exchange: H1ServerExchange) -> None:
        await asyncio.get_running_loop().create_future()

    async def run() -> None:
        server = H1Server(hold, default_authority=b"backend")
        server.connection_made(FakeTransport())
        server.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        exchange = server.exchange
        assert exchange is not None and exchange.body is EMPTY_BODY
        server.connection_lost(None)
        assert exchange.cancelled
        assert server.task is not None
        server.task.cancel()

    asyncio.run(run())
    assert _pristine(EMPTY_BODY)


def test_an_upgrade_without_a_body_gets_a_body_of_its_own_for_the_tunnel():
    seen = []

    async def record(exchange: H1ServerExchange) -> None:
        seen.append(exchange)
        await asyncio.get_running_loop().create_future()

    async def run() -> None:
        server = H1Server(record, default_authority=b"backend")
        server.connection_made(FakeTransport())
        server.data_received(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        for _ in range(5):
            await asyncio.sleep(0)
        assert server.task is not None
        server.task.cancel()

    asyncio.run(run())
    (exchange,) = seen
    assert exchange.upgrade and exchange.body is not EMPTY_BODY and not exchange.body.ended


def _client() -> tuple[H1Client, FakeTransport]:
    client = H1Client(body_buffer=4)
    transport = FakeTransport()
    paused = []
    transport.pause_reading = lambda: paused.append(True)  # type: ignore[method-assign]
    transport.resume_reading = lambda: paused.append(False)  # type: ignore[method-assign]
    transport.paused = paused  # type: ignore[attr-defined]
    client.connection_made(transport)
    return client, transport


_GET = RequestHead(b"GET", b"http", b"app", b"/", http_version=b"1.1")


def test_a_response_body_read_after_its_exchange_is_done_calls_back_nothing():
    """Once the response has ended the connection is back in the pool: its body's `on_consumed`
    is dropped (it would otherwise consult the connection's next exchange)."""

    async def run() -> None:
        client, transport = _client()
        stream = client.open(_GET, True)
        assert stream.body.on_consumed == client.on_consumed
        assert b"GET / HTTP/1.1\r\nhost: app\r\n" in transport.written
        client.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
        assert client.stream is None and stream.body.on_consumed is None
        assert stream.body.take_whole() == b"hi" and stream.body.at_end
        # The next exchange on the same connection has a body of its own, with the callback.
        following = client.open(_GET, True)
        assert following.body is not stream.body
        assert following.body.on_consumed == client.on_consumed

    asyncio.run(run())


def test_a_paused_connection_resumes_when_the_current_response_body_drains():
    async def run() -> None:
        client, transport = _client()
        stream = client.open(_GET, True)
        client.data_received(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        client.data_received(b"6\r\nabcdef\r\n")  # past the body's mark of 4: reading pauses
        assert client.reading_paused and transport.paused == [True]  # type: ignore[attr-defined]
        assert await stream.body.read() == b"abcdef"
        assert not client.reading_paused and transport.paused == [True, False]  # type: ignore[attr-defined]
        client.data_received(b"0\r\n\r\n")
        assert client.stream is None and await stream.body.read() is None

    asyncio.run(run())


def _accounting(headers: list[tuple[bytes, bytes]], access_log: bool) -> RequestAccounting:
    head = RequestHead(b"POST", b"http", b"a", b"/s/M", headers)
    on_done = (lambda record: None) if access_log else None
    return RequestAccounting(HttpStats("-"), ClusterStats("c"), head, on_done, None)


@pytest.mark.parametrize("access_log", [False, True])
@pytest.mark.parametrize(
    ("headers", "grpc"),
    [
        ([], False),
        ([(b"te", b"trailers"), (b"content-type", b"application/grpc")], True),
        ([(b"content-type", b"application/grpc+proto"), (b"x", b"1")], True),
        ([(b"content-type", b"text/plain"), (b"content-type", b"application/grpc")], False),
        ([(b"x-content-type", b"application/grpc")], False),
        ([(b"content-type", b"")], False),
    ],
)
def test_grpc_is_told_by_the_first_content_type(headers, grpc: bool, access_log: bool):
    acct = _accounting(headers, access_log)
    assert acct.grpc is grpc
    assert (acct.record is not None) is access_log
    assert acct.counts_bodies is (grpc or access_log)


def test_each_status_line_is_what_response_head_makes():
    for status, line in h1._STATUS_LINES.items():
        assert line + b"\r\n\r\n" == h1wire.response_head(status, h1._PHRASES[status], [])
    assert h1wire.head_bytes(b"HTTP/1.1 599 ", [(b"a", b"1")]) == (
        h1wire.response_head(599, b"", [(b"a", b"1")])
    )
