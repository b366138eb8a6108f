"""A server connection holds its handlers' tasks while they run, and lets each go as it ends.

The tasks are held (the loop keeps only weak references to them) in `H2Protocol.tasks` and
dropped by their own `_serve` as it ends, not by a done callback: whatever way a handler ends
(answered, failed, its stream reset, the connection lost), nothing is left held.
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http.exchange import ResponseHead, StreamReset
from sidecar.http.h2 import H2Protocol, H2ServerStream
from tests.test_h2_cuts import DEADLINE, FakeTransport, _until, h2_client, request


async def _serve(handler: object, streams: int, end: bool = True) -> H2Protocol:
    """A server connection given `streams` requests (ended, or bodies still to come)."""
    client = h2_client({})
    for n in range(streams):
        request(client, 1 + 2 * n, end=end)
    proto = H2Protocol(client_side=False, handler=handler)  # type: ignore[arg-type]
    proto.connection_made(FakeTransport())
    proto.data_received(client.data_to_send())
    return proto


async def _all_ended(proto: H2Protocol) -> list[asyncio.Task[None]]:
    tasks = list(proto.tasks.values())
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), DEADLINE)
    return tasks


async def test_each_request_has_its_task_held_while_it_runs() -> None:
    release = asyncio.Event()
    seen: list[H2ServerStream] = []

    async def answer(stream: H2ServerStream) -> None:
        seen.append(stream)
        await release.wait()
        await stream.respond(ResponseHead(200, [(b"content-length", b"0")]), end=True)

    proto = await _serve(answer, 3)
    try:
        await _until(lambda: len(seen) == 3, "the handlers did not start")
        assert set(proto.tasks) == set(seen)
        assert all(not task.done() for task in proto.tasks.values())
        release.set()
        tasks = await _all_ended(proto)
        assert proto.tasks == {} and not proto.streams
        assert all(task.exception() is None for task in tasks)
    finally:
        proto.connection_lost(None)


async def test_a_failed_handlers_task_is_let_go() -> None:
    async def fail(stream: H2ServerStream) -> None:
        raise RuntimeError("handler bug")

    proto = await _serve(fail, 2)
    try:
        assert len(proto.tasks) == 2
        await _all_ended(proto)
        assert proto.tasks == {} and not proto.streams
    finally:
        proto.connection_lost(None)


async def test_tasks_are_let_go_when_the_connection_is_lost() -> None:
    started: list[H2ServerStream] = []

    async def read_body(stream: H2ServerStream) -> None:
        started.append(stream)
        with pytest.raises(StreamReset):
            await stream.body.read()  # the body never comes: the connection goes

    proto = await _serve(read_body, 2, end=False)
    await _until(lambda: len(started) == 2, "the handlers did not start")
    proto.connection_lost(None)
    tasks = await _all_ended(proto)
    assert proto.tasks == {}
    assert all(task.done() and task.exception() is None for task in tasks)  # logged by `_serve`


async def test_a_handler_that_swallows_its_reset_is_let_go_too() -> None:
    async def hold(stream: H2ServerStream) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return

    proto = await _serve(hold, 1)
    await asyncio.sleep(0)
    (task,) = proto.tasks.values()
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), DEADLINE)
    assert proto.tasks == {}
    proto.connection_lost(None)


async def test_an_untrusted_peers_cookie_crumbs_reach_the_handler_joined() -> None:
    """A block normalised on receipt (cookie crumbs joined, last) is read again for the handler;
    one that normalisation leaves as it was is not."""
    seen: list[H2ServerStream] = []

    async def answer(stream: H2ServerStream) -> None:
        seen.append(stream)

    client = h2_client({})
    proto = H2Protocol(client_side=False, handler=answer)
    proto.connection_made(FakeTransport())
    # The preface and a first request are h2's (its connection opens); the next blocks are
    # taken by `_take_headers`.
    request(client, 1, end=True)
    proto.data_received(client.data_to_send())
    base = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"b"), (b":path", b"/")]
    client.send_headers(3, [*base, (b"cookie", b"a=1"), (b"x-a", b"1"), (b"cookie", b"b=2")], True)
    client.send_headers(5, [*base, (b"x-a", b"1")], end_stream=True)
    proto.data_received(client.data_to_send())
    try:
        await _until(lambda: len(seen) == 3, "the handlers did not start")
        assert seen[1].request.headers == [(b"x-a", b"1"), (b"cookie", b"a=1; b=2")]
        assert seen[2].request.headers == [(b"x-a", b"1")]
    finally:
        proto.connection_lost(None)
