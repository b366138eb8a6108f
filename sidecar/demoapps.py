"""The demo's apps and clients, written against the standard library only so `pysidecar demo`
needs nothing beyond pysidecar: a line echo (tcp), a small HTTP/1.1 server that reports what it
saw (http), and a minimal RFC 6455 websocket echo with its client (http-tagged websockets)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


async def line_echo(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while line := await reader.readline():
            writer.write(f"{name} got: ".encode() + line)
            await writer.drain()
    writer.close()


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return head[0], headers


async def http_app(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request with the request line it saw and who called (XFCC)."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            line, headers = await read_head(reader)
            if "content-length" in headers:
                await reader.readexactly(int(headers["content-length"]))
            caller = headers.get("x-forwarded-client-cert", "-")
            body = f"{name} saw `{line}` from {caller}\n".encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
    writer.close()


def _frame(payload: bytes, opcode: int = 1, mask: bool = False) -> bytes:
    head = bytes([0x80 | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    key = await reader.readexactly(4) if second & 0x80 else b""
    payload = await reader.readexactly(size)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


async def websocket_echo(
    name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Accepts the upgrade, then echoes text messages prefixed with its name."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        _, headers = await read_head(reader)
        accept = base64.b64encode(
            hashlib.sha1(headers["sec-websocket-key"].encode() + WS_GUID).digest()
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        while True:
            opcode, payload = await _read_frame(reader)
            if opcode == 8:  # close: echo it and stop
                writer.write(_frame(payload, 8))
                break
            writer.write(_frame(f"{name} echoes: ".encode() + payload, opcode))
            await writer.drain()
    writer.close()


async def websocket_call(host: str, port: int, messages: list[str]) -> tuple[str, list[str]]:
    """Upgrade through `port`, send each message, collect the echoes; returns (101 line, echoes)."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /chat HTTP/1.1\r\nHost: chat\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    status, headers = await read_head(reader)
    expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != expected:
        raise ConnectionError(f"bad websocket handshake: {status}")
    echoes = []
    for message in messages:
        writer.write(_frame(message.encode(), 1, mask=True))
        echoes.append((await _read_frame(reader))[1].decode())
    writer.write(_frame(struct.pack("!H", 1000), 8, mask=True))
    await _read_frame(reader)
    writer.close()
    return status, echoes


async def http_get(host: str, port: int, paths: list[str]) -> list[str]:
    """GET each path on one kept-alive HTTP/1.1 connection; the response bodies."""
    reader, writer = await asyncio.open_connection(host, port)
    bodies = []
    for path in paths:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
        status, headers = await read_head(reader)
        body = await reader.readexactly(int(headers["content-length"]))
        bodies.append(f"{status.split(' ', 1)[1]}: {body.decode().strip()}")
    writer.close()
    return bodies
