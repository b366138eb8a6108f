"""A server connection serves its streams from tasks it holds while they live, each taking the
next stream when its handler is done.

The tasks are held (the loop keeps only weak references to them) in `H2Protocol.workers`. One
whose handler is done waits for the next stream (`_idle_workers`, up to `max_idle_workers`,
`H2_IDLE_WORKERS` by default): a task made per request cost the inbound sidecar ~5k
instructions a request. Whatever way a handler ends (answered, failed, its stream reset, the
connection lost), its stream is let go; a task ends, and is let go, when the connection ends
or goes away, when enough wait already, or when it was cancelled.
"""

from __future__ import annotations

import asyncio
import weakref

import h2.connection
import pytest

from sidecar.http.exchange import ResponseHead, StreamReset
from sidecar.http.h2 import H2Protocol, H2ServerStream
from tests.test_h2_cuts import DEADLINE, FakeTransport, _until, h2_client, handled, request


async def _serve(handler: object, streams: int, end: bool = True) -> H2Protocol:
    """A server connection given `streams` requests (ended, or bodies still to come); more
    come with `_send(proto, ...)`."""
    proto = H2Protocol(client_side=False, handler=handler)  # type: ignore[arg-type]
    proto.connection_made(FakeTransport())
    _clients[proto] = h2_client({})
    _send(proto, streams, end)
    return proto


_clients: weakref.WeakKeyDictionary[H2Protocol, h2.connection.H2Connection] = (
    weakref.WeakKeyDictionary()
)


def _send(proto: H2Protocol, streams: int, end: bool = True, first: int = 1) -> None:
    client = _clients[proto]
    for n in range(streams):
        request(client, first + 2 * n, end=end)
    proto.data_received(client.data_to_send())


async def _ended(tasks: set[asyncio.Task[None]] | list[asyncio.Task[None]]) -> None:
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), DEADLINE)


def _answer_when(release: asyncio.Event, seen: list[H2ServerStream]):
    async def answer(stream: H2ServerStream) -> None:
        seen.append(stream)
        await release.wait()
        await stream.respond(ResponseHead(200, [(b"content-length", b"0")]), end=True)

    return answer


async def _answered(streams: int) -> tuple[H2Protocol, list[H2ServerStream]]:
    """A server connection whose handler answers at once, given `streams` requests: returned
    once each was answered and its task waits for the next stream."""
    release = asyncio.Event()
    release.set()
    seen: list[H2ServerStream] = []
    proto = await _serve(_answer_when(release, seen), streams)
    await _until(lambda: len(seen) == streams, "the handlers did not start")
    await handled(proto)
    return proto, seen


async def test_each_request_has_a_task_held_while_it_runs() -> None:
    release = asyncio.Event()
    seen: list[H2ServerStream] = []
    proto = await _serve(_answer_when(release, seen), 3)
    try:
        await _until(lambda: len(seen) == 3, "the handlers did not start")
        tasks = set(proto.workers)
        assert len(tasks) == 3 and not any(task.done() for task in tasks)
        assert proto._idle_workers == []
        release.set()
        await handled(proto)
        assert not proto.streams
        # Done with their streams, the three wait for the next ones, still held.
        assert proto.workers == tasks and len(proto._idle_workers) == 3
        assert not any(task.done() for task in tasks)
    finally:
        proto.connection_lost(None)
    await _ended(tasks)
    assert all(task.exception() is None for task in tasks)
    assert proto.workers == set() and proto._idle_workers == []


async def test_a_task_done_with_its_stream_serves_the_next_one() -> None:
    """The last to wait takes the next stream; no task is made while one waits."""
    proto, seen = await _answered(1)
    try:
        (worker,) = proto.workers
        _send(proto, 1, first=3)
        assert proto.workers == {worker} and proto._idle_workers == []
        await _until(lambda: len(seen) == 2, "the second did not start")
        await handled(proto)
        assert [s.stream_id for s in seen] == [1, 3] and proto.workers == {worker}
    finally:
        proto.connection_lost(None)
    await _ended([worker])


