"""Session 18: what an idle HTTP/1.1 keep-alive connection holds (issue 8's 10,000 idle
connections; `bench.memprobe --http`, the `idle-http` scenario).

- A listener's connections share its route (`ListenerStack.shared_route`): one `Route`, with
  its request-timeout and stream-idle tables and their loop timers, per outbound listener and
  per caller identity inbound — made again when what it is made of changes (a reload's plan and
  cluster, the access log, the mesh pool), never per connection.
- A keep-alive connection waiting for its next request holds no part of the one it answered.
- The bench's idle client tells a whole answer from a partial one, and holds HTTP connections.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path

from bench.procs import free_port, listening, wait_until
from bench.tools import _answered_200
from sidecar.cluster import Cluster
from sidecar.http.exchange import ResponseHead
from sidecar.http.h1 import H1Server, H1ServerExchange
from sidecar.http.pool import plain_connector
from sidecar.identity.mesh import Peer
from sidecar.listener import StackOptions
from sidecar.observe.stats import ClusterStats, ListenerStats
from sidecar.outbound import OutboundStack, mesh_pool
from sidecar.plan import ListenerPlan
from tests.test_s13_peer_requests import _inbound

ROOT = Path(__file__).resolve().parent.parent


def _outbound_plan(cluster: str = "backend") -> ListenerPlan:
    return ListenerPlan(
        "outbound:127.0.0.1:1", "outbound", "127.0.0.1", 1, cluster, cluster, None,
    )  # fmt: skip


def test_an_outbound_listeners_connections_share_one_route_until_what_it_is_made_of_changes():
    async def run() -> None:
        cluster = Cluster("backend", ClusterStats("backend"))
        stack = OutboundStack(
            _outbound_plan(), cluster, ListenerStats("127.0.0.1_1", "outbound"), StackOptions(),
            lambda: "http", mesh_pool(plain_connector(5.0)),
        )  # fmt: skip
        first = stack.route()
        assert stack.route() is first  # every connection: the same route, the same timers
        assert first.heads is stack.route().heads and first.idle_checks is stack.route().idle_checks

        stack.on_request_done = lambda record: None  # the access log turned on
        logged = stack.route()
        assert logged is not first and logged.on_request_done is stack.on_request_done
        assert stack.route() is logged

        stack.mesh_pool = mesh_pool(plain_connector(5.0), trusted=True)  # a reload's new pool
        pooled = stack.route()
        assert pooled is not logged and not pooled.strips_responses

        renamed = _outbound_plan("other")
        stack.update(renamed, Cluster("other", ClusterStats("other")))  # a reload's new plan
        reloaded = stack.route()
        assert reloaded is not pooled and reloaded.cluster is stack.cluster
        assert reloaded.cluster.name == "other" and stack.route() is reloaded

    asyncio.run(run())


def test_an_inbound_shares_a_route_per_caller_identity():
    async def run() -> None:
        stack = _inbound()
        web = Peer.from_uris(["spiffe://default/web"], "default")
        web_again = Peer.from_uris(["spiffe://default/web"], "default")
        api = Peer.from_uris(["spiffe://default/api"], "default")
        assert stack.route(web) is stack.route(web_again)
        assert stack.route(api) is not stack.route(web)
        assert stack.route(None) is stack.route(None)
        assert stack.route(None).checks_requests and not stack.route(web).checks_requests

    asyncio.run(run())


def test_a_keep_alive_connection_waiting_for_its_next_request_holds_none_of_the_last():
    def exchanges() -> int:
        gc.collect()
        return sum(type(o) is H1ServerExchange for o in gc.get_objects())

    async def run() -> None:
        async def answer(exchange: H1ServerExchange) -> None:
            await exchange.respond(ResponseHead(200, [(b"content-length", b"2")]), last=b"ok")

        servers: list[H1Server] = []

        def accept() -> H1Server:
            servers.append(H1Server(answer, default_authority=b"backend"))
            return servers[-1]

        listener = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(2):
                writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200 ") and await reader.readexactly(2) == b"ok"
                # (the server finishes its side once the answer is written)
                deadline = asyncio.get_running_loop().time() + 10
                while servers[0].exchange is not None or servers[0]._next is None:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.001)
                task = servers[0].task
                assert task is not None and not task.done()  # the connection's task waits
                assert exchanges() == 0  # and holds no exchange, head or body of the last one
        finally:
            writer.close()
            await writer.wait_closed()
            listener.close()
            await listener.wait_closed()

    asyncio.run(run())


def test_the_idle_client_tells_a_whole_answer():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\n"
    assert _answered_200(head[:20]) is None  # the head is not all here
    assert _answered_200(head + b"ab") is None  # nor the body
    assert _answered_200(head + b"abcd") is True
    refused = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno"
    assert _answered_200(refused) is False


def test_the_idle_client_holds_http_connections_and_asks_again_on_each():
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.tools", "http-server", "--port", str(port)], cwd=ROOT
    )
    try:
        wait_until(lambda: listening(port), 30, "the HTTP app listening")
        argv = [sys.executable, "-m", "bench.tools", "idle-client", "--port", str(port),
                "--connections", "50", "--batch", "16", "--hold", "0", "--http"]  # fmt: skip
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        figures = json.loads(done.stdout)
        assert figures == figures | {"connections": 50, "established": 50, "held": 50, "failed": 0}
    finally:
        server.terminate()
        server.wait(10)
