"""Protocol sniffing: a pure function over the first bytes of a connection.

It answers HTTP/2 (the connection preface), HTTP/1 (a request line), TLS (a handshake record,
with the SNI when the ClientHello is complete), something else, or "need more". The bytes are
never consumed here: the caller replays them to whichever handler wins.
"""

from __future__ import annotations

import enum
import re

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_PEEK = 8192  # a request line longer than this is not worth waiting for

_REQUEST_LINE = re.compile(rb"^[A-Z][A-Z0-9_-]{0,31} [^\s]{1,8000} HTTP/1\.[01]\r?\n")
_METHOD_START = re.compile(rb"^[A-Z][A-Z0-9_-]{0,31}( |$)")


class Detected(enum.Enum):
    HTTP1 = "http1"
    HTTP2 = "http2"
    TLS = "tls"
    OTHER = "other"


def detect(data: bytes) -> Detected | None:
    """What the first bytes say, or None when more bytes are needed to tell."""
    if not data:
        return None
    if data[: len(H2_PREFACE)] == H2_PREFACE[: len(data)]:
        return Detected.HTTP2 if len(data) >= len(H2_PREFACE) else None
    if data[0] == 0x16:
        if len(data) < 2:
            return None
        return Detected.TLS if data[1] == 0x03 else Detected.OTHER
    if _REQUEST_LINE.match(data):
        return Detected.HTTP1
    if b"\n" in data or len(data) >= MAX_PEEK or not _METHOD_START.match(data):
        return Detected.OTHER
    return None


def client_hello_sni(data: bytes) -> str | None:
    """The server name of a complete TLS ClientHello at the start of `data`, for logs."""
    try:
        if data[0] != 0x16 or data[5] != 0x01:
            return None
        record_end = 5 + int.from_bytes(data[3:5], "big")
        pos = 5 + 4 + 2 + 32  # handshake header, client version, random
        pos += 1 + data[pos]  # session id
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")  # cipher suites
        pos += 1 + data[pos]  # compression methods
        end = pos + 2 + int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(end, record_end):
            kind = int.from_bytes(data[pos : pos + 2], "big")
            size = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if kind == 0:  # server_name: list length, type, name length, name
                name_len = int.from_bytes(data[pos + 7 : pos + 9], "big")
                return data[pos + 9 : pos + 9 + name_len].decode("ascii")
            pos += 4 + size
    except (IndexError, UnicodeDecodeError):
        return None
    return None
