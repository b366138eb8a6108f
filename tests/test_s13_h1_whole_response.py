"""A response body sent whole with its head (`H1ServerExchange.respond(head, last=...)`) under a
Content-Length is checked against it with no framing object made for it (session 13): the same
bytes when it fits, the same refusals when it does not, and nothing written after either; a
HEAD's or a 204's body is still held to none.
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http.exchange import ResponseHead, StreamReset
from sidecar.http.h1 import H1Server, H1ServerExchange
from tests.attack import FakeTransport


async def _exchange(method: bytes = b"GET") -> tuple[H1Server, H1ServerExchange, FakeTransport]:
    """A server holding one request (its handler never answers: the test does)."""

    async def hold(exchange: H1ServerExchange) -> None:
        await asyncio.get_running_loop().create_future()

    server = H1Server(hold, default_authority=b"backend")
    transport = FakeTransport()
    server.connection_made(transport)
    server.data_received(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert server.exchange is not None
    return server, server.exchange, transport


def _stop(server: H1Server) -> None:
    assert server.task is not None
    server.task.cancel()


def test_a_whole_body_of_its_length_goes_with_the_head_in_one_write():
    async def run() -> None:
        server, exchange, transport = await _exchange()
        await exchange.respond(ResponseHead(200, [(b"content-length", b"5")]), last=b"hello")
        assert bytes(transport.written) == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
        assert exchange.finished
        with pytest.raises(StreamReset, match="^the response has ended$"):
            await exchange.write(b"x")
        _stop(server)

    asyncio.run(run())


@pytest.mark.parametrize(
    ("length", "last", "error"),
    [
        (b"9", b"hello", "body shorter than its Content-Length"),
        (b"3", b"hello", "body longer than its Content-Length"),
        (b"0", b"x", "body longer than its Content-Length"),
        (b"1", b"", "body shorter than its Content-Length"),
    ],
)
def test_a_whole_body_not_of_its_length_is_refused_and_nothing_is_written(
    length: bytes, last: bytes, error: str
):
    async def run() -> None:
        server, exchange, transport = await _exchange()
        with pytest.raises(StreamReset, match=f"^{error}$"):
            await exchange.respond(ResponseHead(200, [(b"content-length", length)]), last=last)
        assert bytes(transport.written) == b""
        assert exchange.finished  # as before: nothing more is framed after the refusal
        await exchange.finish(None)  # (a no-op once finished)
        with pytest.raises(StreamReset, match="^the response has ended$"):
            await exchange.finish(None, b"x")
        assert bytes(transport.written) == b""
        _stop(server)

    asyncio.run(run())


def test_an_empty_whole_body_of_length_zero_is_the_head_alone():
    async def run() -> None:
        server, exchange, transport = await _exchange()
        await exchange.respond(ResponseHead(200, [(b"content-length", b"0")]), last=b"")
        assert bytes(transport.written) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        _stop(server)

    asyncio.run(run())


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204)])
def test_a_bodiless_answer_keeps_its_content_length_and_takes_no_body(method: bytes, status: int):
    async def run() -> None:
        server, exchange, transport = await _exchange(method)
        head = ResponseHead(status, [(b"content-length", b"5")])
        with pytest.raises(StreamReset, match="^body longer than its Content-Length$"):
            await exchange.respond(head, last=b"hello")
        assert bytes(transport.written) == b""
        _stop(server)
        server, exchange, transport = await _exchange(method)
        await exchange.respond(ResponseHead(status, [(b"content-length", b"5")]), last=b"")
        assert bytes(transport.written).endswith(b"content-length: 5\r\n\r\n")
        _stop(server)

    asyncio.run(run())
