"""`H1Pool` keeps a connection done with its exchange for the next request to the same endpoint:
reused there, never for another endpoint, and at most `_MAX_IDLE_H1` kept per endpoint (a guard
for any change to how a connection goes back to its pool: session 14 measured one, the
connection carrying its endpoint instead of a `functools.partial` per connection, and dropped it
as within noise).
"""

from __future__ import annotations

import asyncio

from sidecar.cluster import Target
from sidecar.http import pool as pool_module
from sidecar.http.exchange import RequestHead
from sidecar.http.h1 import H1Client
from sidecar.http.pool import H1Pool
from tests.attack import FakeTransport

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _pool() -> tuple[H1Pool, list[H1Client]]:
    made: list[H1Client] = []

    async def connect(target: Target, factory) -> asyncio.BaseTransport:  # noqa: ANN001
        client = factory()
        client.connection_made(FakeTransport())
        made.append(client)
        return client.transport

    return H1Pool(connect), made


def _head() -> RequestHead:
    return RequestHead(b"GET", b"http", b"app", b"/", [])


def test_a_connection_done_is_reused_for_its_endpoint_only():
    async def run() -> None:
        pool, made = _pool()
        one, two = Target("127.0.0.1", 1), Target("127.0.0.1", 2)
        stream = await pool.open_stream(one, _head(), True)
        assert not made[0].reused
        made[0].data_received(_ANSWER)
        assert stream.body.take_whole() == b"ok"
        assert pool.idle == {one: [made[0]]}
        assert pool.ready_stream(two, _head(), True) is None
        again = pool.ready_stream(one, _head(), True)
        assert again is not None and again.client is made[0] and made[0].reused
        assert pool.idle == {one: []}
        other = await pool.open_stream(two, _head(), True)
        assert other.client is made[1]
        made[1].data_received(_ANSWER)
        made[0].data_received(_ANSWER)
        assert pool.idle == {one: [made[0]], two: [made[1]]}

    asyncio.run(run())


def test_no_more_than_the_limit_are_kept_per_endpoint():
    async def run() -> None:
        pool, made = _pool()
        target = Target("127.0.0.1", 1)
        limit = pool_module._MAX_IDLE_H1
        streams = [await pool.open_stream(target, _head(), True) for _ in range(limit + 1)]
        assert len({stream.client for stream in streams}) == limit + 1
        for client in made:
            client.data_received(_ANSWER)
        assert pool.idle[target] == made[:limit]
        assert [c.transport.is_closing() for c in made] == [False] * limit + [True]

    asyncio.run(run())
