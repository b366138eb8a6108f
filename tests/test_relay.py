"""The relay in-process, for what needs a short timeout: idle connections are closed (one
timer per loop and timeout for all of them, `sidecar.transport.idle`)."""

from __future__ import annotations

import asyncio

from sidecar.runner import loop_factory
from sidecar.transport import idle
from sidecar.transport.relay import Relay
from tests.support import start_echo_server


async def relay_between(idle_timeout: float):
    """client ⇄ [relay] ⇄ echo server, all on loopback in this process."""
    loop = asyncio.get_running_loop()

    upstream_server, up_port = await start_echo_server()
    closed = asyncio.Event()
    relays = []

    def factory():
        relay = Relay(loop, idle_timeout, lambda r: closed.set())
        relays.append(relay)

        async def connect():
            await loop.create_connection(lambda: relay.upstream, "127.0.0.1", up_port)
            relay.link()

        relay.downstream.on_made = lambda side: loop.create_task(connect())
        return relay.downstream

    proxy = await loop.create_server(factory, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    return port, closed, relays, [upstream_server, proxy]


def test_idle_connection_is_closed_after_the_idle_timeout(loop_kind):
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(idle_connection_is_closed())


def test_active_connection_is_not_cut(loop_kind):
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(active_connection_is_not_cut())


async def idle_connection_is_closed():
    port, closed, relays, servers = await relay_between(idle_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the relay
    assert 0.2 <= loop.time() - started < 2
    await asyncio.wait_for(closed.wait(), 5)
    assert relays[0].idle_timed_out
    writer.close()
    for s in servers:
        s.close()


async def active_connection_is_not_cut():
    port, closed, relays, servers = await relay_between(idle_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    until = loop.time() + 1.0  # over three idle timeouts of steady traffic
    while loop.time() < until:
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        await asyncio.sleep(0.05)  # the traffic's pace, not synchronisation
    assert not closed.is_set()
    writer.close()
    for s in servers:
        s.close()


def test_many_connections_share_one_idle_timer_and_each_closes_in_its_time(loop_kind):
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(many_idle_connections())


async def many_idle_connections():
    timeout = 0.4
    count = 16
    port, _closed, relays, servers = await relay_between(idle_timeout=timeout)
    loop = asyncio.get_running_loop()

    async def until_closed(reader: asyncio.StreamReader) -> float:
        assert await reader.read() == b""  # closed by the relay
        return loop.time()

    conns: list = []
    for i in range(count):
        started = loop.time()  # before the relay exists, and before its last byte
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if i % 2 or i == count - 1:  # every other one never carries a byte
            started = loop.time()
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
        # (the last one is read from below, and watched for its close after that)
        task = loop.create_task(until_closed(reader)) if i < count - 1 else None
        conns.append((reader, writer, started, task))
        # Spread over a whole timeout: the connections join the shared timer at every phase
        # of its period (one just before a look must not be closed a look early).
        await asyncio.sleep(timeout / count)  # the test's pace, not synchronisation
    # One timer watches them all: no timer per connection.
    sweep = idle._SWEEPS[loop][timeout]
    assert len(idle._SWEEPS[loop]) == 1 and len(sweep.owners) == count - sum(
        1 for relay in relays if relay.closed
    )
    # One connection becomes active again and stays so for three timeouts: it is not cut.
    reader, writer, _, _ = conns[-1]
    until = loop.time() + 3 * timeout
    while loop.time() < until:
        started = loop.time()
        writer.write(b"y")
        assert await reader.readexactly(1) == b"y"
        await asyncio.sleep(timeout / 8)  # the traffic's pace
    assert not relays[-1].closed
    conns[-1] = (reader, writer, started, loop.create_task(until_closed(reader)))
    # Every connection closed, each no sooner than the timeout after its last byte, and
    # within the timeout and a look (with room for a busy machine) after it.
    for _, _, started, task in conns:
        closed_at = await asyncio.wait_for(task, 5)
        assert timeout <= closed_at - started < timeout * (1 + 1 / idle.CHECKS) + 1.0
    assert len(relays) == count and all(relay.idle_timed_out for relay in relays)
    # With nothing left to watch the timer is gone (a later relay makes a new one).
    assert timeout not in idle._SWEEPS.get(loop, {})
    for _, writer, _, _ in conns:
        writer.close()
    for s in servers:
        s.close()


def test_a_connection_closed_otherwise_leaves_the_idle_timer(loop_kind):
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(closed_connection_leaves())


async def closed_connection_leaves():
    port, closed, relays, servers = await relay_between(idle_timeout=60)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    loop = asyncio.get_running_loop()
    sweep = idle._SWEEPS[loop][60]
    assert list(sweep.owners) == relays
    writer.close()  # the client leaves: the relay closes both sides
    await asyncio.wait_for(closed.wait(), 5)
    assert not relays[0].idle_timed_out and not sweep.owners
    for s in servers:
        s.close()
