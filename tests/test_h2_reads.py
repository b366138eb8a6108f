"""What `H2Protocol._take_headers` remembers of a header block the HPACK decoder answered from
its kept blocks (`LiteralDecoder.hit`, `LiteralDecoder.reads`): a repeated block is read once,
each caller still gets a list of its own, and nothing read before outlives a change of the
dynamic table (the same octets then name other fields) nor is taken for a block read with
other pseudo-header defaults (a request's block against trailers' of the same octets)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import h2.config
import h2.connection
import pytest

import sidecar.http.h2 as h2mod
from sidecar.http.exchange import RequestHead, ResponseHead
from sidecar.http.h2 import H2Protocol, H2ServerStream
from tests.attack import FakeTransport

HEADERS, END_STREAM, END_HEADERS = 0x1, 0x1, 0x4


def headers_frame(stream_id: int, block: bytes, end_stream: bool = True) -> bytes:
    flags = END_HEADERS | (END_STREAM if end_stream else 0)
    n = len(block)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, HEADERS, flags, stream_id) + block


def data_frame(stream_id: int, data: bytes, end_stream: bool = False) -> bytes:
    n = len(data)
    flags = END_STREAM if end_stream else 0
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, 0, flags, stream_id) + data


def indexed_literal(name: bytes, value: bytes) -> bytes:
    """A literal with incremental indexing and a literal name: it becomes dynamic index 62."""
    return b"\x40" + bytes([len(name)]) + name + bytes([len(value)]) + value


STATUS_200 = b"\x88"
NEWEST = b"\xbe"  # dynamic index 62: the newest entry, whatever it is
CONTENT_LENGTH_0 = b"\x0f\x0d\x010"  # content-length: 0, without indexing
STATUS_103 = b"\x08\x03103"  # :status 103, without indexing
REPEATED = STATUS_200 + NEWEST + CONTENT_LENGTH_0  # changes nothing in the table: kept


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """How many times sidecar.http.h2's function `name` is called from now on (`[n]`)."""
    calls = [0]
    function = getattr(h2mod, name)

    def counting(*args: Any) -> Any:
        calls[0] += 1
        return function(*args)

    monkeypatch.setattr(h2mod, name, counting)
    return calls


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times `_header_block` read a block."""
    return count_calls(monkeypatch, "_header_block")


def head(path: bytes) -> RequestHead:
    return RequestHead(method=b"GET", scheme=b"http", authority=b"b", path=path, headers=[])


async def connected_client(trusted: bool) -> tuple[H2Protocol, FakeTransport]:
    proto = H2Protocol(client_side=True, trusted=trusted)
    wire = FakeTransport()
    proto.connection_made(wire)
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    proto.open_stream(head(b"/first"), end_stream=True)  # h2 sends the first (state machine)
    proto._flush_now()
    server.receive_data(bytes(wire.written))
    proto.data_received(server.data_to_send())
    return proto, wire


@pytest.mark.parametrize("trusted", [True, False])
async def test_a_repeated_response_block_is_read_once_and_handed_out_unshared(
    counted: list[int], trusted: bool
) -> None:
    proto, _ = await connected_client(trusted)
    decoder = proto.conn.decoder
    heads: list[ResponseHead] = []
    informational: list[ResponseHead] = []

    def respond(block: bytes, interim: bytes | None = None) -> ResponseHead:
        stream = proto.open_stream(head(b"/r"), end_stream=True)
        stream.on_informational = informational.append
        proto._flush_now()
        sid = stream.stream_id
        if interim is not None:
            proto.data_received(headers_frame(sid, interim, end_stream=False))
        proto.data_received(headers_frame(sid, block))
        assert not proto.closed
        assert stream.response_head.done() and stream.remote_done
        assert stream.response_ended_with_head
        got = stream.response_head.result()
        # The caller's own list: changing it changes nothing read later.
        got.headers.append((b"x-mutated", b"yes"))
        heads.append(got)
        return got

    respond(STATUS_200 + indexed_literal(b"x-a", b"1"), None)  # table: x-a 1
    before = counted[0]
    for _ in range(5):
        got = respond(REPEATED)
        assert got.status == 200
        assert got.headers[:-1] == [(b"x-a", b"1"), (b"content-length", b"0")]
    # Read the first time, the second (a hit: remembered), then no more.
    assert counted[0] - before == 2
    assert len({id(h.headers) for h in heads}) == len(heads)
    assert decoder.reads
    # The table changes: the same octets now say x-a 2; nothing read before is taken.
    respond(STATUS_200 + indexed_literal(b"x-a", b"2"))
    assert not decoder.reads
    for _ in range(3):
        got = respond(REPEATED)
        assert got.headers[:-1] == [(b"x-a", b"2"), (b"content-length", b"0")]
    # An informational block, repeated, is informational every time; the final answers too.
    for n in range(4):
        got = respond(REPEATED, STATUS_103 + NEWEST)
        assert got.status == 200
        assert len(informational) == n + 1
        assert informational[-1].status == 103
        assert informational[-1].headers[:1] == [(b"x-a", b"2")]


async def test_a_remembered_content_length_still_guards_the_body() -> None:
    """content-length: 0 read from a remembered block: a body after it is still h2's error."""
    proto, _ = await connected_client(True)
    streams = []
    for _ in range(3):
        stream = proto.open_stream(head(b"/r"), end_stream=True)
        proto._flush_now()
        block = STATUS_200 + CONTENT_LENGTH_0
        proto.data_received(headers_frame(stream.stream_id, block, end_stream=False))
        streams.append(stream)
    assert not proto.closed
    assert proto.conn.decoder.reads  # the third block's read was remembered
    proto.data_received(data_frame(streams[-1].stream_id, b"x", end_stream=True))
    assert streams[-1].reset_error is not None or proto.closed


async def test_trailers_and_a_request_of_the_same_octets_are_read_each_their_way(
    counted: list[int],
) -> None:
    """A server reads the block as trailers (no pseudo-header defaults) and then as a request:
    the request's read has its defaults (:protocol None), not the trailers'."""
    seen: list[RequestHead] = []
    done = asyncio.Event()

    async def handler(stream: H2ServerStream) -> None:
        seen.append(stream.request)
        if len(seen) == 4:
            done.set()

    proto = H2Protocol(client_side=False, handler=handler, trusted=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.send_headers(
        1,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"b"), (b":path", b"/h2")],
        end_stream=True,
    )
    proto.data_received(client.data_to_send())
    # GET, http, /, :authority backend without indexing: nothing changes the table.
    block = b"\x82\x86\x84\x01\x07backend"
    proto.data_received(headers_frame(3, block, end_stream=False))
    proto.data_received(headers_frame(3, block))  # trailers (a trusted peer: not validated)
    proto.data_received(headers_frame(5, block))  # a request again, the same octets
    proto.data_received(headers_frame(7, block))
    assert not proto.closed
    await asyncio.wait_for(done.wait(), 5)
    for request in seen[1:]:
        assert (request.method, request.path, request.authority, request.protocol) == (
            b"GET",
            b"/",
            b"backend",
            None,
        )
        request.headers.append((b"x-mutated", b"1"))
    assert all(r.headers in ([], [(b"x-mutated", b"1")]) for r in seen)
    assert len({id(r.headers) for r in seen}) == 4
