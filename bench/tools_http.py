"""A minimal, fast HTTP/1.1 app for the HTTP scenarios: every request gets the same small answer.

    python3 -m bench.tools http-server --port PORT [--body-size 64]

It is an `asyncio.Protocol` on uvloop that parses just enough of HTTP/1.1 to be a correct
keep-alive server for what the scenarios and the proxies send it: a request head (up to the blank
line), a body framed by Content-Length or chunked encoding (read and dropped), `Connection: close`
and HTTP/1.0 without keep-alive honoured, pipelined requests answered in order with one write per
batch. It answers `200 OK` with a fixed body of `--body-size` bytes and `Content-Length`. No
header is validated beyond that: it exists so that the app is never what a scenario measures
(its own figure is the `direct` path, where h2load talks to it with nothing in between).

Why not an existing server: nghttpd speaks only HTTP/2; hypercorn (pure Python, h11) answers a few
thousand requests per second on one core, which would make the app the bottleneck of the direct
path. This server costs a fraction of that per request (one `data_received`, a `find`, one write).
"""

from __future__ import annotations

import argparse
import asyncio
import socket

HOST = "127.0.0.1"
MAX_HEAD = 64 * 1024


class FixedResponse(asyncio.Protocol):
    __slots__ = ("transport", "buf", "body_left", "chunked", "chunk_left", "trailers",
                 "close_after", "response")

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.body_left = 0  # Content-Length bytes of the current request still to skip
        self.chunked = False  # inside a chunked request body
        self.chunk_left = 0  # data bytes of the current chunk still to skip
        self.trailers = False  # after the last chunk, before the blank line
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        answers = 0
        pos = 0
        n = len(buf)
        while pos < n:
            if self.body_left:
                take = min(self.body_left, n - pos)
                self.body_left -= take
                pos += take
                if self.body_left:
                    break
                answers += 1
                if self.close_after:
                    break
                continue
            if self.chunked:
                done, pos = self._skip_chunks(buf, pos)
                if not done:
                    break
                self.chunked = False
                answers += 1
                if self.close_after:
                    break
                continue
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > MAX_HEAD:
                    self._fail(b"431 Request Header Fields Too Large")
                    return
                break
            head = buf[pos:end]
            pos = end + 4
            if not self._head(head):
                return
            if self.body_left or self.chunked:
                continue
            answers += 1
            if self.close_after:
                break
        self.buf = buf[pos:] if pos < n else b""
        if answers:
            self.transport.write(self.response * answers)
        if self.close_after and not self.body_left and not self.chunked:
            self.transport.close()

    def _head(self, head: bytes) -> bool:
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        if request_line.endswith(b"HTTP/1.0"):
            self.close_after = True
        if line_end < 0:
            return True
        for line in head[line_end + 2 :].split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    self.body_left = int(value)
                except ValueError:
                    self._fail(b"400 Bad Request")
                    return False
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
            elif name == b"connection":
                v = value.strip().lower()
                if b"close" in v:
                    self.close_after = True
                elif b"keep-alive" in v:
                    self.close_after = False
        return True

    def _skip_chunks(self, buf: bytes, pos: int) -> tuple[bool, int]:
        """Skip chunked body bytes; (whether the body ended, where we stopped)."""
        n = len(buf)
        while pos < n:
            left = self.chunk_left
            if left:
                take = min(left, n - pos)
                self.chunk_left = left - take
                pos += take
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return False, pos
            line = buf[pos:eol]
            if self.trailers:
                pos = eol + 2
                if not line:  # the blank line after the trailers ends the body
                    self.trailers = False
                    return True, pos
                continue
            if not line:  # the CRLF after a chunk's data
                pos = eol + 2
                continue
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                self._fail(b"400 Bad Request")
                return False, n
            pos = eol + 2
            if size == 0:
                self.trailers = True
                continue
            self.chunk_left = size
        return False, pos

    def _fail(self, status: bytes) -> None:
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
        self.transport.close()


def response_bytes(body_size: int) -> bytes:
    body = (b"pysidecar-bench " * (body_size // 16 + 1))[:body_size]
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def serve(port: int, body_size: int) -> None:
    loop = asyncio.get_running_loop()
    response = response_bytes(body_size)
    server = await loop.create_server(lambda: FixedResponse(response), HOST, port,
                                      reuse_address=True, backlog=4096)
    async with server:
        await server.serve_forever()


def http_server(args: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.body_size))
    else:
        uvloop.run(serve(args.port, args.body_size))
    return 0
