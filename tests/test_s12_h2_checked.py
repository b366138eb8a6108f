"""An untrusted peer's header block answered from the HPACK decoder's kept blocks
(`LiteralDecoder.hit`) whose fields passed h2's checks as they are is not checked again with the
same flags (`LiteralDecoder.checked`): the same fields pass again. Checked again: with other
flags (a block valid as trailers is no response), after the table changed (the same octets
are other fields), and a block whose cookie was joined (normalised: other objects)."""

from __future__ import annotations

import asyncio

import pytest
from hpack import NeverIndexedHeaderTuple

from sidecar.http.h2 import H2Protocol
from tests.test_h2_reads import connected_client, count_calls, head, headers_frame, indexed_literal
from tests.test_s12_h2_varied import GET_HTTP_SLASH, Server

STATUS_200 = b"\x88"
NEWEST = b"\xbe"  # dynamic index 62
STATUS_200_INDEXED = b"\x48\x03200"  # :status 200, with incremental indexing: the newest


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times `received_headers` checked a block."""
    return count_calls(monkeypatch, "received_headers")


def answer(proto: H2Protocol, block: bytes, trailers: bytes | None = None) -> int:
    """A response on a new stream (its trailers, if any, end it); the stream's id."""
    stream = proto.open_stream(head(b"/r"), end_stream=True)
    proto._flush_now()
    proto.data_received(headers_frame(stream.stream_id, block, end_stream=trailers is None))
    if trailers is not None and not proto.closed:
        proto.data_received(headers_frame(stream.stream_id, trailers))
    return stream.stream_id


async def test_a_kept_block_that_passed_is_not_checked_again(checks: list[int]) -> None:
    proto, _ = await connected_client(trusted=False)
    answer(proto, STATUS_200 + indexed_literal(b"x-a", b"1"))  # x-a 1: index 62
    counts = []
    for _ in range(4):
        before = checks[0]
        sid = answer(proto, STATUS_200, NEWEST)
        assert not proto.closed
        assert proto.streams.get(sid) is None or proto.streams[sid].trailers == [(b"x-a", b"1")]
        counts.append(checks[0] - before)
    # Decoded anew (checked), answered from the kept blocks (checked, noted), then not checked.
    assert counts == [2, 2, 0, 0]


async def test_a_block_that_passed_as_trailers_is_checked_as_a_response(
    checks: list[int],
) -> None:
    proto, _ = await connected_client(trusted=False)
    answer(proto, STATUS_200 + indexed_literal(b"x-a", b"1"))
    for _ in range(3):
        answer(proto, STATUS_200, NEWEST)
    assert not proto.closed
    answer(proto, NEWEST)  # no :status: h2's protocol error
    assert proto.closed


async def test_what_passed_is_forgotten_when_the_table_changes(checks: list[int]) -> None:
    """x-a 1 and x-b 1 passed as trailers; the same octets then say :status 200 and x-a 1,
    which pass as a response and are kept: as trailers they are h2's protocol error again."""
    proto, _ = await connected_client(trusted=False)
    answer(proto, STATUS_200 + indexed_literal(b"x-b", b"1") + indexed_literal(b"x-a", b"1"))
    for _ in range(3):
        answer(proto, STATUS_200, NEWEST + b"\xbf")
    answer(proto, STATUS_200_INDEXED)  # 62 :status 200, 63 x-a 1
    answer(proto, NEWEST + b"\xbf")  # a response, decoded anew and kept
    assert not proto.closed
    answer(proto, STATUS_200, NEWEST + b"\xbf")  # as trailers: a kept block, checked again
    assert proto.closed


async def test_a_block_of_one_octet_is_checked_again_after_the_table_changed(
    checks: list[int],
) -> None:
    """A one-octet block is the same object each time (CPython keeps one of each): the
    decoder's `hit` names it after it is decoded anew too."""
    proto, _ = await connected_client(trusted=False)
    answer(proto, STATUS_200 + indexed_literal(b"x-a", b"1"))
    for _ in range(3):
        answer(proto, STATUS_200, NEWEST)
    answer(proto, STATUS_200_INDEXED)
    assert not proto.closed
    answer(proto, STATUS_200, NEWEST)  # :status 200 as trailers
    assert proto.closed


async def test_a_joined_cookie_is_joined_every_time() -> None:
    """Trailers whose one cookie is joined (normalised into a never-indexed field): equal to
    the block, yet not the block's fields as they are, so checked and joined every time."""
    server = Server(trusted=False)
    await server.request(GET_HTTP_SLASH + b"\x60\x03a=1")  # cookie a=1: index 62
    for n in range(4):
        await server.request(GET_HTTP_SLASH, end_stream=False)
        stream = server.streams[-1]
        server.proto.data_received(headers_frame(server.next_id - 2, NEWEST))
        assert not server.proto.closed
        assert stream.trailers == [(b"cookie", b"a=1")], n
        assert type(stream.trailers[0]) is NeverIndexedHeaderTuple, n


async def test_a_request_is_measured_as_its_checked_list() -> None:
    """The list's size against the limit is the decoder's count for a block checked as it is,
    and the joined list's for one whose cookies were joined (smaller: one field, not two)."""
    cookie = b"\x0f\x11\x03a=1"  # cookie: a=1, without indexing
    x_a = b"\x00\x03x-a"  # a literal name without indexing; its value follows
    for limit, block, served in (
        (218, GET_HTTP_SLASH + cookie + cookie, True),  # 172 + 46 joined (254 apart)
        (217, GET_HTTP_SLASH + cookie + cookie, False),
        (208, GET_HTTP_SLASH + x_a + b"\x011", True),  # 172 + 36
        (208, GET_HTTP_SLASH + x_a + b"\x0212", False),
    ):
        server = Server(trusted=False)
        await server.request(GET_HTTP_SLASH)  # the first block is h2's (the connection opens)
        server.proto.header_list_size = limit
        server.proto.data_received(headers_frame(3, block))  # served, or answered 431
        server.proto.data_received(headers_frame(5, GET_HTTP_SLASH))  # served after it
        while len(server.seen) < 2 or server.seen[-1].headers:
            server.changed.clear()
            await asyncio.wait_for(server.changed.wait(), 5)
        assert len(server.seen) == 2 + served, (limit, block)
        assert not server.proto.closed
