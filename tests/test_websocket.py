"""Websockets through the mesh with the `websockets` library as client and server, for services
tagged tcp (the relay), http (HTTP/1.1 upgrade → RFC 8441 extended CONNECT on the shared HTTP/2
mesh connection → HTTP/1.1 upgrade replayed to the app) and untagged (sniffed as HTTP)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import Mesh
from tests.support import LOOPBACK, port_open, recv_all, wait_for, wait_ready
from tests.test_http import mesh_connections

MiB = 1024 * 1024


class EchoServer:
    """A websockets echo server in its own thread; records the close codes it received."""

    def __init__(self) -> None:
        self.closes: list[tuple[int | None, str | None]] = []
        self.port = 0
        ready = threading.Event()

        async def handler(ws) -> None:
            try:
                async for message in ws:
                    await ws.send(message)
            except ConnectionClosed:
                pass
            self.closes.append((ws.close_code, ws.close_reason))

        def select_subprotocol(connection, offered):
            return "chat.v1" if "chat.v1" in offered else None

        def process_request(connection, request):
            if request.path == "/private":
                return connection.respond(HTTPStatus.UNAUTHORIZED, "who are you?\n")
            return None

        async def main() -> None:
            self._stop = asyncio.Event()
            async with serve(
                handler,
                LOOPBACK,
                0,
                max_size=None,
                select_subprotocol=select_subprotocol,
                process_request=process_request,
                ping_interval=None,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await self._stop.wait()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(main(),), daemon=True
        )
        self._thread.start()
        ready.wait(10)
        wait_for(lambda: port_open(self.port), what="websocket server")

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def ws_app():
    server = EchoServer()
    yield server
    server.close()


def _ws_pair(mesh: Mesh, app: EchoServer, protocol: str | None) -> tuple[str, int]:
    """echo-1 (tagged `protocol`) serving `app`, behind web's outbound: (url, echo-1's inbound)."""
    tags = {"kuma.io/protocol": protocol} if protocol else {}
    path, inbound = mesh.backend("echo-1", app.port, service="echo", tags=tags)
    web, port = mesh.client("web-1", service="echo")
    wait_ready(
        mesh.start(path, ready=False), mesh.start(web, "--request-timeout", "0.5", ready=False)
    )
    return f"ws://{LOOPBACK}:{port}", inbound


PROTOCOLS = {"tcp": "tcp", "http": "http", "untagged": None}


@pytest.fixture(params=list(PROTOCOLS.values()), ids=list(PROTOCOLS))
def ws_mesh(request, mesh, ws_app):
    """A mesh of the test's own (for a test that kills a sidecar): (url, inbound, protocol)."""
    protocol = request.param
    url, inbound = _ws_pair(mesh, ws_app, protocol)
    return url, inbound, protocol


@dataclass
class SharedWs:
    url: str
    inbound: int
    protocol: str | None
    app: EchoServer


# The tests that leave the mesh as they found it share one per protocol and loop (app, both
# sidecars): starting a pair for each of them was most of this module's time.
@pytest.fixture(
    scope="module",
    params=[(p, loop) for p in PROTOCOLS.values() for loop in ("uvloop", "asyncio")],
    ids=[f"{name}-{loop}" for name in PROTOCOLS for loop in ("uvloop", "asyncio")],
)
def shared_ws(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedWs]:
    protocol, loop = request.param
    app = EchoServer()
    mesh = Mesh(tmp_path_factory.mktemp("ws"), loop)
    try:
        url, inbound = _ws_pair(mesh, app, protocol)
        yield SharedWs(url, inbound, protocol, app)
    finally:
        mesh.close()
        app.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_messages_fragments_ping_and_subprotocol(shared_ws):
    url = shared_ws.url

    async def scenario():
        async with connect(url + "/chat", subprotocols=["chat.v1"], max_size=None) as ws:
            assert ws.subprotocol == "chat.v1"
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            await ws.send("hello text")
            assert await ws.recv() == "hello text"
            await ws.send(b"\x00\x01binary\xff")
            assert await ws.recv() == b"\x00\x01binary\xff"
            await ws.send(iter([b"frag-", b"mented ", b"message"]))
            assert await ws.recv() == b"frag-mented message"
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 10)

    run(scenario())