async def test_at_most_so_many_tasks_wait() -> None:
    release = asyncio.Event()
    seen: list[H2ServerStream] = []
    proto = await _serve(_answer_when(release, seen), 0)
    proto.max_idle_workers = 2
    _send(proto, 4)
    try:
        await _until(lambda: len(seen) == 4, "the handlers did not start")
        tasks = set(proto.workers)
        release.set()
        await handled(proto)
        assert len(proto.workers) == 2 and len(proto._idle_workers) == 2
        await _ended(tasks - proto.workers)
    finally:
        proto.connection_lost(None)
    await _ended(tasks)


async def test_a_failed_handlers_stream_is_let_go() -> None:
    async def fail(stream: H2ServerStream) -> None:
        raise RuntimeError("handler bug")

    proto = await _serve(fail, 2)
    try:
        tasks = set(proto.workers)
        assert len(tasks) == 2
        await handled(proto)
        assert not proto.streams
        assert proto.workers == tasks  # each waits for a next stream
    finally:
        proto.connection_lost(None)
    await _ended(tasks)


async def test_tasks_are_let_go_when_the_connection_is_lost() -> None:
    started: list[H2ServerStream] = []

    async def read_body(stream: H2ServerStream) -> None:
        started.append(stream)
        with pytest.raises(StreamReset):
            await stream.body.read()  # the body never comes: the connection goes

    proto = await _serve(read_body, 2, end=False)
    await _until(lambda: len(started) == 2, "the handlers did not start")
    tasks = set(proto.workers)
    proto.connection_lost(None)
    await _ended(tasks)
    assert proto.workers == set() and proto._idle_workers == []
    assert all(task.done() and task.exception() is None for task in tasks)  # logged by `_work`


async def test_waiting_tasks_end_when_the_connection_goes_away() -> None:
    """After a GOAWAY no new stream comes: what waits for one ends at once."""
    proto, _ = await _answered(2)
    try:
        tasks = set(proto.workers)
        assert len(tasks) == 2
        proto.goaway()
        await _ended(tasks)
        assert proto.workers == set() and proto._idle_workers == []
        assert all(task.exception() is None for task in tasks)
    finally:
        proto.connection_lost(None)


async def test_a_handler_that_swallows_its_cancellation_is_let_go_too() -> None:
    async def hold(stream: H2ServerStream) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return

    proto = await _serve(hold, 1)
    await asyncio.sleep(0)
    (task,) = proto.workers
    task.cancel()
    await _ended([task])
    assert proto.workers == set() and proto._idle_workers == []  # it did not stay to wait
    proto.connection_lost(None)


async def test_a_waiting_task_cancelled_leaves_the_waiting_list() -> None:
    proto, seen = await _answered(1)
    try:
        (task,) = proto.workers
        task.cancel()
        await _ended([task])
        assert task.cancelled() and proto.workers == set() and proto._idle_workers == []
        _send(proto, 1, first=3)
        await _until(lambda: len(seen) == 2, "the next was not served")
        await handled(proto)
    finally:
        proto.connection_lost(None)


async def test_a_stream_that_comes_as_a_waiting_task_is_cancelled_gets_a_task_of_its_own() -> None:
    """Cancelled while it waits, a task leaves the list only when it next runs: a stream (or
    the connection's end) in between passes it by, and nothing raises into the connection."""
    proto, seen = await _answered(1)
    try:
        (cancelled,) = proto.workers
        cancelled.cancel()
        _send(proto, 1, first=3)  # the same turn: its future is cancelled, it has not run
        (fresh,) = proto.workers - {cancelled}
        await _until(lambda: len(seen) == 2, "the next was not served")
        await handled(proto)
        assert cancelled.cancelled() and proto.workers == {fresh}
        fresh.cancel()
    finally:
        proto.connection_lost(None)  # the same turn as the cancel: passed by too
    await _ended([cancelled, fresh])
    assert proto.workers == set() and proto._idle_workers == []


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
