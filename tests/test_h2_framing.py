"""The sidecar cuts inbound HTTP/2 frames itself and takes DATA frames of open streams before h2
(sidecar.http.h2: `_cut_frames`, `_take_data`). Against h2 as the peer, over an in-memory wire
cut at arbitrary points: every body arrives whole and in order, and both ends' flow-control
books agree afterwards (what the peer may still send is what the sidecar's h2 expects), so the
bypass leaves h2's window bookkeeping as h2 itself would have left it.
"""

from __future__ import annotations

import asyncio
import random

import h2.config
import h2.connection
import h2.events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.http.exchange import ResponseHead
from sidecar.http.h2 import H2Protocol, H2ServerStream


class Wire(asyncio.Transport):
    """The sidecar's side of an in-memory connection: what it writes is kept for the peer."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.out += data

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


REQUEST = [(":method", "POST"), (":scheme", "http"), (":authority", "backend"), (":path", "/")]


async def exchange(seed: int, streams: int, cuts: list[int]) -> None:
    rng = random.Random(seed)
    bodies: dict[int, bytes] = {}

    async def handler(stream: H2ServerStream) -> None:
        chunks = []
        while (chunk := await stream.body.read()) is not None:
            chunks.append(chunk)
            if rng.random() < 0.3:
                await asyncio.sleep(0)  # a slower reader now and then: credit comes back later
        bodies[stream.stream_id] = b"".join(chunks)
        await stream.respond(ResponseHead(200), end=True)

    server = H2Protocol(client_side=False, handler=handler)
    wire = Wire()
    server.connection_made(wire)
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    peer.initiate_connection()
    sent: dict[int, bytearray] = {}
    left: dict[int, int] = {}
    for i in range(streams):
        stream_id = 1 + 2 * i
        peer.send_headers(stream_id, REQUEST)
        sent[stream_id] = bytearray()
        left[stream_id] = rng.randrange(1, 3 * 1024 * 1024)
    ended: set[int] = set()
    cut = iter(cuts)

    async def carry() -> None:
        """Deliver the peer's bytes in pieces, let the sidecar run, and bring its answers back."""
        pending = peer.data_to_send()
        while pending:
            size = next(cut, len(pending)) or 1
            server.data_received(pending[:size])
            pending = pending[size:]
        for _ in range(3):
            await asyncio.sleep(0)
        answer = wire.take()
        if answer:
            peer.receive_data(answer)

    await carry()
    while len(ended) < streams:
        for stream_id, remaining in left.items():
            if stream_id in ended:
                continue
            window = min(peer.local_flow_control_window(stream_id), peer.max_outbound_frame_size)
            size = min(remaining, window, rng.randrange(1, 40_000))
            if size > 0:
                data = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)
                data = data[:size]
                pad = rng.choice([None, None, None, 0, 7])  # some padded frames: h2's to take
                if pad is not None and size + pad + 1 > window:
                    pad = None
                peer.send_data(stream_id, data, pad_length=pad)
                sent[stream_id] += data
                left[stream_id] -= size
            if rng.random() < 0.1:
                peer.ping(b"12345678")
            if left[stream_id] == 0:
                peer.end_stream(stream_id)
                ended.add(stream_id)
        await carry()
    for _ in range(20):  # the last reads, responses and credit
        await carry()
        if len(bodies) == streams:
            break
    await carry()
    assert not server.closed
    assert {k: bytes(v) for k, v in sent.items()} == bodies
    # The books agree: what the peer believes it may still send on the connection is what the
    # sidecar's h2 believes it has offered.
    inbound = server.conn._inbound_flow_control_window_manager
    assert peer.outbound_flow_control_window == inbound.current_window_size
    assert inbound._bytes_processed + inbound.current_window_size == inbound.max_window_size


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**32),
    st.integers(1, 4),
    st.lists(st.integers(0, 70_000), max_size=400),
)
def test_bodies_and_windows_survive_any_cut(seed: int, streams: int, cuts: list[int]) -> None:
    asyncio.run(exchange(seed, streams, cuts))


def test_trickled_bytes() -> None:
    """Every byte in a read of its own, for a while."""
    asyncio.run(exchange(7, 2, [1] * 5000))
