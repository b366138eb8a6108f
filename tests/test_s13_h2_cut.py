"""`H2Protocol._cut_frames` calls each frame's taker where it is chosen (`_take_data`,
`_take_headers`, `_take_window_update`), each after the frames before it went to h2: h2 gets
every frame it is given once, in order, whichever taker follows them, and a frame a taker
declines goes to h2 with the frames after it, not again with those before it.

A PING (always h2's) before each kind of taken frame, in one read: answered once, the taken
frame taken; a declined WINDOW_UPDATE between two PINGs and before a taken one: both PINGs
answered once, the books as h2 alone leaves them (tests/test_h2_window_update.py's oracle).
"""

from __future__ import annotations

import pytest

from tests.attack import DATA, PING, frame
from tests.test_h2_window_update import MAX, books, client_bytes, errors, oracle, serve, update

PING_ACK = 0x01


def ping(n: int) -> bytes:
    return frame(PING, 0, 0, n.to_bytes(8, "big"))


def ping_acks(written: bytes) -> list[int]:
    """The opaque data of each PING acknowledgement in `written`, in order."""
    acks, pos = [], 0
    while len(written) - pos >= 9:
        length = int.from_bytes(written[pos : pos + 3], "big")
        if written[pos + 3] == PING and written[pos + 4] & PING_ACK:
            acks.append(int.from_bytes(written[pos + 9 : pos + 17], "big"))
        pos += 9 + length
    return acks


def new_request() -> bytes:
    """A GET on stream 5, encoded by the client that opened streams 1 and 3."""
    _, client = client_bytes()
    client.data_to_send()
    headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"b"), (b":path", b"/")]
    client.send_headers(5, headers, end_stream=True)
    return client.data_to_send()


@pytest.mark.parametrize(
    "taken",
    [
        pytest.param(lambda: frame(DATA, 0, 1, b"body"), id="DATA"),
        pytest.param(new_request, id="HEADERS"),
        pytest.param(lambda: update(0, 1000), id="WINDOW_UPDATE"),
    ],
)
async def test_the_frames_before_a_taken_one_go_to_h2_once(taken) -> None:  # type: ignore[no-untyped-def]
    proto, _, answer = await serve(ping(1) + taken() + ping(2))
    try:
        assert ping_acks(answer) == [1, 2]
        opening, _ = client_bytes()
        assert books(proto.conn) == books(oracle(opening + ping(1) + taken() + ping(2)))
    finally:
        proto.connection_lost(None)


async def test_a_declined_frame_goes_to_h2_with_those_after_it_not_those_before() -> None:
    # A stream's window overflowing: h2's, a stream error (RST_STREAM), the connection goes on.
    updates = ping(1) + update(1, MAX) + ping(2) + update(0, 1000)
    proto, _, answer = await serve(updates)
    try:
        assert proto.offered == [(1, False), (0, True)]
        assert ping_acks(answer) == [1, 2]
        opening, _ = client_bytes()
        expected = oracle(opening + updates)
        assert books(proto.conn) == books(expected)
        assert errors(answer) == errors(expected.data_to_send())
    finally:
        proto.connection_lost(None)
