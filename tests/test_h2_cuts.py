"""What `sidecar.http.h2` keeps as plain attributes instead of asking h2 per request, and the
stream bookkeeping done once per stream, checked against h2's own books.

- The settings in force (`_Connection.remote_max_streams`, `local_initial_window`, ...) follow
  every SETTINGS exchange as h2's `Settings` do: the peer's new values once h2 acknowledges
  them, ours once the peer acknowledges them; new streams get the windows in force.
- A client connection is `available` up to the peer's MAX_CONCURRENT_STREAMS, as h2 counts.
- A stream done at both ends before its END_STREAM left (a `finish` waiting for window while
  the client ends its body) is still forgotten by h2 once the END_STREAM leaves.
- A lone stream's last frame is written at once; with other streams open, at the end of the turn.
"""

from __future__ import annotations

import asyncio
import struct

import h2.config
import h2.connection
import h2.settings

from sidecar.http.exchange import RequestHead, ResponseHead
from sidecar.http.h2 import H2Protocol, H2ServerStream, _setting
from tests.attack import DATA, WINDOW_UPDATE, FakeTransport, frame

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


def h2_client(settings: dict[int, int]) -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.local_settings = h2.settings.Settings(client=True, initial_values=settings)
    client.initiate_connection()
    return client


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
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={CODES.MAX_CONCURRENT_STREAMS: 2}
    )
    server.initiate_connection()
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


async def test_a_lone_streams_last_frame_leaves_at_once_others_at_the_end_of_the_turn() -> None:
    """At a low rate a connection carries one exchange at a time: its last frame is written when
    it is queued, so the peer starts on it before this turn's bookkeeping. With other streams
    open, the turn's frames leave together at its end (one write, one wake-up of the peer)."""
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
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
