"""What `sidecar.http.h2` keeps as plain attributes instead of asking h2 per request, and the
stream bookkeeping done once per stream, checked against h2's own books.

- The settings in force (`_Connection.remote_max_streams`, `local_initial_window`, ...) follow
  every SETTINGS exchange as h2's `Settings` do: the peer's new values once h2 acknowledges
  them, ours once the peer acknowledges them; new streams get the windows in force.
- A client connection is `available` up to the peer's MAX_CONCURRENT_STREAMS, as h2 counts.
- A stream done at both ends before its END_STREAM left (a `finish` waiting for window while
  the client ends its body) is still forgotten by h2 once the END_STREAM leaves.
- A lone stream's last frame is written at once; with other streams open, at the end of the turn.
- What the request path does instead of h2 is compared with h2 doing it: a stream made here is
  h2's stream (its attributes as h2's `__init__`s set them), a forgotten stream is remembered in
  h2's bounded closed-stream table as h2 would, credit returns h2's window updates, a header
  block's content-length and decoding errors are h2's, and a small last chunk leaves the stream
  and the windows as h2's `send_data` leaves them.
"""

from __future__ import annotations

import asyncio
import random
import struct

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
import h2.windows
import hpack
import pytest

from sidecar.http.exchange import RequestHead, ResponseHead
from sidecar.http.h2 import H2Protocol, H2ServerStream, _Connection, _decode_error, _setting
from sidecar.http.hpack_literal import LiteralDecoder
from tests.attack import DATA, END_HEADERS, END_STREAM, HEADERS, WINDOW_UPDATE, FakeTransport, frame

DEADLINE = 5.0  # seconds: a condition not met by then is a failure
CODES = h2.settings.SettingCodes


def settings_in_force(conn: h2.connection.H2Connection) -> dict[str, int]:
    """The four settings the sidecar keeps, read from h2's `Settings`."""
    return {
        "local_max_streams": _setting(conn.local_settings, CODES.MAX_CONCURRENT_STREAMS, 2**32 + 1),
        "remote_max_streams": _setting(
            conn.remote_settings, CODES.MAX_CONCURRENT_STREAMS, 2**32 + 1
        ),
        "local_initial_window": _setting(conn.local_settings, CODES.INITIAL_WINDOW_SIZE, 65535),
        "remote_initial_window": _setting(conn.remote_settings, CODES.INITIAL_WINDOW_SIZE, 65535),
    }


def kept(conn: h2.connection.H2Connection) -> dict[str, int]:
    return {name: getattr(conn, name) for name in settings_in_force(conn)}


