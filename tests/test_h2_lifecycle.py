"""The stream lifecycle's shortcuts, checked against what they replace.

A server stream's task reports its stream finished only when there is something left to do.

Each end of a stream reports it finished (`H2Stream.finish`, `remote_ended`), and its task
once more when the handler ends (`H2Protocol._work`). A stream both ends reported is `forgotten`
(gone from the sidecar's table and h2's), and the task's report is skipped; a handler that did
not end its stream, or whose last frame did not leave, still has it dropped by the task.

A request stream the sidecar sends is made in the state its HEADERS leave it in (`new_stream`
given the state, the method and the authority): h2's `send_headers` leaves the same books.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import pytest

from sidecar.http.exchange import RequestHead, ResponseHead
from sidecar.http.h2 import (
    H2Protocol,
    H2ServerStream,
    _Connection,
    _status_field,
    request_headers,
)
from tests.test_h2_cuts import CODES, FakeTransport, _until, h2_client, handled, request


async def _serve_one(
    handler: object, settings: dict[int, int], end: bool = True
) -> tuple[H2Protocol, asyncio.Task[None]]:
    """A server connection given one request (ended, or a body still to come), its handler's
    task returned once it runs."""
    client = h2_client(settings)
    request(client, 1, end=end)
    proto = H2Protocol(client_side=False, handler=handler)  # type: ignore[arg-type]
    proto.connection_made(FakeTransport())
    proto.data_received(client.data_to_send())
    await _until(lambda: proto.workers, "the handler did not start")
    (task,) = proto.workers
    return proto, task


async def test_a_finished_stream_is_forgotten_and_its_task_reports_nothing_more() -> None:
    seen: list[H2ServerStream] = []

    async def answer(stream: H2ServerStream) -> None:
        seen.append(stream)
        await stream.respond(ResponseHead(200, [(b"content-length", b"2")]), last=b"ok")
        assert stream.forgotten  # reported by `finish`, the request having ended
        assert 1 not in stream.proto.streams and 1 not in stream.proto.conn.streams

    proto, task = await _serve_one(answer, {})
    try:
        await handled(proto)
        (stream,) = seen
        assert stream.forgotten and stream.local_done and stream.remote_done
        assert 1 in proto.conn._closed_streams
    finally:
        proto.connection_lost(None)


async def test_a_handler_cancelled_while_its_last_frame_waits_has_its_stream_dropped() -> None:
    """The stream is done at both ends for the sidecar (its `finish` had begun, the request had
    ended) but its END_STREAM never left: the task's report drops it, h2 keeping it open."""
    waiting: list[H2ServerStream] = []

    async def answer(stream: H2ServerStream) -> None:
        waiting.append(stream)
        await stream.respond(ResponseHead(200, [(b"content-length", b"5")]))
        await stream.finish(last=b"hello")  # no window: waits

    proto, task = await _serve_one(answer, {CODES.INITIAL_WINDOW_SIZE: 0})
    try:
        await _until(lambda: 1 in proto._window_waiters, "the body did not wait for window")
        assert 1 in proto.streams
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        (stream,) = waiting
        assert not stream.forgotten  # h2 still holds it: its END_STREAM has not left
        assert 1 not in proto.streams
        assert 1 in proto.conn.streams and not proto.conn.streams[1].closed
    finally:
        proto.connection_lost(None)


async def test_a_handler_that_returns_without_ending_its_stream_has_it_dropped() -> None:
    """A request whose body is still coming: the handler returns, the task ends the local side,
    and the stream stays until the client's END_STREAM (`remote_ended` reports it then)."""
    seen: list[H2ServerStream] = []

    async def answer(stream: H2ServerStream) -> None:
        seen.append(stream)

    proto, task = await _serve_one(answer, {}, end=False)
    try:
        await handled(proto)
        (stream,) = seen
        assert stream.local_done and not stream.remote_done and not stream.forgotten
        assert proto.streams[1] is stream
    finally:
        proto.connection_lost(None)


def _stream_books(conn: object, stream_id: int) -> dict[str, object]:
    """What h2 keeps of a stream: its attributes, its state machine's and window manager's."""
    stream = conn.streams[stream_id]  # type: ignore[attr-defined]
    books = dict(vars(stream))
    books["state_machine"] = vars(books["state_machine"])
    books["_inbound_window_manager"] = vars(books["_inbound_window_manager"])
    del books["config"]
    return books


@pytest.mark.parametrize("end_stream", [True, False])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_a_request_stream_sent_here_is_the_stream_h2s_send_headers_leaves(
    end_stream: bool, method: bytes
) -> None:
    """`send_request_headers` has `new_stream` make the stream in the state h2's SEND_HEADERS
    (and SEND_END_STREAM) leave it, with the method and authority h2 keeps: the same books as
    h2's `send_headers` leaves."""
    headers = [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"backend"),
        (b":path", b"/"),
    ]
    ours = _Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    theirs = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    for conn in (ours, theirs):
        conn.initiate_connection()
    ours.send_request_headers(1, headers, end_stream, method, b"backend")
    theirs.send_headers(1, headers, end_stream=end_stream)
    assert _stream_books(ours, 1) == _stream_books(theirs, 1)
    assert ours.highest_outbound_stream_id == theirs.highest_outbound_stream_id == 1


