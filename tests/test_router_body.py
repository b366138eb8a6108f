"""A `Body` (sidecar.http.exchange) gets its queue with its first chunk: one never fed holds a
shared, always empty queue, and must read, end, be cut and be discarded as an empty one does,
without another body's chunks ever showing up in it."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http.exchange import Body, StreamReset


def test_a_body_never_fed_ends_and_reads_as_empty() -> None:
    consumed: list[int] = []
    body = Body(consumed.append)
    assert not body.at_end and body.take_whole() is None
    body.end()
    assert body.at_end and body.on_consumed is None
    assert body.take_whole() is None
    assert asyncio.run(body.read()) is None
    assert body.discard() == 0 and body.at_end
    assert body.reads == 0 and consumed == []


def test_bodies_fed_after_others_were_made_keep_their_own_chunks() -> None:
    empty, first, second = Body(), Body(), Body()
    assert not first.feed(b"one") and not second.feed(b"two")
    first.end()
    second.end([(b"grpc-status", b"0")])
    empty.end()
    assert first.take_whole() == b"one" and first.at_end
    assert second.take_whole() is None  # trailers: read chunk by chunk
    assert asyncio.run(second.read()) == b"two" and second.at_end
    assert asyncio.run(empty.read()) is None
    assert Body().take_whole() is None  # nothing of theirs in a new one


def test_a_body_never_fed_and_cut_raises_and_discards_nothing() -> None:
    body = Body()
    body.abort(ConnectionResetError("gone"))
    with pytest.raises(StreamReset):
        asyncio.run(body.read())
    assert body.discard() == 0
    assert not body.feed(b"late")  # cut: nothing more is queued
    assert body.buffered == 0


def test_a_reader_waiting_on_a_body_never_fed_wakes_for_its_first_chunk() -> None:
    async def scenario() -> bytes | None:
        body = Body()
        reader = asyncio.ensure_future(body.read())
        await asyncio.sleep(0)
        assert body.reader_waiting
        body.feed(b"first")
        return await reader

    assert asyncio.run(scenario()) == b"first"


def test_ready_takes_what_read_would_take_without_waiting() -> None:
    consumed: list[int] = []
    body = Body(consumed.append)
    assert body.ready() is None  # nothing queued: `read` must be awaited
    body.feed(b"ab")
    body.feed(b"c")
    body.end([(b"grpc-status", b"0")])
    assert body.ready() == b"ab" and not body.at_end
    assert body.ready() == b"c" and body.at_end
    assert body.ready() is None and asyncio.run(body.read()) is None  # the end says `read`
    assert consumed == [2, 1] and body.reads == 2


def test_ready_leaves_a_cut_body_to_read_which_raises() -> None:
    body = Body()
    body.feed(b"queued")
    body.abort(ConnectionResetError("gone"))
    assert body.ready() is None
    with pytest.raises(StreamReset):
        asyncio.run(body.read())
