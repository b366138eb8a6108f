"""What `H2Protocol._take_headers` remembers of a header block the HPACK decoder answered from a
template (`LiteralDecoder.varied`: alike but for the value of one never-indexed field, a peer
sidecar's request and its unique x-request-id): the block is read once per template, each
request still gets its own value and a list of its own, a value the read looks at (a pseudo-header
field's, content-length's) is read every time, and nothing read outlives a change of the
dynamic table or is taken for a block read with other pseudo-header defaults."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import pytest

from sidecar.http.exchange import RequestHead
from sidecar.http.h2 import H2Protocol, H2ServerStream
from tests.attack import FakeTransport
from tests.test_h2_reads import counted, data_frame, headers_frame, indexed_literal

__all__ = ["counted"]  # the fixture

GET_HTTP_SLASH = b"\x82\x86\x84\x01\x07backend"  # :authority backend without indexing


def never_indexed(name: bytes, value: bytes) -> bytes:
    return b"\x10" + bytes([len(name)]) + name + bytes([len(value)]) + value


def request_id(n: int) -> bytes:
    return never_indexed(b"x-request-id", b"%036d" % n)


class Server:
    """A server connection (trusted: a peer sidecar's) and the requests it was handed. Its
    first header block is h2's (the connection opens with it); `_take_headers` takes the
    others."""

    def __init__(self, trusted: bool = True) -> None:
        self.seen: list[RequestHead] = []
        self.streams: list[H2ServerStream] = []
        self.changed = asyncio.Event()

        async def handler(stream: H2ServerStream) -> None:
            self.seen.append(stream.request)
            self.streams.append(stream)
            self.changed.set()

        self.proto = H2Protocol(client_side=False, handler=handler, trusted=trusted)
        self.proto.connection_made(FakeTransport())
        client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        client.initiate_connection()
        self.proto.data_received(client.data_to_send())
        self.next_id = 1

    async def request(self, block: bytes, end_stream: bool = True) -> RequestHead:
        count = len(self.seen)
        self.proto.data_received(headers_frame(self.next_id, block, end_stream))
        self.next_id += 2
        assert not self.proto.closed
        while len(self.seen) == count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)
        return self.seen[-1]


async def test_requests_alike_but_for_their_id_are_read_once(counted: list[int]) -> None:
    server = Server()
    await server.request(indexed_literal(b"x-app", b"1") + GET_HTTP_SLASH)  # x-app: index 62
    block = GET_HTTP_SLASH + b"\xbe" + request_id(0) + b"\xbe"
    before = counted[0]
    for n in range(6):
        block = GET_HTTP_SLASH + b"\xbe" + request_id(n) + b"\xbe"
        request = await server.request(block)
        assert (request.method, request.path, request.authority) == (b"GET", b"/", b"backend")
        assert request.headers == [
            (b"x-app", b"1"),
            (b"x-request-id", b"%036d" % n),
            (b"x-app", b"1"),
        ]
        request.headers.append((b"x-mutated", b"1"))  # the caller's own list
    # Decoded anew the first time, answered from its template the second (read and kept),
    # then no more.
    assert counted[0] - before == 2
    assert server.proto.conn.decoder.varied_reads
    assert len({id(r.headers) for r in server.seen}) == len(server.seen)
    # The table changes: the same octets now say x-app 2; nothing read before is taken.
    await server.request(indexed_literal(b"x-app", b"2") + GET_HTTP_SLASH)
    assert not server.proto.conn.decoder.varied_reads
    for n in range(3):
        request = await server.request(GET_HTTP_SLASH + b"\xbe" + request_id(n) + b"\xbe")
        assert request.headers == [
            (b"x-app", b"2"),
            (b"x-request-id", b"%036d" % n),
            (b"x-app", b"2"),
        ]


@pytest.mark.parametrize("name", [b":path", b"content-length"])
async def test_a_value_the_read_looks_at_is_read_every_time(
    counted: list[int], name: bytes
) -> None:
    server = Server()
    before = counted[0]
    for n in range(1, 9):
        block = b"\x82\x86\x01\x07backend" + never_indexed(name, b"%d" % n) + b"\x84"[: n % 2]
        request = await server.request(block, end_stream=name == b":path")
        if name == b":path":
            assert request.path == b"/" if n % 2 else request.path == b"%d" % n
        else:
            h2_stream = server.proto.conn.streams[server.next_id - 2]
            assert h2_stream._expected_content_length == n
            assert request.headers == [(b"content-length", b"%d" % n)]
    assert counted[0] - before == 8
    assert not server.proto.conn.decoder.varied_reads


async def test_a_body_longer_than_a_varied_content_length_is_still_refused() -> None:
    server = Server()
    for n in (3, 4):
        await server.request(GET_HTTP_SLASH + never_indexed(b"content-length", b"%d" % n), False)
    stream_id = server.next_id - 2
    server.proto.data_received(data_frame(stream_id, b"12345", end_stream=True))
    assert server.streams[-1].reset_error is not None or server.proto.closed


async def test_trailers_and_requests_of_a_template_are_read_each_their_way(
    counted: list[int],
) -> None:
    """Trailers answered from a template (no pseudo-header defaults), then requests of the
    same shape: each read with its own defaults (:method GET, :protocol None for the
    requests)."""
    server = Server()
    for _ in range(2):
        await server.request(GET_HTTP_SLASH, end_stream=False)  # streams 1 and 3, open
    for stream_id, n in ((1, 6), (3, 7)):  # the second answered from the template
        server.proto.data_received(headers_frame(stream_id, b"\x84" + request_id(n)))
        assert server.streams[stream_id // 2].trailers == [
            (b":path", b"/"),
            (b"x-request-id", b"%036d" % n),
        ]
    assert server.proto.conn.decoder.varied_reads
    for n in range(3):
        request = await server.request(b"\x84" + request_id(n))
        assert (request.method, request.path, request.protocol) == (b"GET", b"/", None)
        assert request.headers == [(b"x-request-id", b"%036d" % n)]