def h2_end(settings: dict[int, int], client_side: bool) -> h2.connection.H2Connection:
    """A plain h2 connection (the peer in these tests), its preface and settings queued."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values=settings)
    conn.initiate_connection()
    return conn


def h2_client(settings: dict[int, int]) -> h2.connection.H2Connection:
    return h2_end(settings, client_side=True)


def h2_server(settings: dict[int, int]) -> h2.connection.H2Connection:
    return h2_end(settings, client_side=False)


def request(client: h2.connection.H2Connection, stream_id: int, end: bool) -> None:
    headers = [
        (b":method", b"GET" if end else b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"backend"),
        (b":path", b"/"),
    ]
    client.send_headers(stream_id, headers, end_stream=end)


async def _hold(stream: H2ServerStream) -> None:
    await asyncio.Event().wait()


async def test_the_settings_kept_follow_both_sides_settings_as_h2_puts_them_in_force() -> None:
    client = h2_client({CODES.MAX_CONCURRENT_STREAMS: 3, CODES.INITIAL_WINDOW_SIZE: 1000})
    proto = H2Protocol(client_side=False, handler=_hold, max_concurrent_streams=50)
    wire = FakeTransport()
    proto.connection_made(wire)
    conn = proto.conn
    try:
        assert kept(conn) == settings_in_force(conn)
        assert conn.local_max_streams == 50
        proto.data_received(client.data_to_send())
        assert kept(conn) == settings_in_force(conn)
        assert (conn.remote_max_streams, conn.remote_initial_window) == (3, 1000)

        # The client changes its window; we change ours, in force once the client acknowledges.
        client.update_settings({CODES.INITIAL_WINDOW_SIZE: 2000})
        proto.data_received(client.data_to_send())
        assert conn.remote_initial_window == 2000
        conn.update_settings({CODES.INITIAL_WINDOW_SIZE: 5000})
        local_before = conn.local_initial_window
        proto._flush_now()
        client.receive_data(bytes(wire.written))  # our settings, and the acknowledgement
        assert conn.local_initial_window == local_before  # not acknowledged yet
        request(client, 1, end=True)
        proto.data_received(client.data_to_send())  # its acknowledgement, then a request
        assert kept(conn) == settings_in_force(conn)
        assert conn.local_initial_window == 5000
        stream = conn.streams[1]
        assert stream.outbound_flow_control_window == 2000
        assert stream._inbound_window_manager.max_window_size == 5000
    finally:
        proto.connection_lost(None)


async def test_a_client_connection_is_available_up_to_the_peers_stream_limit() -> None:
    server = h2_server({CODES.MAX_CONCURRENT_STREAMS: 2})
    proto = H2Protocol(client_side=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    try:
        server.receive_data(bytes(wire.written))
        proto.data_received(server.data_to_send())
        assert proto.conn.remote_max_streams == 2
        head = RequestHead(method=b"GET", scheme=b"http", authority=b"b", path=b"/", headers=[])
        first = proto.open_stream(head, end_stream=True)
        assert proto.available
        proto.open_stream(head, end_stream=True)
        assert not proto.available
        assert proto.conn.open_outbound_streams == 2
        # The first answer ends its stream: a slot is free again.
        proto._flush_now()
        server.receive_data(bytes(wire.written))
        server.send_headers(first.stream_id, [(b":status", b"204")], end_stream=True)
        proto.data_received(server.data_to_send())
        assert first.stream_id not in proto.conn.streams
        assert proto.available
    finally:
        proto.connection_lost(None)


async def test_a_stream_whose_end_stream_waited_for_window_is_forgotten_once_it_leaves() -> None:
    client = h2_client({CODES.INITIAL_WINDOW_SIZE: 0})
    request(client, 1, end=False)  # a POST still sending
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def answer(stream: H2ServerStream) -> None:
        await stream.respond(ResponseHead(200, [(b"content-length", b"5")]))
        await stream.finish(last=b"hello")  # waits for the client's window
        finished.set_result(None)

    proto = H2Protocol(client_side=False, handler=answer)
    wire = FakeTransport()
    proto.connection_made(wire)
    try:
        proto.data_received(client.data_to_send())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while 1 not in proto._window_waiters:
            assert loop.time() < deadline, "the body did not wait for window"
            await asyncio.sleep(0.01)
        proto.data_received(frame(DATA, 0x01, 1))  # the client ends its body
        assert 1 not in proto.streams  # done at both ends ...
        assert not proto.conn.streams[1].closed  # ... but its END_STREAM has not left
        proto.data_received(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 5)))
        await asyncio.wait_for(finished, DEADLINE)
        assert 1 not in proto.conn.streams
        assert 1 in proto.conn._closed_streams
    finally:
        proto.connection_lost(None)


async def _until(condition: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, what
        await asyncio.sleep(0)


async def handled(proto: H2Protocol) -> None:
    """Every handler the server connection started has ended: each of its tasks waits for a
    next stream (or has ended)."""
    await _until(lambda: len(proto._idle_workers) == len(proto.workers), "the handler is on")


async def test_a_lone_streams_last_frame_leaves_at_once_others_at_the_end_of_the_turn() -> None:
    """At a low rate a connection carries one exchange at a time: its last frame is written when
    it is queued, so the peer starts on it before this turn's bookkeeping. With other streams
    open, the turn's frames leave together at its end (one write, one wake-up of the peer)."""
    server = h2_server({})
    proto = H2Protocol(client_side=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    head = RequestHead(method=b"GET", scheme=b"http", authority=b"b", path=b"/", headers=[])
    try:
        proto.data_received(server.data_to_send())
        proto._flush_now()
        server.receive_data(bytes(wire.written))  # the preface, settings and their ack
        wire.written.clear()
        proto.open_stream(head, end_stream=True)
        assert wire.written, "the lone request waited for the end of the turn"
        server.receive_data(bytes(wire.written))
        wire.written.clear()
        proto.open_stream(head, end_stream=True)
        assert not wire.written, "with another stream open, the request did not wait"
        await _until(lambda: wire.written, "the second request was never written")
        events = server.receive_data(bytes(wire.written))
        assert [type(e).__name__ for e in events] == ["RequestReceived", "StreamEnded"]
    finally:
        proto.connection_lost(None)

    client = h2_client({})
    request(client, 1, end=True)
    written_when_answered: list[bytes] = []
    wire = FakeTransport()

    async def answer(stream: H2ServerStream) -> None:
        await stream.respond(ResponseHead(200, [(b"content-length", b"5")]))
        await stream.finish(last=b"hello")
        written_when_answered.append(bytes(wire.written))

    proto = H2Protocol(client_side=False, handler=answer)
    proto.connection_made(wire)
    try:
        proto.data_received(client.data_to_send())
        await _until(lambda: written_when_answered, "the handler did not answer")
        events = client.receive_data(written_when_answered[0])
        names = [type(e).__name__ for e in events]
        assert names[-3:] == ["ResponseReceived", "DataReceived", "StreamEnded"], names
    finally:
        proto.connection_lost(None)


def _sidecar_connection(client_side: bool) -> _Connection:
    return _Connection(h2.config.H2Configuration(client_side=client_side, header_encoding=None))


def test_a_stream_made_here_is_the_stream_h2_makes() -> None:
    """`new_stream` makes h2's stream, state machine and window manager without their
    `__init__`s: the same attributes with the same values as h2's `_begin_new_stream` gives
    them, with the windows and frame size in force."""
    conn = _sidecar_connection(client_side=True)
    conn.local_initial_window, conn.remote_initial_window = 1000, 2000
    conn.max_outbound_frame_size = 32768
    ours = conn.new_stream(7)
    theirs = h2.stream.H2Stream(
        7, config=conn.config, inbound_window_size=1000, outbound_window_size=2000
    )
    theirs.max_outbound_frame_size = 32768
    assert conn.streams[7] is ours
    assert isinstance(ours, h2.stream.H2Stream)
    assert isinstance(ours.state_machine, h2.stream.H2StreamStateMachine)
    assert isinstance(ours._inbound_window_manager, h2.windows.WindowManager)
    mine, h2s = dict(vars(ours)), dict(vars(theirs))
    assert vars(mine.pop("state_machine")) == vars(h2s.pop("state_machine"))
    assert vars(mine.pop("_inbound_window_manager")) == vars(h2s.pop("_inbound_window_manager"))
    assert mine == h2s
    assert ours.open is False and ours.closed is False  # h2's properties read it as IDLE


def test_forgotten_streams_are_remembered_as_h2s_bounded_table_remembers_them() -> None:
    """`forget` puts who closed a stream into h2's `SizeLimitDict` without its `__setitem__`:
    the table holds the same streams, in the same order, as h2's own insertion leaves it, and
    never more than its limit."""
    conn = _sidecar_connection(client_side=False)
    limit = conn.MAX_CLOSED_STREAMS
    reference = h2.utilities.SizeLimitDict(size_limit=limit)
    closers = (h2.stream.StreamClosedBy.SEND_END_STREAM, h2.stream.StreamClosedBy.RECV_END_STREAM)
    for n in range(limit + 50):
        stream_id = 2 * n + 1
        stream = conn.new_stream(stream_id)
        stream.state_machine.state = h2.stream.StreamState.CLOSED
        stream.state_machine.stream_closed_by = closers[n % 2]
        conn.forget(stream_id)
        reference[stream_id] = closers[n % 2]
        assert stream_id not in conn.streams
    assert list(conn._closed_streams.items()) == list(reference.items())
    assert len(conn._closed_streams) == limit
    open_stream = conn.new_stream(9999)
    conn.forget(9999)  # not closed: kept
    assert conn.streams[9999] is open_stream and 9999 not in conn._closed_streams


def test_credit_gives_the_window_updates_h2s_window_managers_give() -> None:
    """`credit` asks h2's window managers only when an update may be due: over many reads of
    random sizes (the connection's and an open stream's windows, consumed as received data
    consumes them), the WINDOW_UPDATE increments and the managers' books are h2's own."""
    rng = random.Random(7)
    for window in (65535, 1000, 10, 1):
        conn = _sidecar_connection(client_side=False)
        conn._inbound_flow_control_window_manager = h2.windows.WindowManager(window)
        stream = conn.new_stream(1)
        stream.state_machine.state = h2.stream.StreamState.OPEN
        stream._inbound_window_manager = h2.windows.WindowManager(window)
        ref_conn, ref_stream = h2.windows.WindowManager(window), h2.windows.WindowManager(window)
        for _ in range(500):
            ours = (conn._inbound_flow_control_window_manager, stream._inbound_window_manager)
            size = rng.randint(0, min(m.current_window_size for m in ours))
            for manager in (*ours, ref_conn, ref_stream):
                manager.window_consumed(size)
            conn._data_to_send = bytearray()
            conn.credit(1, size)
            expected = bytearray()
            increment = ref_conn.process_bytes(size)
            if increment:
                expected += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", increment))
            increment = ref_stream.process_bytes(size)
            if increment:
                expected += frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", increment))
            assert conn._data_to_send == expected
            assert [vars(m) for m in ours] == [vars(ref_conn), vars(ref_stream)]


class _ErrorSpy(H2Protocol):
    """The server protocol, noting the protocol errors it ends connections with."""

    errors: list[str]

    def _protocol_error(self, exc: h2.exceptions.ProtocolError, terminate: bool = False) -> None:
        self.errors.append(f"{type(exc).__name__}: {exc}")
        super()._protocol_error(exc, terminate)


REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"b"), (b":path", b"/")]


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("ended", [False, True])
@pytest.mark.parametrize(
    "fields",
    [
        [],
        [(b"content-length", b"10")],
        [(b"content-length", b"0"), (b"x", b"y")],
        [(b"content-length", b"10"), (b"content-length", b"10")],
        [(b"content-length", b"10"), (b"content-length", b"11")],
        [(b"content-length", b"ten")],
        [(b"content-length", b"-1")],
        [(b"content-length", b" 1")],
        [(b"content-length", b"1" * 5000)],  # digits, more than int() reads
        [(b":status", b"103")],
    ],
)
async def test_a_request_blocks_content_length_and_errors_are_h2s(
    fields: list[tuple[bytes, bytes]], ended: bool, trusted: bool
) -> None:
    """The content-length set up (or the error raised) for a request's header block taken by
    `_take_headers` is what h2 sets up (or raises, with its message) for the same block. The
    connection's first request opens it (h2's, not the fast path's): the block is the second."""
    encoder = hpack.Encoder()
    first = frame(HEADERS, END_HEADERS | END_STREAM, 1, encoder.encode(REQUEST))
    flags = END_HEADERS | (END_STREAM if ended else 0)
    wire = first + frame(HEADERS, flags, 3, encoder.encode([*REQUEST, *fields]))
    oracle = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=not trusted,
            normalize_inbound_headers=not trusted,
        )
    )
    oracle.initiate_connection()
    client = h2_client({})
    preface = client.data_to_send()
    try:
        oracle.receive_data(preface + wire)
        expected: object = oracle.streams[3]._expected_content_length
    except h2.exceptions.ProtocolError as exc:
        expected = f"{type(exc).__name__}: {exc}"
    proto = _ErrorSpy(client_side=False, handler=_hold, trusted=trusted)
    proto.errors = []
    proto.connection_made(FakeTransport())
    try:
        proto.data_received(preface)
        proto.data_received(wire)
        if proto.errors:
            assert proto.errors == [expected]
        else:
            assert proto.conn.streams[3]._expected_content_length == expected
    finally:
        proto.connection_lost(None)