class _Writes(FakeTransport):
    """A transport that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: object) -> None:
        super().write(data)
        self.writes.append(bytes(data))  # type: ignore[call-overload]


async def _respond_whole(
    settings: dict[int, int], body: bytes
) -> tuple[h2.connection.H2Connection, H2Protocol, _Writes, asyncio.Task[None]]:
    """A server connection whose handler answers the client's GET with `body` given whole to
    `respond`; the client, the protocol and its transport returned once the handler runs."""
    client = h2_client(settings)
    request(client, 1, end=True)
    head = ResponseHead(200, [(b"content-length", str(len(body)).encode())])

    async def answer(stream: H2ServerStream) -> None:
        await stream.respond(head, last=body)

    return (client, *await serve_one(client, answer))


async def serve_one(
    client: h2.connection.H2Connection, answer: Callable[[H2ServerStream], Awaitable[None]]
) -> tuple[H2Protocol, _Writes, asyncio.Task[None]]:
    """A server connection fed what `client` queued, once `answer` (its handler) runs: its
    writes so far cleared."""
    proto = H2Protocol(client_side=False, handler=answer)
    transport = _Writes()
    proto.connection_made(transport)
    proto.data_received(client.data_to_send())
    await _until(lambda: proto.workers, "the handler did not start")
    (task,) = proto.workers
    transport.writes.clear()
    return proto, transport, task


async def test_a_whole_body_the_windows_take_leaves_with_its_head_in_one_write() -> None:
    """`respond` queues a body that fits right behind the head (`send_now`): one write, none
    left scheduled, the stream done and forgotten at both ends."""
    client, proto, transport, task = await _respond_whole({}, b"hello")
    try:
        await handled(proto)
        assert len(transport.writes) == 1 and proto._flush_handle is None
        events = client.receive_data(transport.writes[0])
        kinds = [type(event).__name__ for event in events]
        assert kinds == ["ResponseReceived", "DataReceived", "StreamEnded"]
        assert events[1].data == b"hello"
        assert 1 not in proto.streams and 1 not in proto.conn.streams
    finally:
        proto.connection_lost(None)


async def test_a_whole_body_short_of_window_waits_with_its_head_already_sent() -> None:
    """A body the stream's window cannot take goes through `finish`: the head leaves first
    (the peer may grant window only once it has it), the body when the window opens."""
    client, proto, transport, task = await _respond_whole({CODES.INITIAL_WINDOW_SIZE: 3}, b"hello")
    try:
        await _until(lambda: 1 in proto._window_waiters, "the body did not wait for window")
        await _until(lambda: transport.writes, "the head was not written")
        events = client.receive_data(b"".join(transport.writes))
        assert [type(event).__name__ for event in events] == ["ResponseReceived", "DataReceived"]
        assert events[1].data == b"hel"
        transport.writes.clear()
        client.increment_flow_control_window(2, stream_id=1)
        proto.data_received(client.data_to_send())
        await handled(proto)
        events = client.receive_data(b"".join(transport.writes))
        assert [type(event).__name__ for event in events][-2:] == ["DataReceived", "StreamEnded"]
        assert events[-2].data == b"lo"
        assert 1 not in proto.streams
    finally:
        proto.connection_lost(None)


@pytest.mark.parametrize(
    ("method", "protocol", "pseudo"),
    [
        (b"GET", None, [b":method", b":scheme", b":authority", b":path"]),
        (b"CONNECT", None, [b":method", b":authority"]),  # RFC 9113 8.5
        (b"CONNECT", b"websocket", [b":method", b":scheme", b":authority", b":path", b":protocol"]),
    ],
)
def test_a_requests_header_list_is_its_pseudo_fields_then_its_fields(
    method: bytes, protocol: bytes | None, pseudo: list[bytes]
) -> None:
    fields = [(b"x-a", b"1"), (b"x-b", b"2")]
    head = RequestHead(
        method=method,
        scheme=b"https",
        authority=b"backend:80",
        path=b"/chat",
        headers=fields,
        protocol=protocol,
    )
    values = {
        b":method": method,
        b":scheme": b"https",
        b":authority": b"backend:80",
        b":path": b"/chat",
        b":protocol": protocol,
    }
    got = request_headers(head)
    assert got == [(name, values[name]) for name in pseudo] + fields
    assert head.headers == fields and got is not head.headers  # the request's list unchanged


def test_a_status_field_is_made_once_per_status() -> None:
    assert _status_field(204) == (b":status", b"204")
    assert _status_field(204) is _status_field(204)
    assert _status_field(404) == (b":status", b"404")
