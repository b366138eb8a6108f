"""`GrpcMessages` (sidecar.http.accounting) counts gRPC messages by their 5-byte prefixes as a
body goes by, however the body is cut into chunks: against a plain byte-by-byte reading of the
same stream, over random messages and random cuts (prefixes and payloads split anywhere, empty
payloads, empty chunks, several messages in one chunk)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http.accounting import GrpcMessages


class ByteByByte:
    """The reference: one byte at a time, a prefix read whole before its payload is skipped."""

    def __init__(self) -> None:
        self.count = 0
        self.need = 0
        self.header = b""

    def feed(self, chunk: bytes) -> None:
        for i in range(len(chunk)):
            if self.need:
                self.need -= 1
                continue
            self.header += chunk[i : i + 1]
            if len(self.header) == 5:
                self.count += 1
                self.need = int.from_bytes(self.header[1:5], "big")
                self.header = b""


def _message(payload: int) -> bytes:
    return b"\0" + payload.to_bytes(4, "big") + bytes(payload)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(st.integers(0, 40), max_size=12),
    st.lists(st.integers(0, 600), max_size=20),
)
def test_counts_as_a_byte_by_byte_reading_however_the_body_is_cut(payloads, cuts):
    stream = b"".join(map(_message, payloads))
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    ours, reference = GrpcMessages(), ByteByByte()
    for start, stop in zip(points, points[1:] + [len(stream)], strict=True):
        ours.feed(stream[start:stop])
        reference.feed(stream[start:stop])
        assert ours.count == reference.count
    assert ours.count == len(payloads)


def test_one_message_a_chunk_and_a_prefix_split_three_ways():
    messages = GrpcMessages()
    messages.feed(_message(64))
    assert messages.count == 1
    second = _message(3)
    messages.feed(second[:2])
    messages.feed(second[2:4])
    assert messages.count == 1
    messages.feed(second[4:6])  # the prefix's last byte and the payload's first
    assert messages.count == 2
    messages.feed(second[6:] + _message(0) + _message(1)[:5])
    assert messages.count == 4
