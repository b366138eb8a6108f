"""WINDOW_UPDATE frames on the sidecar's fast path (`H2Protocol._take_window_update`), against h2
itself fed the same bytes (the oracle).

The fast path grows the connection's or a stream's send window by hand where h2 would, and
leaves to h2 what h2 answers with an error or treats specially (an increment of 0 or one that
overflows a window, a stream it does not hold). Each case checks the windows and stream states
both end with, the error answered (GOAWAY or RST_STREAM code), which frames the fast path took,
and that a sender waiting for window is woken by an update taken on the fast path. Beside
them, DATA frames with a flag RFC 9113 does not define: ignored, as h2 ignores it (the fast
path once read any flag as END_STREAM).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import h2.config
import h2.connection
import h2.settings
import pytest

from sidecar.http.exchange import ResponseHead
from sidecar.http.h2 import H2Protocol, H2ServerStream
from tests.attack import (
    DATA,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    PROTOCOL_ERROR,
    RST_STREAM,
    WINDOW_UPDATE,
    FakeTransport,
    frame,
)

DEADLINE = 5.0  # seconds: a condition not met by then is a failure
MAX = 2**31 - 1


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, u32(increment))


class Spy(H2Protocol):
    """Records (stream id, taken) for every WINDOW_UPDATE offered to the fast path."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.offered: list[tuple[int, bool]] = []

    def _take_window_update(self, data, start, length, stream_id, ended):  # type: ignore[override]
        taken = super()._take_window_update(data, start, length, stream_id, ended)
        self.offered.append((stream_id, taken))
        return taken


def client_bytes(initial_window: int | None = None) -> tuple[bytes, h2.connection.H2Connection]:
    """An h2 client's preface and settings, stream 1 opened (a POST still sending: open) and
    stream 3 a GET (half-closed remote at the server)."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    if initial_window is not None:
        client.local_settings = h2.settings.Settings(
            client=True,
            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window},
        )
    client.initiate_connection()
    for sid, end in ((1, False), (3, True)):
        headers = [
            (b":method", b"POST" if sid == 1 else b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"backend"),
            (b":path", b"/"),
        ]
        client.send_headers(sid, headers, end_stream=end)
    return client.data_to_send(), client


def oracle(data: bytes) -> h2.connection.H2Connection:
    """h2 configured as the sidecar's server is, fed the same bytes; the first bytes as one
    read, as the sidecar is fed them."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    conn.data_to_send()
    try:
        conn.receive_data(data)
    except h2.exceptions.ProtocolError as exc:
        conn.close_connection(error_code=exc.error_code)
    return conn


def books(conn: h2.connection.H2Connection) -> dict[object, object]:
    """The send windows and states of the connection and of its streams not closed (the
    sidecar forgets a closed stream as soon as it is done with it; h2 keeps it a while)."""
    out: dict[object, object] = {0: (conn.outbound_flow_control_window, conn.state_machine.state)}
    for sid, stream in conn.streams.items():
        if not stream.closed:
            out[sid] = (stream.outbound_flow_control_window, stream.state_machine.state)
    return out


def errors(written: bytes) -> tuple[int | None, dict[int, int]]:
    """The GOAWAY code (None without one) and the RST_STREAM code per stream in `written`."""
    goaway, resets, pos = None, {}, 0
    while len(written) - pos >= 9:
        length = int.from_bytes(written[pos : pos + 3], "big")
        kind, sid = written[pos + 3], int.from_bytes(written[pos + 5 : pos + 9], "big")
        payload = written[pos + 9 : pos + 9 + length]
        if kind == GOAWAY and goaway is None:
            goaway = int.from_bytes(payload[4:8], "big")
        elif kind == RST_STREAM:
            resets[sid] = int.from_bytes(payload[:4], "big")
        pos += 9 + length
    return goaway, resets


def data_frames(written: bytes) -> dict[int, bytes]:
    """The DATA payloads in `written`, by stream."""
    bodies: dict[int, bytes] = {}
    pos = 0
    while len(written) - pos >= 9:
        length = int.from_bytes(written[pos : pos + 3], "big")
        if written[pos + 3] == 0:
            sid = int.from_bytes(written[pos + 5 : pos + 9], "big")
            bodies[sid] = bodies.get(sid, b"") + written[pos + 9 : pos + 9 + length]
        pos += 9 + length
    return bodies


async def _hold(stream: H2ServerStream) -> None:
    """A handler that answers nothing: the streams stay as the client left them."""
    await asyncio.Event().wait()


async def serve(updates: bytes) -> tuple[Spy, FakeTransport, bytes]:
    """A sidecar server fed the client's opening bytes, then `updates` in one read."""
    opening, _ = client_bytes()
    proto = Spy(client_side=False, handler=_hold)
    wire = FakeTransport()
    proto.connection_made(wire)
    proto.data_received(opening)
    before = len(wire.written)
    proto.data_received(updates)
    return proto, wire, bytes(wire.written[before:])


