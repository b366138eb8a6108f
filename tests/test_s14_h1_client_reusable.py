"""`H1Client.reusable` is an attribute kept up to date (session 14), no longer a property worked
out each time the pool asks: a connection is reusable when new and once an exchange has ended
with the connection fit for another; from `open`, any byte or EOF from the app, or its loss, it
is not (an idle connection that receives bytes stops being reusable before `connection_lost`).
The whole answer's body is fed and ended in one call (`Body.feed_last`): the same body as
`feed` then `end`.
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.cluster import Target
from sidecar.http.exchange import RequestHead
from sidecar.http.h1 import H1Client
from tests.attack import FakeTransport
from tests.test_s14_h1_pool_idle import _ANSWER, _pool


def _get() -> RequestHead:
    return RequestHead(b"GET", b"http", b"app", b"/", [])


def _idle_client() -> tuple[H1Client, FakeTransport, list[H1Client]]:
    """A connection that carried one exchange and went back to its pool."""
    idle: list[H1Client] = []
    client = H1Client(on_idle=idle.append)
    transport = FakeTransport()
    client.connection_made(transport)
    assert client.reusable  # new: takes its first request
    stream = client.open(_get(), True)
    assert not client.reusable
    client.data_received(_ANSWER)
    assert stream.body.take_whole() == b"ok"
    assert idle == [client] and client.reusable
    return client, transport, idle


@pytest.mark.parametrize(
    "late",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",  # whole, parsed to its end at once
        b"HTTP/1.1 408 Request Timeout\r\n",  # part of a head
        b"x",
    ],
)
def test_bytes_on_an_idle_connection_make_it_not_reusable(late: bytes):
    async def run() -> None:
        client, transport, idle = _idle_client()
        client.data_received(late)
        assert not client.reusable  # before connection_lost (and before a close, if any)
        client.connection_lost(None)
        assert not client.reusable

    asyncio.run(run())


def test_eof_and_loss_of_an_idle_connection_make_it_not_reusable():
    async def run() -> None:
        client, transport, idle = _idle_client()
        client.eof_received()
        assert not client.reusable
        client, transport, idle = _idle_client()
        client.connection_lost(None)
        assert not client.reusable

    asyncio.run(run())


def test_an_exchange_in_flight_is_not_reusable_until_its_end():
    async def run() -> None:
        idle: list[H1Client] = []
        client = H1Client(on_idle=idle.append)
        client.connection_made(FakeTransport())
        stream = client.open(_get(), True)
        client.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
        assert stream.response_head.done() and not client.reusable and idle == []
        client.data_received(b"ok")
        assert idle == [client] and client.reusable
        body = [await stream.body.read(), await stream.body.read(), await stream.body.read()]
        assert body == [b"ok", b"ok", None]

    asyncio.run(run())


def test_the_pool_passes_over_an_idle_connection_that_received_bytes():
    async def run() -> None:
        pool, made = _pool()
        target = Target("127.0.0.1", 8080)
        stream = await pool.open_stream(target, _get(), True)
        made[0].data_received(_ANSWER)
        assert stream.body.take_whole() == b"ok" and pool.idle == {target: [made[0]]}
        made[0].data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # unasked
        await pool.open_stream(target, _get(), True)
        assert len(made) == 2 and pool.idle == {target: []}

    asyncio.run(run())


def test_a_whole_answer_fed_to_an_aborted_body_stays_aborted_and_ended():
    """`feed_last` on a body cut before the answer: as `feed` (refused) then `end`."""

    async def run() -> None:
        client = H1Client()
        client.connection_made(FakeTransport())
        stream = client.open(_get(), True)
        error = RuntimeError("cut")
        stream.body.abort(error)  # type: ignore[arg-type]
        client.data_received(_ANSWER)
        body = stream.body
        assert body.error is error and body.ended and body.at_end and body.buffered == 0
        assert body.take_whole() is None and body.on_consumed is None

    asyncio.run(run())
