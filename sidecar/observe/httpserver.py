"""A small HTTP/1.1 server on h11 for the admin API, the metrics endpoint and the virtual probes.

Not a data path: clarity and robustness over speed. It never dies on bad input: a malformed request
gets a 400 and the connection is closed, a handler that raises gets a 500, a request head over
16 KiB or a body over 64 KiB is refused, and a connection idle for 30 s is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import h11

log = logging.getLogger("sidecar.observe.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
IDLE_TIMEOUT = 30.0


@dataclass
class Request:
    method: str
    target: str  # as sent: path and query
    path: str
    query: dict[str, str]  # last value wins; a key without value maps to ""
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Response:
    status: int
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    after: Callable[[], None] | None = None  # run once the response is written (e.g. quit)


Handler = Callable[[Request], Awaitable[Response]]


def text(status: int, body: str) -> Response:
    return Response(status, body)


class HttpServer:
    """One listening socket; `handler` answers each request."""

    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name
        self.handler = handler
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str | Sequence[str], port: int) -> None:
        """Bind (`host`: one address or name, or several); raises OSError (the caller names the
        listener in its error)."""
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._connection(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection take the server down
            log.exception("event=http_connection_failed server=%s", self.name)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            try:
                request = await self._read_request(conn, reader)
            except h11.RemoteProtocolError as exc:
                await self._send_error(conn, writer, exc.error_status_hint, str(exc))
                return
            except _TooLarge:
                await self._send_error(conn, writer, 413, "request body too large")
                return
            if request is None:
                return
            try:
                response = await self.handler(request)
            except Exception as exc:
                log.exception("event=http_failed server=%s path=%s", self.name, request.path)
                response = text(500, f"internal error: {exc!r}\n")
            await self._send(conn, writer, request, response)
            if response.after is not None:
                response.after()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> Request | None:
        request: Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Request):
                target = event.target.decode("latin-1")
                parts = urlsplit(target)
                request = Request(
                    method=event.method.decode("latin-1").upper(),
                    target=target,
                    path=parts.path or "/",
                    query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                    headers=[
                        (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
                    ],
                )
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise _TooLarge
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                request.body = bytes(body)
                return request

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: Request,
        response: Response,
    ) -> None:
        body = response.body.encode() if isinstance(response.body, str) else response.body
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(body))),
            ("cache-control", "no-cache, max-age=0"),
            *response.headers,
        ]
        data = conn.send(
            h11.Response(
                status_code=response.status, headers=headers, reason=_reason(response.status)
            )
        )
        if request.method != "HEAD":
            data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()

    async def _send_error(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{message}\n".encode()
        with contextlib.suppress(h11.LocalProtocolError):
            data = conn.send(
                h11.Response(
                    status_code=status,
                    reason=_reason(status),
                    headers=[
                        ("content-type", "text/plain; charset=utf-8"),
                        ("content-length", str(len(body))),
                        ("connection", "close"),
                    ],
                )
            )
            data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            writer.write(data)
            await writer.drain()


class _TooLarge(Exception):
    pass


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