CASES = {
    # name: (the frames, the stream ids the fast path must take)
    "the connection's window": (update(0, 1000), [0]),
    "an open stream's window": (update(1, 1000), [1]),
    "a half-closed (remote) stream's window": (update(3, 5), [3]),
    "several in one read": (
        update(0, 1) + update(1, 2) + update(3, 3) + update(0, 4),
        [0, 1, 3, 0],
    ),
    "the largest increment that fits": (update(0, MAX - 65535), [0]),
    "the reserved bit of the stream id is ignored": (
        frame(WINDOW_UPDATE, 0, 1, u32(7))[:5] + u32(0x80000001) + u32(7),
        [1],
    ),
    "flags are ignored": (frame(WINDOW_UPDATE, 0xFF, 1, u32(9)), [1]),
    # h2's: its errors, or streams it does not hold
    "0 on the connection": (update(0, 0), []),
    "0 on a stream": (update(1, 0), []),
    "the connection's window overflowing": (update(0, MAX), []),
    "a stream's window overflowing": (update(1, MAX), []),
    "an increment with the reserved bit set": (update(1, 0x80000001), []),
    "a stream not opened yet": (update(5, 10), []),
    "an even (server) stream never opened": (update(2, 10), []),
    "an update after an error": (update(0, 0) + update(1, 10), []),
    # DATA beside them: a flag RFC 9113 does not define is ignored, END_STREAM is 0x1 alone
    "DATA with an undefined flag does not end its stream": (frame(DATA, 0x02, 1, b"x"), []),
    "an empty DATA frame with an undefined flag": (frame(DATA, 0x02, 1) + update(1, 3), [1]),
}


@pytest.mark.parametrize("name", CASES)
async def test_window_updates_move_the_books_as_h2_moves_them(name: str) -> None:
    updates, taken = CASES[name]
    proto, wire, answer = await serve(updates)
    try:
        opening, _ = client_bytes()
        expected = oracle(opening + updates)
        assert [sid for sid, took in proto.offered if took] == taken
        assert books(proto.conn) == books(expected)
        assert errors(answer) == errors(expected.data_to_send())
    finally:
        proto.connection_lost(None)


async def test_the_errors_are_h2s_codes() -> None:
    """The cases left to h2 are answered as RFC 9113 says (a check on the oracle itself)."""
    for updates, code, stream in (
        (update(0, 0), PROTOCOL_ERROR, None),
        (update(0, MAX), FLOW_CONTROL_ERROR, None),
        (update(1, MAX), FLOW_CONTROL_ERROR, 1),
    ):
        proto, _, answer = await serve(updates)
        proto.connection_lost(None)
        goaway, resets = errors(answer)
        assert (goaway if stream is None else resets.get(stream)) == code


async def test_an_update_on_a_closed_stream_is_ignored() -> None:
    """RFC 9113 5.1: WINDOW_UPDATE may arrive for a while after a stream closed. h2 ignores it,
    whether it still holds the stream (the fast path takes and drops it) or has forgotten it
    (h2 takes it): no answer, the connection goes on."""
    proto, wire, _ = await serve(b"")
    try:
        proto.data_received(frame(RST_STREAM, 0, 1, u32(8)))  # the client cancels stream 1
        assert 1 not in proto.conn.streams  # done with: forgotten at once
        proto.conn.reset_stream(3)  # h2 resets stream 3 behind the sidecar's back: it holds it
        proto.conn.data_to_send()
        assert proto.conn.streams[3].closed
        before = len(wire.written)
        proto.data_received(update(1, 100) + update(3, 100))
        assert proto.offered[-2:] == [(1, False), (3, True)]
        assert bytes(wire.written[before:]) == b""
        assert not proto.closed
        proto.data_received(update(0, 10))
        assert proto.offered[-1] == (0, True)
        assert proto.conn.outbound_flow_control_window == 65535 + 10
    finally:
        proto.connection_lost(None)


async def test_a_sender_waiting_for_window_is_woken_by_an_update_on_the_fast_path() -> None:
    """A response body held back by a client window of 0 leaves once the client's
    WINDOW_UPDATE arrives: the fast path wakes the waiting sender as h2's event did."""
    opening, _ = client_bytes(initial_window=0)
    served: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    finished: list[int] = []

    async def answer(stream: H2ServerStream) -> None:
        await stream.respond(ResponseHead(200, [(b"content-length", b"5")]))
        await stream.write(b"hello")
        await stream.finish()
        finished.append(stream.stream_id)
        if len(finished) == 2:
            served.set_result(None)

    proto = Spy(client_side=False, handler=answer)
    wire = FakeTransport()
    proto.connection_made(wire)
    try:
        proto.data_received(opening)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        # Both answers' heads have left; their bodies wait for window.
        while wire.written.count(b"\x01\x04\x00\x00\x00") < 2:  # HEADERS, END_HEADERS
            assert loop.time() < deadline, "the heads were not sent"
            await asyncio.sleep(0.01)
        assert not served.done()
        proto.data_received(update(1, 5) + update(3, 5))
        await asyncio.wait_for(served, DEADLINE)
        assert (1, True) in proto.offered and (3, True) in proto.offered
        assert data_frames(bytes(wire.written)) == {1: b"hello", 3: b"hello"}
    finally:
        proto.connection_lost(None)
