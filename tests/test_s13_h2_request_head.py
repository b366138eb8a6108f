"""`H2Protocol._request` builds the request's `RequestHead` from its fields by position (no
keyword dict per request): each pseudo-header field lands in its own field, by h2's events (a
request in the same read as the preface) and by the fast path (`_take_headers`) alike, an
extended CONNECT's `:protocol` too, and `http_version` is b"2"."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection

from sidecar.http.exchange import RequestHead
from sidecar.http.h2 import H2Protocol, H2ServerStream
from tests.attack import FakeTransport


class Spy(H2Protocol):
    """Records the stream ids of the header blocks `_take_headers` took."""

    taken: list[int]

    def _take_headers(self, data, start, length, stream_id, end_stream):  # type: ignore[override]
        taken = super()._take_headers(data, start, length, stream_id, end_stream)
        if taken:
            self.taken.append(stream_id)
        return taken


async def test_each_pseudo_header_field_lands_in_its_own_field() -> None:
    heads: list[RequestHead] = []

    async def handler(stream: H2ServerStream) -> None:
        heads.append(stream.request)
        await asyncio.Event().wait()

    proto = Spy(client_side=False, handler=handler)
    proto.taken = []
    proto.connection_made(FakeTransport())
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
    )
    client.initiate_connection()
    first = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"a.example"),
        (b":path", b"/one"),
        (b"x-one", b"1"),
    ]
    client.send_headers(1, first, end_stream=True)
    proto.data_received(client.data_to_send())  # with the preface: h2's RequestReceived
    second = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"http"),
        (b":authority", b"b.example"),
        (b":path", b"/chat"),
        (b"x-two", b"2"),
    ]
    client.send_headers(3, second, end_stream=False)
    proto.data_received(client.data_to_send())  # `_take_headers`
    try:
        assert proto.taken == [3]  # the first by h2's events, the second by the fast path
        await asyncio.sleep(0)  # the handlers' tasks start
        assert heads == [
            RequestHead(b"GET", b"https", b"a.example", b"/one", [(b"x-one", b"1")], None, b"2"),
            RequestHead(
                method=b"CONNECT",
                scheme=b"http",
                authority=b"b.example",
                path=b"/chat",
                headers=[(b"x-two", b"2")],
                protocol=b"websocket",
                http_version=b"2",
            ),
        ]
        assert heads[0].http_version == b"2" and heads[0].protocol is None
    finally:
        proto.connection_lost(None)
        for task in list(proto.workers):
            task.cancel()
