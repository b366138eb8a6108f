"""Real servers for the L7 tests: an ASGI app served by hypercorn (HTTP/1.1 and h2c), run in a
thread of the test process, plus helpers to reach it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from tests.support import LOOPBACK, free_port, port_open, wait_for


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what it saw: method, path, HTTP version, headers, body size and digest.

    Special paths: /status/N (answer N), /bytes/N (N bytes of 'x', streamed in 64 KiB pieces),
    /trailers (a response with trailers), /sleep/S (answer after S seconds).
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        digest.update(body)
        size += len(body)
        if not message.get("more_body"):
            break
    path: str = scope["path"]
    parts = path.strip("/").split("/")
    if parts[0] == "sleep":
        await asyncio.sleep(float(parts[1]))
    if parts[0] == "bytes":
        n = int(parts[1])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        # Stop once the client has gone: Hypercorn ignores a send after a disconnect, so a
        # large answer would otherwise keep the app's one loop busy (and every other request
        # waiting) for as long as it takes to make the rest of it.
        gone = asyncio.get_running_loop().create_task(_disconnected(receive))
        chunk = b"x" * 65536
        try:
            while n > 0 and not gone.done():
                piece = chunk[: min(n, len(chunk))]
                n -= len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": n > 0})
                await asyncio.sleep(0)  # let `gone` see the disconnect
        finally:
            gone.cancel()
        return
    status = int(parts[1]) if parts[0] == "status" else 200
    seen = {
        "method": scope["method"],
        "path": path,
        "query": scope["query_string"].decode(),
        "http_version": scope["http_version"],
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        "body_size": size,
        "body_sha256": digest.hexdigest(),
    }
    payload = json.dumps(seen).encode() if status not in (204, 304) else b""
    trailers = parts[0] == "trailers"
    headers = [(b"content-type", b"application/json")]
    if trailers:
        headers.append((b"trailer", b"x-checksum"))
    else:
        headers.append((b"content-length", str(len(payload)).encode()))
    await send(
        {"type": "http.response.start", "status": status, "headers": headers, "trailers": trailers}
    )
    await send({"type": "http.response.body", "body": payload, "more_body": trailers})
    if trailers:
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"x-checksum", hashlib.md5(payload).hexdigest().encode())],
                "more_trailers": False,
            }
        )


class Hypercorn:
    """hypercorn serving `echo_app` on loopback (HTTP/1.1 and h2c prior knowledge)."""

    def __init__(self, app: Any = echo_app, port: int | None = None) -> None:
        self.port = port or free_port()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        config = Config()
        config.bind = [f"{LOOPBACK}:{self.port}"]
        config.accesslog = None
        config.errorlog = None
        config.keep_alive_timeout = 30
        # At close, a request still running (a test's /sleep/S, one the test gave up on) is
        # cancelled after this, not waited for up to hypercorn's default 3 s.
        config.graceful_timeout = 0.2
        config.h2_max_inbound_frame_size = 2**14

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            loop.run_until_complete(serve(app, config, shutdown_trigger=self._stop.wait))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        wait_for(lambda: port_open(self.port), what="hypercorn to listen")

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
