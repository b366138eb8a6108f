"""Protocol sniffing: a pure function over the first bytes of a connection.

It answers HTTP/2 (the connection preface), HTTP/1 (a request line), TLS (a handshake record,
with the SNI when the ClientHello is complete), something else, or "need more"; and the name the
connection asks for (SNI, Host, :authority), which MeshPassthrough's Domain entries match. The
bytes are never consumed here: the caller replays them to whichever handler wins.
"""

from __future__ import annotations

import enum
import re

from hpack import Decoder
from hpack.exceptions import HPACKError

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


def requested_name(data: bytes) -> tuple[bool, str | None]:
    """The name a connection's first bytes ask for: a TLS ClientHello's SNI, the first HTTP/1
    request's Host, the first HTTP/2 request's :authority (lower-cased, without a port). The
    flag says whether the bytes were enough to tell: False while a ClientHello, the request's
    headers or the HEADERS frame are still arriving. Other bytes ask for no name."""
    detected = detect(data)
    if detected is None:
        return False, None
    if detected is Detected.TLS:
        if len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
            return False, None
        return True, _bare_name(client_hello_sni(data))
    if detected is Detected.HTTP1:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False, None
        return True, _bare_name(_http1_host(data[:end]))
    if detected is Detected.HTTP2:
        return _h2_authority(data)
    return True, None


def _http1_host(head: bytes) -> str | None:
    lines = head.split(b"\r\n")
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            return value.strip().decode("latin-1")
    target = lines[0].split(b" ")[1]  # absolute form: http://host[:port]/path
    if b"://" in target:
        return target.split(b"://", 1)[1].split(b"/", 1)[0].decode("latin-1")
    return None


_HEADERS, _CONTINUATION = 0x1, 0x9
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20


def _h2_authority(data: bytes) -> tuple[bool, str | None]:
    """The :authority of the first HEADERS frame after the preface (and any SETTINGS or
    WINDOW_UPDATE before it), its CONTINUATION frames included."""
    pos = len(H2_PREFACE)
    block: bytes | None = None
    while True:
        if len(data) < pos + 9:
            return False, None
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        end = pos + 9 + length
        if len(data) < end:
            return False, None
        payload = data[pos + 9 : end]
        if block is None and kind == _HEADERS:
            if flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]] if payload else b""
            if flags & _PRIORITY:
                payload = payload[5:]
            block = payload
        elif block is not None:
            if kind != _CONTINUATION:
                return True, None  # a protocol error: the request names nothing
            block += payload
        if block is not None and flags & _END_HEADERS:
            break
        pos = end
    try:
        headers = dict(Decoder().decode(block))
    except (HPACKError, UnicodeDecodeError, ValueError):
        return True, None
    return True, _bare_name(headers.get(":authority") or headers.get("host"))


def _bare_name(name: str | None) -> str | None:
    """A host name as policies compare it: lower case, no port, no trailing dot."""
    if not name:
        return None
    name = name.strip().lower()
    if name.startswith("["):  # [v6]:port
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".") or None
