"""The HTTP/2 hop's cheaper encoding and writing: HPACK without the dynamic table (checked with
hpack's own decoder and on the wire of a real mesh-pool connection), and one write per event-loop
turn for a response's frames. That a plaintext inbound still rejects malformed headers (upper-case
names, connection-specific headers, `te` other than trailers) is test_h2_conformance's, which runs
every rule against the inbound too."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from hyperframe.frame import Frame, HeadersFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import defaults
from sidecar.cluster import Target
from sidecar.http.exchange import RequestHead, ResponseHead
from sidecar.http.h2 import H2Protocol, H2ServerStream
from sidecar.http.hpack_literal import LiteralDecoder, LiteralEncoder
from sidecar.http.pool import plain_connector
from sidecar.outbound import mesh_pool
from tests.support import LOOPBACK

names = st.one_of(
    st.sampled_from(
        [b":method", b":path", b"content-type", b"x-request-id", b"authorization", b"cookie"]
    ),
    st.binary(min_size=1, max_size=40).map(lambda b: b.hex().encode()),
)
values = st.one_of(st.sampled_from([b"GET", b"/", b"", b"200"]), st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=20))
def test_literal_encoding_decodes_to_the_same_headers_and_keeps_credentials_out_of_the_table(
    headers,
):
    decoder = hpack.Decoder()
    decoded = decoder.decode(LiteralEncoder().encode(headers), raw=True)
    assert decoded == headers
    names = {name for name, _ in decoder.header_table.dynamic_entries}
    assert not names & {b":path", b"x-request-id", b"authorization", b"cookie"}
    for header in decoded:
        if header[0] in (b"x-request-id", b"authorization", b"cookie") and header[1]:
            # (an empty one matches the static table whole: its index says nothing)
            assert not header.indexable, header  # never indexed, here and by intermediaries


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=20), st.booleans())
def test_the_literal_decoder_reads_what_hpack_reads(headers, ours):
    """Our encoder's blocks take the fast path; hpack's (Huffman, dynamic table) fall back to
    hpack, whose dynamic table stays in step across blocks."""
    encoder = LiteralEncoder() if ours else hpack.Encoder()
    reference, decoder = hpack.Decoder(), LiteralDecoder()
    for _ in range(2):
        block = encoder.encode(headers)
        expected = reference.decode(block, raw=True)
        decoded = decoder.decode(block, raw=True)
        assert decoded == expected
        assert [isinstance(h, hpack.NeverIndexedHeaderTuple) for h in decoded] == [
            isinstance(h, hpack.NeverIndexedHeaderTuple) for h in expected
        ]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60))
def test_the_literal_decoder_fails_as_hpack_fails(block):
    reference, decoder = hpack.Decoder(), LiteralDecoder()
    reference.max_header_list_size = decoder.max_header_list_size = 100
    try:
        expected = reference.decode(block, raw=True)
    except Exception as exc:  # noqa: BLE001 - whichever hpack raises, ours must too
        with pytest.raises(type(exc)):
            decoder.decode(block, raw=True)
    else:
        assert decoder.decode(block, raw=True) == expected


def test_static_matches_are_one_byte_and_literals_are_not_huffman_coded():
    value = b"0f6b1c6e-8d9a-4b7e-9f3a-2c1d0e4f5a6b"
    block = LiteralEncoder().encode([(b":method", b"GET"), (b"x-request-id", value)])
    assert block[0] == 0x82  # :method GET is static entry 2
    assert value in block  # raw, not Huffman-coded


def test_str_names_and_values_encode_as_their_utf8_bytes_from_a_generator_too():
    """The encoder takes bytes as they are; a `str` anywhere (h2's own callers may pass one)
    makes the block again with every field encoded, never-indexed fields still so."""
    fields = [
        (b":method", b"GET"),
        ("x-name", b"v"),
        (b"x-value", "\u00e9" * 200),
        hpack.NeverIndexedHeaderTuple("k", "v"),
    ]
    block = LiteralEncoder().encode(field for field in fields)
    as_bytes = [(b":method", b"GET"), (b"x-name", b"v"), (b"x-value", "\u00e9".encode() * 200)]
    decoded = hpack.Decoder().decode(block, raw=True)
    assert decoded == [*as_bytes, (b"k", b"v")]
    assert isinstance(decoded[3], hpack.NeverIndexedHeaderTuple)
    assert block == LiteralEncoder().encode([*as_bytes, hpack.NeverIndexedHeaderTuple(b"k", b"v")])


def test_a_table_size_the_peer_lowered_is_acknowledged_first():
    encoder = LiteralEncoder()
    encoder.header_table_size = 0  # what h2 does on the peer's SETTINGS_HEADER_TABLE_SIZE 0
    block = encoder.encode([(b"a", b"b")])
    assert block[0] == 0x20  # dynamic table size update to 0 (RFC 7541 6.3)
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 0
    assert decoder.decode(block, raw=True) == [(b"a", b"b")]
    assert encoder.encode([(b"a", b"b")])[0] != 0x20  # once only


async def test_the_mesh_pool_sends_x_request_id_never_indexed_on_the_wire():
    """A real mesh-pool connection to a socket that records what arrives."""
    received = bytearray()
    got_headers = asyncio.Event()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
            if _headers_frame(bytes(received)) is not None:
                got_headers.set()
        writer.close()

    server = await asyncio.start_server(record, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    pool = mesh_pool(plain_connector(5.0))
    request_id = b"3b4f0c2e-9a1d-4c7b-8e6f-5a2b1c0d9e8f"
    head = RequestHead(
        method=b"GET",
        scheme=b"http",
        authority=b"backend",
        path=b"/",
        headers=[(b"x-request-id", request_id), (b"accept", b"*/*")],
    )
    try:
        await pool.open_stream(Target(LOOPBACK, port), head, end_stream=True)
        async with asyncio.timeout(10):
            await got_headers.wait()
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
    frame = _headers_frame(bytes(received))
    assert frame is not None
    assert request_id in frame.data  # no Huffman on the hop
    decoder = hpack.Decoder()
    decoded = {h[0]: h for h in decoder.decode(frame.data, raw=True)}
    assert not decoded[b"x-request-id"].indexable
    assert decoded[b"accept"].indexable
    assert (b"x-request-id", request_id) not in decoder.header_table.dynamic_entries


def _headers_frame(data: bytes) -> HeadersFrame | None:
    """The first HEADERS frame after the client preface, once it has arrived whole."""
    view = memoryview(data)[24:]
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            return None
        frame.parse_body(view[9 : 9 + length])
        if isinstance(frame, HeadersFrame):
            return frame
        view = view[9 + length :]
    return None


async def test_a_response_head_body_and_end_leave_in_one_write():
    """On pytest-asyncio's loop (asyncio's, not uvloop): a Python transport, whose write can be
    counted by wrapping it."""
    writes: list[bytes] = []

    async def respond(stream: H2ServerStream) -> None:
        transport = stream.proto.transport
        assert transport is not None
        write = transport.write

        def counted(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        transport.write = counted  # type: ignore[method-assign]
        await stream.respond(ResponseHead(200, [(b"content-length", b"5")]))
        await stream.write(b"hello")
        await stream.finish()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: H2Protocol(client_side=False, handler=respond), LOOPBACK, 0
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    client.send_headers(
        1,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
        end_stream=True,
    )
    writer.write(client.data_to_send())
    body = b""
    try:
        async with asyncio.timeout(10):
            ended = False
            while not ended:
                data = await reader.read(65536)
                assert data, "connection closed before the response ended"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        body += event.data
                    ended = ended or isinstance(event, h2.events.StreamEnded)
                writer.write(client.data_to_send())
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
    assert body == b"hello"
    assert len(writes) == 1, [len(w) for w in writes]


async def test_a_burst_of_streams_leaves_in_writes_of_a_few_sends_each():
    """Streams opened in one turn of the loop are written every `H2_SENDS_PER_WRITE` sends, not
    all at the turn's end: the peer starts on the first while the rest are being made (one write
    for a whole burst made a pair of sidecars take turns, each idle while the other worked)."""
    answered = 0

    async def respond(stream: H2ServerStream) -> None:
        nonlocal answered
        await stream.respond(ResponseHead(200, [(b"content-length", b"0")]), end=True)
        answered += 1

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: H2Protocol(client_side=False, handler=respond), LOOPBACK, 0
    )
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(
        lambda: H2Protocol(client_side=True), LOOPBACK, port
    )
    writes: list[int] = []
    write = transport.write

    def counted(data: bytes) -> None:
        writes.append(len(data))
        write(data)

    transport.write = counted  # type: ignore[method-assign]
    head = RequestHead(method=b"GET", scheme=b"http", authority=b"a", path=b"/", headers=[])
    burst = 4 * defaults.H2_SENDS_PER_WRITE
    try:
        streams = [client.open_stream(head, end_stream=True) for _ in range(burst)]
        assert len(writes) == 4  # before this turn ends: every H2_SENDS_PER_WRITE streams
        async with asyncio.timeout(10):
            heads = [await stream.response() for stream in streams]
    finally:
        transport.close()
        server.close()
        await server.wait_closed()
    assert [h.status for h in heads] == [200] * burst and answered == burst


def _connected_pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """A sidecar's client connection and a plain h2 server, handshaken, stream 1 open."""
    from sidecar.http.h2 import _Connection

    client = _Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    client.initiate_connection()
    server.initiate_connection()
    client.send_headers(
        1,
        [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
    )
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def test_plain_data_frames_are_what_h2_would_send_with_the_same_accounting():
    fast, server = _connected_pair()
    slow, _ = _connected_pair()
    fast.send_plain_data(1, b"hello")
    slow.send_data(1, b"hello")
    wire = fast.data_to_send()
    assert wire == slow.data_to_send()
    assert fast.local_flow_control_window(1) == slow.local_flow_control_window(1)
    assert fast.outbound_flow_control_window == slow.outbound_flow_control_window
    (event,) = server.receive_data(wire)
    assert isinstance(event, h2.events.DataReceived)
    assert (event.stream_id, event.data, event.stream_ended) == (1, b"hello", None)
    fast.end_stream(1)  # h2's state machine was left consistent
    events = server.receive_data(fast.data_to_send())
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_plain_data_past_the_window_or_on_a_closed_stream_fails_as_h2_does():
    import h2.exceptions

    client, _ = _connected_pair()
    with pytest.raises(h2.exceptions.FlowControlError):
        client.send_plain_data(1, b"x" * 70000)  # past the 65,535-byte initial window
    client.end_stream(1)
    with pytest.raises(h2.exceptions.ProtocolError):  # h2: invalid input in HALF_CLOSED_LOCAL
        client.send_plain_data(1, b"late")


def test_answers_after_a_graceful_goaway_still_arrive():
    """RFC 9113 6.8: a peer that drains sends GOAWAY (NO_ERROR, last stream 1) and still answers
    stream 1. Our client connection must deliver that answer, and the body it had queued
    (h2 itself would close the connection and call the answer a protocol error)."""
    from sidecar.http.h2 import _Connection

    client = _Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    head = [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/")]
    client.send_headers(1, head)
    server.receive_data(client.data_to_send())
    server.close_connection(last_stream_id=1)  # what a draining peer sends first …
    goaway = server.data_to_send()
    events = client.receive_data(goaway)
    assert [type(e) for e in events] == [h2.events.ConnectionTerminated]
    assert events[0].last_stream_id == 1
    client.send_data(1, b"body", end_stream=True)  # … while its request body still goes out
    assert client.data_to_send().endswith(b"body")
    # The peer's answer on stream 1, framed by hand (h2's own server is closed by its GOAWAY).
    block = hpack.Encoder().encode([(":status", "200")])
    frame = HeadersFrame(1, block)
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    events = client.receive_data(frame.serialize())
    assert [type(e) for e in events][:1] == [h2.events.ResponseReceived]
    assert dict(events[0].headers)[b":status"] == b"200"