def test_a_decoding_error_is_translated_as_h2_translates_it() -> None:
    """`_take_headers` decodes with the connection's decoder and translates its errors with
    `_decode_error`: the class and message h2's `_decode_headers` gives, for an HPACK bomb (a
    list over the limit) and for a malformed block."""
    for block, limit in ((hpack.Encoder().encode([(b"a", b"x" * 200)]), 100), (b"\xbf", 65536)):
        decoder = LiteralDecoder()
        decoder.max_header_list_size = limit
        with pytest.raises(h2.exceptions.ProtocolError) as theirs:
            h2.connection._decode_headers(decoder, block)
        decoder = LiteralDecoder()
        decoder.max_header_list_size = limit
        with pytest.raises(Exception) as raised:
            decoder.decode(block, raw=True)
        ours = _decode_error(raised.value)
        assert type(ours) is type(theirs.value)
        assert str(ours) == str(theirs.value)


@pytest.mark.parametrize("request_ended", [True, False])
async def test_small_chunks_leave_h2s_books_as_h2s_send_data_leaves_them(
    request_ended: bool,
) -> None:
    """`write` and `finish(last=...)` send a chunk that fits as one DATA frame (with
    END_STREAM for the last) at once (`send_now`): the frames, the stream's state and who
    closed it, and both send windows are what h2's `send_data` makes of the same stream."""
    states: list[tuple[object, ...]] = []
    wire = FakeTransport()

    async def answer(stream: H2ServerStream) -> None:
        await stream.respond(ResponseHead(200, [(b"content-length", b"5")]))
        h2_stream = stream.proto.conn.streams[1]
        await stream.write(b"hel")
        await stream.finish(last=b"lo")
        machine = h2_stream.state_machine
        states.append(
            (
                bytes(wire.written),
                machine.state,
                machine.stream_closed_by,
                h2_stream.outbound_flow_control_window,
                stream.proto.conn.outbound_flow_control_window,
            )
        )

    client = h2_client({})
    request(client, 1, end=request_ended)
    data = client.data_to_send()
    oracle = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    oracle.initiate_connection()
    oracle.receive_data(data)
    oracle.send_headers(1, [(b":status", b"200"), (b"content-length", b"5")])
    oracle.data_to_send()
    oracle.send_data(1, b"hel")
    oracle.send_data(1, b"lo", end_stream=True)
    last_frames = oracle.data_to_send()
    machine = oracle.streams[1].state_machine
    expected = (
        machine.state,
        machine.stream_closed_by,
        oracle.streams[1].outbound_flow_control_window,
        oracle.outbound_flow_control_window,
    )
    proto = H2Protocol(client_side=False, handler=answer)
    proto.connection_made(wire)

    async def not_expected(*args: object) -> None:
        raise AssertionError("a chunk went the long way (send_data)")

    proto.send_data = not_expected  # type: ignore[method-assign]
    try:
        proto.data_received(data)
        await _until(lambda: states, "the handler did not answer")
        written, *books = states[0]
        assert written.endswith(last_frames)
        assert tuple(books) == expected
    finally:
        proto.connection_lost(None)


async def test_can_send_now_reads_the_windows_h2_reports() -> None:
    """`can_send_now` reads both send windows directly: it says yes exactly up to h2's
    `local_flow_control_window` for the stream, as the connection's or the stream's window
    is the smaller one."""
    server = h2_server({CODES.INITIAL_WINDOW_SIZE: 100})
    proto = H2Protocol(client_side=True)
    wire = FakeTransport()
    proto.connection_made(wire)
    head = RequestHead(method=b"POST", scheme=b"http", authority=b"b", path=b"/", headers=[])
    try:
        server.receive_data(bytes(wire.written))
        proto.data_received(server.data_to_send())
        stream = proto.open_stream(head, end_stream=False)
        for connection_window in (1000, 40):
            proto.conn.outbound_flow_control_window = connection_window
            window = proto.conn.local_flow_control_window(stream.stream_id)
            assert window == min(100, connection_window)
            assert [stream.can_send_now(n) for n in (window - 1, window, window + 1)] == [
                True,
                True,
                False,
            ]
    finally:
        proto.connection_lost(None)
