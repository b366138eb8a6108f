"""Session 12's cuts on the HTTP/2 send side, each checked against what it replaces.

`_Connection.send_response` queues a final response's head and its whole body as
`send_stream_headers` and `send_plain_data_now` queue them one after the other: the same bytes,
the same stream and connection books, the same outcome (or error) in every case; on a paused
transport the body waits, as it did.
"""

from __future__ import annotations

import h2.config
import h2.exceptions
import pytest

from sidecar.http.h2 import _Connection, _ServerConnection
from tests.test_h2_cuts import CODES, _until, h2_client, handled, request
from tests.test_h2_lifecycle import _respond_whole

HEAD = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-answer", b"yes")]
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"backend"),
    (b":path", b"/"),
]


def _server(settings: dict[int, int], end: bool, frame_size: int) -> _ServerConnection:
    """A sidecar's server connection that has received a request on stream 1 (`end`: the
    request ended with its head), from a client with `settings`."""
    client = h2_client(settings)
    request(client, 1, end=end)
    conn = _ServerConnection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    conn.receive_data(client.data_to_send())
    conn.max_outbound_frame_size = frame_size
    conn.data_to_send()
    return conn


def _books(conn: _Connection) -> dict[str, object]:
    """What sending changes: the bytes queued, the windows, the stream's and its machine's
    attributes (or the stream gone), the encoder's table."""
    stream = conn.streams.get(1)
    return {
        "out": bytes(conn._data_to_send),
        "window": conn.outbound_flow_control_window,
        "stream": None
        if stream is None
        else {
            **vars(stream),
            "state_machine": None,
            "_inbound_window_manager": vars(stream._inbound_window_manager),
            "config": None,
        },
        "machine": None if stream is None else vars(stream.state_machine),
        "table": list(conn.encoder.header_table.dynamic_entries),
    }


def _outcome(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except h2.exceptions.ProtocolError as err:
        return type(err)


CASES = [
    pytest.param({}, True, 16384, b"hello", id="fits, request ended"),
    pytest.param({}, False, 16384, b"hello", id="fits, request open"),
    pytest.param({CODES.INITIAL_WINDOW_SIZE: 3}, True, 16384, b"hello", id="short of window"),
    pytest.param({CODES.INITIAL_WINDOW_SIZE: 5}, True, 16384, b"hello", id="the window exactly"),
    pytest.param({}, True, 3, b"hello", id="over a frame"),
    pytest.param({}, True, 5, b"hello", id="a frame exactly"),
    pytest.param({}, True, 16384, b"", id="empty"),
]


@pytest.mark.parametrize(("settings", "end", "frame_size", "body"), CASES)
def test_a_response_and_its_body_are_queued_as_head_then_body_queue_them(
    settings: dict[int, int], end: bool, frame_size: int, body: bytes
) -> None:
    ours, theirs = (_server(settings, end, frame_size) for _ in range(2))

    def two_steps() -> bool:
        theirs.send_stream_headers(1, HEAD, False)
        return theirs.send_plain_data_now(1, body, True)

    assert _outcome(lambda: ours.send_response(1, HEAD, body)) == _outcome(two_steps)
    assert _books(ours) == _books(theirs)
    # Sent twice: h2 refuses a second head (the stream ended, or headers sent), alike.
    assert _outcome(lambda: ours.send_response(1, HEAD, body)) == _outcome(two_steps)
    assert _books(ours) == _books(theirs)


def test_a_stream_closed_by_a_reset_takes_the_same_path() -> None:
    ours, theirs = (_server({}, False, 16384) for _ in range(2))
    for conn in (ours, theirs):
        conn.reset_stream(1)

    def two_steps() -> bool:
        theirs.send_stream_headers(1, HEAD, False)
        return theirs.send_plain_data_now(1, b"hello", True)

    assert _outcome(lambda: ours.send_response(1, HEAD, b"hello")) == _outcome(two_steps)
    assert _books(ours) == _books(theirs)


def test_the_connections_window_short_of_the_body_takes_the_same_path() -> None:
    ours, theirs = (_server({}, True, 16384) for _ in range(2))
    for conn in (ours, theirs):
        conn.outbound_flow_control_window = 3

    def two_steps() -> bool:
        theirs.send_stream_headers(1, HEAD, False)
        return theirs.send_plain_data_now(1, b"hello", True)

    assert _outcome(lambda: ours.send_response(1, HEAD, b"hello")) == _outcome(two_steps)
    assert _books(ours) == _books(theirs)


def test_a_head_already_sent_takes_the_same_path() -> None:
    """Trailers without END_STREAM: h2's refusal, alike."""
    ours, theirs = (_server({}, False, 16384) for _ in range(2))
    for conn in (ours, theirs):
        conn.send_stream_headers(1, HEAD, False)

    def two_steps() -> bool:
        theirs.send_stream_headers(1, HEAD, False)
        return theirs.send_plain_data_now(1, b"hello", True)

    assert _outcome(lambda: ours.send_response(1, HEAD, b"hello")) == _outcome(two_steps)
    assert _books(ours) == _books(theirs)


def client_streams() -> tuple[_Connection, _Connection]:
    """Two client connections alike, each with a request's stream 1 open."""
    ends = []
    for _ in range(2):
        conn = _Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_request_headers(1, REQUEST, False, b"POST", b"backend")
        ends.append(conn)
    return ends[0], ends[1]


def test_a_clients_stream_takes_the_same_path() -> None:
    """A client's stream sends no response: h2's refusal, alike."""
    ours, theirs = client_streams()

    def two_steps() -> bool:
        theirs.send_stream_headers(1, HEAD, False)
        return theirs.send_plain_data_now(1, b"hello", True)

    assert _outcome(lambda: ours.send_response(1, HEAD, b"hello")) == _outcome(two_steps)
    assert _books(ours) == _books(theirs)


def test_a_closed_connection_takes_the_same_path() -> None:
    ours, theirs = (_server({}, True, 16384) for _ in range(2))
    for conn in (ours, theirs):
        conn.close_connection()

    def two_steps() -> bool:
        theirs.send_stream_headers(1, HEAD, False)
        return theirs.send_plain_data_now(1, b"hello", True)

    assert _outcome(lambda: ours.send_response(1, HEAD, b"hello")) == _outcome(two_steps)
    assert _books(ours) == _books(theirs)


async def test_a_whole_body_waits_for_a_paused_transport_with_its_head_already_queued() -> None:
    """`respond` with the whole body on a paused transport: the head is queued (and written at
    the turn's end), the body waits for the transport as `finish` waits; nothing is lost."""
    client, proto, transport, task = await _respond_whole({}, b"hello")
    proto.pause_writing()  # before the handler's first step
    try:
        await _until(lambda: transport.writes, "the head was not written")
        kinds = [type(event).__name__ for event in client.receive_data(transport.writes[0])]
        assert kinds == ["ResponseReceived"]
        assert not task.done()
        proto.resume_writing()
        await handled(proto)
        events = client.receive_data(b"".join(transport.writes[1:]))
        assert [type(event).__name__ for event in events] == ["DataReceived", "StreamEnded"]
        assert events[0].data == b"hello"
    finally:
        proto.connection_lost(None)
