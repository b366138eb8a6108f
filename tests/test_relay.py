"""The relay in-process, for what needs a short timeout: idle connections are closed."""

from __future__ import annotations

import asyncio

from sidecar.runner import loop_factory
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
