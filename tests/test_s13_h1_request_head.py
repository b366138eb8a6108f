"""The exchange's `RequestHead` as `H1Server` builds it from a request (session 13: its fields
are passed by position, so each must land where it belongs): method, scheme, authority (from
Host, the absolute form, or the listener's default), path, headers without Host, the
extended-CONNECT protocol of a websocket upgrade, and the HTTP version the client spoke.
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http.exchange import RequestHead
from sidecar.http.h1 import H1Server, H1ServerExchange
from tests.attack import FakeTransport


def _head(request: bytes) -> RequestHead:
    async def run() -> RequestHead:
        async def hold(exchange: H1ServerExchange) -> None:
            await asyncio.get_running_loop().create_future()

        server = H1Server(hold, default_authority=b"backend")
        server.connection_made(FakeTransport())
        server.data_received(request)
        assert server.exchange is not None and server.task is not None
        server.task.cancel()
        return server.exchange.request

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (
            b"GET /a?b HTTP/1.1\r\nX-A: 1\r\nHost: h:1\r\nAccept: */*\r\n\r\n",
            RequestHead(b"GET", b"http", b"h:1", b"/a?b", [(b"x-a", b"1"), (b"accept", b"*/*")]),
        ),
        (
            b"POST /p HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            RequestHead(b"POST", b"http", b"backend", b"/p", [(b"content-length", b"0")]),
        ),
        (
            b"GET http://abs:2/x HTTP/1.1\r\nHost: other\r\n\r\n",
            RequestHead(b"GET", b"http", b"abs:2", b"/x", []),
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            RequestHead(
                b"CONNECT",
                b"http",
                b"h",
                b"/ws",
                [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")],
                b"websocket",
            ),
        ),
    ],
)
def test_the_request_head_has_each_part_in_its_place(request_bytes: bytes, expected: RequestHead):
    head = _head(request_bytes)
    expected.http_version = b"1.0" if b"HTTP/1.0\r\n" in request_bytes else b"1.1"
    assert head == expected