def test_16_mib_message(shared_ws):
    url = shared_ws.url
    payload = bytes(range(256)) * (16 * MiB // 256)

    async def scenario():
        async with connect(url, max_size=None, compression=None) as ws:
            await ws.send(payload)
            assert await ws.recv() == payload

    run(scenario())


CLOSE_CODES = [1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]


def test_every_close_code_and_reason_is_echoed(shared_ws):
    url, closes = shared_ws.url, shared_ws.app.closes
    # The app is shared with the module's other tests: it also records their closes (code
    # 1000, no reason), possibly a moment after they ended. Ours are told apart by reason.
    seen = len(closes)

    def ours() -> list[tuple[int | None, str | None]]:
        return [c for c in closes[seen:] if (c[1] or "").startswith("bye ")]

    async def scenario(code: int):
        ws = await connect(url)
        await ws.close(code, f"bye {code}")
        return ws.close_code, ws.close_reason

    for i, code in enumerate(CLOSE_CODES):
        assert run(scenario(code)) == (code, f"bye {code}")
        wait_for(lambda i=i: len(ours()) > i, what="the app to see the close")
        assert ours()[i] == (code, f"bye {code}")
    assert ours() == [(code, f"bye {code}") for code in CLOSE_CODES]


def test_handshake_rejected_by_the_app_is_an_ordinary_response(shared_ws):
    url = shared_ws.url

    async def scenario():
        with pytest.raises(InvalidStatus) as err:
            await connect(url + "/private")
        return err.value.response

    response = run(scenario())
    assert response.status_code == 401
    assert response.body == b"who are you?\n"


def test_idle_tunnel_outlives_the_request_timeout(shared_ws):
    """The outbound's request timeout is 0.5 s here; an idle websocket stays open past it."""
    url = shared_ws.url

    async def scenario():
        async with connect(url, ping_interval=None) as ws:
            await asyncio.sleep(1.5)  # idle on purpose: three request timeouts
            await ws.send("still open")
            assert await ws.recv() == "still open"

    run(scenario())


def test_peer_sidecar_killed_mid_stream_closes_promptly(ws_mesh, mesh):
    url, _, _ = ws_mesh

    async def scenario():
        async with connect(url, ping_interval=None) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            mesh.sidecars[0].kill()  # the echo service's sidecar dies
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return loop.time() - started

    assert run(scenario()) < 5


def test_1000_websockets_share_one_mesh_connection(shared_ws):
    url, inbound, protocol = shared_ws.url, shared_ws.inbound, shared_ws.protocol
    if protocol != "http":
        # tcp relays each connection on its own; an untagged service is sniffed, and a client
        # opening a thousand sockets at once on two cores is often slower to speak than the
        # detection timeout, so some of them rightly go the tcp way.
        pytest.skip("sharing one mesh connection is the http case")

    async def scenario():
        # A thousand handshakes at once through two sidecars on a loaded two-core machine can
        # take longer than the client's default 10 s to open: what is checked is that they all
        # open and share one mesh connection, not how fast.
        sockets = await asyncio.gather(
            *(connect(url, ping_interval=None, open_timeout=120) for _ in range(1000))
        )
        try:
            await asyncio.gather(*(ws.send(f"n{i}") for i, ws in enumerate(sockets)))
            replies = await asyncio.gather(*(ws.recv() for ws in sockets))
            assert replies == [f"n{i}" for i in range(1000)]
            return mesh_connections(inbound)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    assert run(scenario()) == 1


def test_unknown_upgrade_is_refused_and_h2c_is_served_over_h1(mesh):
    import json
    import socket

    from tests.apps import Hypercorn
    from tests.test_http import http_mesh

    app = Hypercorn()
    try:
        port = http_mesh(mesh, app.port)
        with socket.create_connection((LOOPBACK, port), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n")
            reply = recv_all(c)
        assert re.match(rb"HTTP/1.1 501 ", reply) and b"upgrade to foo/1 is not supported" in reply
        with socket.create_connection((LOOPBACK, port), timeout=10) as c:
            c.sendall(
                b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
                b"Connection: close\r\n\r\n"
            )
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK")
        assert json.loads(data.partition(b"\r\n\r\n")[2])["http_version"] == "1.1"
    finally:
        app.close()
