"""The splice relay in-process: what needs a short timeout or a look at its insides."""

from __future__ import annotations

import asyncio

from sidecar.runner import loop_factory
from sidecar.transport import splice
from sidecar.transport.acceptor import Acceptor
from sidecar.transport.splice import SpliceRelay
from tests.support import start_echo_server


async def splice_between(idle_timeout: float):
    """client ⇄ [acceptor + splice relay] ⇄ echo server, all on loopback in this process."""
    loop = asyncio.get_running_loop()

    upstream, up_port = await start_echo_server()
    closed = asyncio.Event()
    relays: list[SpliceRelay] = []

    def handle(sock, address):
        relay = SpliceRelay(loop, idle_timeout, lambda r: closed.set(), sock, address)
        relays.append(relay)

        def done(error, timed_out):
            if error is None:
                relay.link()
            else:
                relay.close()

        relay.connect("127.0.0.1", up_port, 5.0, done)

    acceptor = Acceptor.bind(loop, "127.0.0.1", 0, handle)
    return acceptor.sockets[0].getsockname()[1], closed, relays, (upstream, acceptor)


def test_idle_splice_connection_holds_no_pipe_and_is_closed(loop_kind):
    if not splice.supported():
        return
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(idle_connection())


async def idle_connection():
    port, closed, relays, (upstream, acceptor) = await splice_between(idle_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"ping" * 1000)
    assert await reader.readexactly(4000) == b"ping" * 1000
    relay = relays[0]
    assert relay.downstream.rx_bytes == relay.upstream.rx_bytes == 4000
    assert relay.peername is not None and relay.linked
    # Between chunks a relay holds no pipe: they went back to the pool.
    assert relay.downstream.pipe is None and relay.upstream.pipe is None
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the idle timeout
    assert 0.2 <= loop.time() - started < 2
    await asyncio.wait_for(closed.wait(), 5)
    assert relay.idle_timed_out
    writer.close()
    upstream.close()
    acceptor.close()
    assert acceptor.sockets == ()


def test_half_close_then_reply(loop_kind):
    if not splice.supported():
        return
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(half_close())


async def half_close():
    port, closed, relays, (upstream, acceptor) = await splice_between(idle_timeout=0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x" * 300_000)
    writer.write_eof()  # the echo server answers everything, then closes
    assert await asyncio.wait_for(reader.read(-1), 10) == b"x" * 300_000
    await asyncio.wait_for(closed.wait(), 5)
    assert not relays[0].idle_timed_out
    writer.close()
    upstream.close()
    acceptor.close()
