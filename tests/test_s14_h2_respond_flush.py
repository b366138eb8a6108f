"""Session 14's cut in `H2Protocol.send_response`: a whole answer (head and body) on the only
stream open is written at once, within `respond`, as `_flush_ended` wrote it; with other
streams open it waits for the end of the loop's turn, leaving with theirs in one write."""

from __future__ import annotations

import asyncio

from sidecar.http.exchange import ResponseHead
from sidecar.http.h2 import H2Protocol, H2ServerStream
from tests.test_h2_cuts import _until, h2_client, request
from tests.test_h2_lifecycle import _Writes


async def _server(streams: int) -> tuple[H2Protocol, _Writes, list[H2ServerStream]]:
    """A server connection holding `streams` requests' streams, none answered, writes cleared."""
    client = h2_client({})
    for n in range(streams):
        request(client, 1 + 2 * n, True)
    held: list[H2ServerStream] = []

    async def hold(stream: H2ServerStream) -> None:
        held.append(stream)
        await asyncio.Event().wait()

    proto = H2Protocol(client_side=False, handler=hold)
    transport = _Writes()
    proto.connection_made(transport)
    proto.data_received(client.data_to_send())
    await _until(lambda: len(held) == streams, "the handlers did not start")
    transport.writes.clear()
    return proto, transport, held


def _respond(stream: H2ServerStream) -> None:
    """`respond` with a whole body, run to its end without a turn of the loop (a whole answer
    that the windows take does not wait)."""
    coro = stream.respond(ResponseHead(200, []), last=b"hello")
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("respond waited")


async def test_a_lone_streams_whole_answer_is_written_within_respond() -> None:
    proto, transport, (stream,) = await _server(1)
    try:
        _respond(stream)
        assert len(transport.writes) == 1 and proto._flush_handle is None
        assert transport.writes[0].endswith(b"hello")
    finally:
        proto.connection_lost(None)


async def test_an_answer_with_other_streams_open_is_written_at_the_end_of_the_turn() -> None:
    proto, transport, (first, second) = await _server(2)
    try:
        _respond(first)
        assert transport.writes == [] and proto._flush_handle is not None
        _respond(second)  # the last stream open: both answers leave in one write
        assert len(transport.writes) == 1 and proto._flush_handle is None
        assert transport.writes[0].count(b"hello") == 2
    finally:
        proto.connection_lost(None)
