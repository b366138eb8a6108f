"""Session 12: an HTTP/1.1 server connection serves its requests in turn from one task (it
waits on a future between requests) instead of a task per request. Keep-alive and pipelined
requests are served as before, each handler starting on a later turn of the loop than the
request's arrival, and the task ends with the connection: lost, closed after a response, or
after a handler failed."""

from __future__ import annotations

import asyncio

from sidecar.http.exchange import ResponseHead
from sidecar.http.h1 import H1Server, H1ServerExchange
from tests.attack import FakeTransport

_GET = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n"


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _server(seen: list[tuple[bytes, asyncio.Task[object] | None]]) -> H1Server:
    async def answer(exchange: H1ServerExchange) -> None:
        seen.append((exchange.request.path, asyncio.current_task()))
        await exchange.respond(ResponseHead(200, [(b"content-length", b"0")]), end=True)

    return H1Server(answer, default_authority=b"backend")


def test_keep_alive_requests_are_served_in_turn_by_one_task_that_ends_with_the_connection():
    seen: list[tuple[bytes, asyncio.Task[object] | None]] = []

    async def run() -> None:
        server = _server(seen)
        transport = FakeTransport()
        server.connection_made(transport)
        for i in range(3):
            server.data_received(_GET % i)
            assert not seen[i:]  # the handler starts on a later turn of the loop
            await _turns()
            assert len(seen) == i + 1 and server.exchange is None
        task = server.task
        assert task is not None and not task.done()  # waiting for the next request
        assert {t for _, t in seen} == {task}
        server.connection_lost(None)
        await _turns()
        assert task.done() and not task.cancelled() and server.task is None
        assert bytes(transport.written).count(b"HTTP/1.1 200 OK\r\n") == 3

    asyncio.run(run())
    assert [p for p, _ in seen] == [b"/0", b"/1", b"/2"]


def test_pipelined_requests_are_served_in_order_each_on_a_later_turn():
    seen: list[tuple[bytes, asyncio.Task[object] | None]] = []

    async def run() -> None:
        server = _server(seen)
        transport = FakeTransport()
        server.connection_made(transport)
        server.data_received(b"".join(_GET % i for i in range(3)))
        assert not seen
        await asyncio.sleep(0)
        assert [p for p, _ in seen] == [b"/0"]  # one request per turn, not all at once
        await _turns()
        assert [p for p, _ in seen] == [b"/0", b"/1", b"/2"]
        assert bytes(transport.written).count(b"HTTP/1.1 200 OK\r\n") == 3
        assert server.task is not None and not server.task.done()
        server.connection_lost(None)
        await _turns()

    asyncio.run(run())


def test_the_task_ends_when_the_response_closes_the_connection():
    seen: list[tuple[bytes, asyncio.Task[object] | None]] = []

    async def run() -> None:
        server = _server(seen)
        transport = FakeTransport()
        server.connection_made(transport)
        server.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        await _turns()
        task = seen[0][1]
        assert transport.closing and task is not None and task.done() and server.task is None

    asyncio.run(run())


def test_a_failed_handler_resets_the_connection_and_ends_the_task():
    async def fail(exchange: H1ServerExchange) -> None:
        raise RuntimeError("handler bug")

    async def run() -> None:
        server = H1Server(fail, default_authority=b"backend")
        transport = FakeTransport()
        server.connection_made(transport)
        server.data_received(_GET % 0)
        task = server.task
        await _turns()
        assert task is not None and task.done() and server.task is None and transport.closing

    asyncio.run(run())


def test_a_request_after_the_waiting_task_was_cancelled_gets_a_task_of_its_own():
    """As when each request had its own task: cancelling one does not stop the next."""
    seen: list[tuple[bytes, asyncio.Task[object] | None]] = []

    async def run() -> None:
        server = _server(seen)
        transport = FakeTransport()
        server.connection_made(transport)
        server.data_received(_GET % 0)
        await _turns()
        first = server.task
        assert first is not None
        first.cancel()
        await _turns()
        assert first.cancelled()
        server.data_received(_GET % 1)
        await _turns()
        assert [p for p, _ in seen] == [b"/0", b"/1"] and seen[1][1] is not first
        assert bytes(transport.written).count(b"HTTP/1.1 200 OK\r\n") == 2
        server.connection_lost(None)
        await _turns()

    asyncio.run(run())
