"""The field split of sidecar.http.h1wire against the one it replaced, on many random and mutated
heads: the same fields, framing and flags for a head accepted, the same message and status for
one refused.

The old split (kept here as the reference) read values with a lazy repeat, found the framing
headers with a regex scan of their own and their values by scanning the head again; the new one
reads values with a cheaper regex and looks the framing headers (and their values) up in the
lists of names and fields. Both only ever see heads that `_REQUEST_HEAD` (or `_RESPONSE_HEAD`)
accepted, so the acceptance is the one regex's and must not move: the reference keeps its own
copy of the old head regexes (the new ones repeat possessively, and the request's captures the
version as `1.1` or `1.0`).
"""

from __future__ import annotations

import random
import re

import pytest

from sidecar.http import h1wire
from sidecar.http.h1wire import ProtocolError, parse_request_head, parse_response_head

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_OLD_FIELD_LINES = rb"(?:\r\n" + _TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*)*\r\n"
_OLD_REQUEST_HEAD = re.compile(
    rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])(" + _OLD_FIELD_LINES + rb")"
)
_OLD_RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?(" + _OLD_FIELD_LINES + rb")"
)
_OLD_NAME = re.compile(rb"\r\n(" + _TOKEN + rb"):")
_OLD_VALUE = re.compile(rb"\r\n" + _TOKEN + rb":[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)")
_OLD_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,18})[ \t]*\r\n")
_OLD_FRAMED_BY = re.compile(
    rb"\r\n(content-length|transfer-encoding|host|connection|upgrade|expect):"
)


def _old_fields(fields: bytes, lower: bytes, max_fields: int) -> h1wire.Headers:
    values = _OLD_VALUE.findall(fields)
    if len(values) > max_fields:
        raise ProtocolError(f"{len(values)} header fields, more than {max_fields}", 431)
    return list(zip(_OLD_NAME.findall(lower), values, strict=True))


def _old_values(lower: bytes, fields: bytes, name: bytes) -> list[bytes]:
    key = b"\r\n" + name + b":"
    out = []
    at = lower.find(key)
    while at >= 0:
        start = at + len(key)
        end = lower.find(b"\r\n", start)
        out.append(fields[start:end].strip(b" \t"))
        at = lower.find(key, end)
    return out


def _old_content_length(lower: bytes, framed_by: list[bytes]) -> int:
    if framed_by.count(b"content-length") > 1:
        raise ProtocolError("Content-Length given more than once")
    match = _OLD_LENGTH.search(lower)
    if match is None:
        raise ProtocolError("Content-Length is not a decimal length")
    return int(match[1])


def _old_request(head: bytes, max_fields: int) -> tuple:
    """What the old `parse_request_head` made of `head` (its body, as it was)."""
    match = _OLD_REQUEST_HEAD.fullmatch(head)
    if match is None:
        h1wire._request_head_problem(head)
    method, target, minor, fields = match.groups()
    version = b"1.1" if minor == b"1" else b"1.0"
    lower = fields.lower()
    headers = _old_fields(fields, lower, max_fields)
    keep_alive, expect_continue, upgrade, framing, length = minor == b"1", False, None, 0, 0
    framed_by = _OLD_FRAMED_BY.findall(lower)
    if b"content-length" in framed_by:
        if b"transfer-encoding" in framed_by:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        length, framing = _old_content_length(lower, framed_by), h1wire._LENGTH
    elif b"transfer-encoding" in framed_by:
        if version == b"1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if h1wire._tokens(_old_values(lower, fields, b"transfer-encoding")) != [b"chunked"]:
            raise ProtocolError("a transfer coding other than chunked", 501)
        framing = h1wire._CHUNKED
    hosts = framed_by.count(b"host")
    if hosts > 1 or (hosts == 0 and version == b"1.1"):
        raise ProtocolError("HTTP/1.1 needs exactly one Host")
    if b"connection" in framed_by:
        connection = h1wire._tokens(_old_values(lower, fields, b"connection"))
        if b"close" in connection:
            keep_alive = False
        if b"upgrade" in connection and b"upgrade" in framed_by:
            tokens = h1wire._tokens(_old_values(lower, fields, b"upgrade"))
            upgrade = tokens[0] if tokens else None
    if b"expect" in framed_by:
        expect_continue = b"100-continue" in h1wire._tokens(
            _old_values(lower, fields, b"expect")
        )
    return (method, target, version, headers, keep_alive, expect_continue, upgrade, framing, length)


def _old_response(head: bytes, max_fields: int) -> tuple:
    """What the old `parse_response_head` made of `head` (its body, as it was)."""
    match = _OLD_RESPONSE_HEAD.fullmatch(head)
    if match is None:
        h1wire._response_head_problem(head)
    minor, status, reason, fields = match.groups()
    lower = fields.lower()
    headers = _old_fields(fields, lower, max_fields)
    keep_alive, framing, length = minor == b"1", h1wire._UNTIL_EOF, 0
    framed_by = _OLD_FRAMED_BY.findall(lower)
    connection = _old_values(lower, fields, b"connection")
    if b"connection" in framed_by and b"close" in h1wire._tokens(connection):
        keep_alive = False
    if b"content-length" in framed_by:
        if b"transfer-encoding" in framed_by:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        length, framing = _old_content_length(lower, framed_by), h1wire._LENGTH
    elif b"transfer-encoding" in framed_by:
        if h1wire._tokens(_old_values(lower, fields, b"transfer-encoding")) != [b"chunked"]:
            raise ProtocolError("a transfer coding other than chunked", 501)
        framing = h1wire._CHUNKED
    version = b"1.1" if minor == b"1" else b"1.0"
    return (int(status), version, headers, reason or b"", keep_alive, framing, length)


def _new_request(head: bytes, max_fields: int) -> tuple:
    r = parse_request_head(head, max_fields)
    return (
        r.method, r.target, r.version, r.headers, r.keep_alive, r.expect_continue, r.upgrade,
        r.framing, r.length,
    )  # fmt: skip


def _new_response(head: bytes, max_fields: int) -> tuple:
    r = parse_response_head(head, max_fields)
    return (r.status, r.version, r.headers, r.reason, r.keep_alive, r.framing, r.length)


def _outcome(parse, head: bytes, max_fields: int) -> tuple:  # noqa: ANN001 - either parser
    try:
        return ("ok", parse(head, max_fields))
    except ProtocolError as exc:
        return ("refused", str(exc), exc.status)


_NAMES = [
    b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding",
    b"Connection", b"Upgrade", b"Expect", b"X-A", b"x-b", b"Te", b"Trailer", b"Cookie",
]  # fmt: skip
_VALUE_PIECES = [
    b"", b" ", b"\t", b"  \t ", b"a", b"A b", b"0", b"5", b"12", b"+5", b"1,1", b"0x1",
    b"1" * 18, b"1" * 19, b"chunked", b"gzip, chunked", b"close", b"keep-alive", b"upgrade",
    b"Upgrade, close", b"websocket", b"h2c", b"100-continue", b":", b"a:b", b"\x80\xff",
    b'"q"', b",", b"; x=1",
]  # fmt: skip
_BAD_PIECES = [b"\x01", b"\x7f", b"\r", b"\n", b"\r\n", b"\x00", b"\x0b", b"\r\n "]
_START_LINES = [
    b"GET / HTTP/1.1", b"POST /a?b HTTP/1.0", b"CONNECT h:1 HTTP/1.1", b"GET  / HTTP/1.1",
    b"GET / HTTP/2.0", b"GET / HTTP/1.2", b"G\x01T / HTTP/1.1", b"GET /\x80 HTTP/1.1",
]  # fmt: skip
_STATUS_LINES = [
    b"HTTP/1.1 200 OK", b"HTTP/1.0 204", b"HTTP/1.1 101 Switching Protocols",
    b"HTTP/1.1 200 ", b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 200 O\x01K",
]  # fmt: skip
_NOISE = b"\r\n\t :;,\x00\x01\x7f\x80aZ09-_"


def _field(rng: random.Random) -> bytes:
    name = rng.choice(_NAMES)
    if rng.random() < 0.05:
        name = rng.choice([b"", b"Bad Name", b" x", b"x ", b"x\x01"])
    pieces = [rng.choice(_VALUE_PIECES) for _ in range(rng.randrange(4))]
    if rng.random() < 0.05:
        pieces.insert(rng.randrange(len(pieces) + 1), rng.choice(_BAD_PIECES))
    value = b"".join(pieces)
    return name + b":" + value


def _mutate(rng: random.Random, head: bytes) -> bytes:
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(head) + 1)
        what = rng.randrange(3)
        if what == 0:
            head = head[:at] + bytes([rng.choice(_NOISE)]) + head[at:]
        elif what == 1:
            head = head[:at] + head[at + 1 :]
        else:
            head = head[:at] + bytes([rng.randrange(256)]) + head[at + 1 :]
    return head


def _heads(rng: random.Random, starts: list[bytes], count: int) -> list[bytes]:
    heads = []
    for _ in range(count):
        start = rng.choice(starts[:3] if rng.random() < 0.8 else starts)
        fields = [_field(rng) for _ in range(rng.randrange(7))]
        head = b"\r\n".join([start, *fields]) + b"\r\n"
        heads.append(_mutate(rng, head) if rng.random() < 0.3 else head)
    return heads


@pytest.mark.parametrize("seed", range(4))
def test_request_heads_read_as_the_old_split_read_them(seed: int):
    rng = random.Random(seed)
    accepted = 0
    for head in _heads(rng, _START_LINES, 3000):
        old = _outcome(_old_request, head, 5)
        assert _outcome(_new_request, head, 5) == old, head
        accepted += old[0] == "ok"
    assert accepted > 300  # the heads are not all refused: the split itself is compared


@pytest.mark.parametrize("seed", range(4))
def test_response_heads_read_as_the_old_split_read_them(seed: int):
    rng = random.Random(100 + seed)
    accepted = 0
    for head in _heads(rng, _STATUS_LINES, 3000):
        old = _outcome(_old_response, head, 5)
        assert _outcome(_new_response, head, 5) == old, head
        accepted += old[0] == "ok"
    assert accepted > 300


@pytest.mark.parametrize(
    ("value", "read"),
    [
        (b"", b""),
        (b" \t ", b""),
        (b"  a  ", b"a"),
        (b"\ta\tb\t", b"a\tb"),
        (b"a: b:c ", b"a: b:c"),
        (b"\x80 \xff", b"\x80 \xff"),
    ],
)
def test_a_value_is_what_lies_between_blanks(value: bytes, read: bytes):
    request = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nX-V:" + value + b"\r\n", 5)
    assert request.headers == [(b"host", b"h"), (b"x-v", read)]


@pytest.mark.parametrize(
    ("value", "length"), [(b"0", 0), (b" 007\t", 7), (b"9" * 18, int(b"9" * 18))]
)
def test_a_content_length_is_read_from_the_value(value: bytes, length: int):
    response = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length:" + value + b"\r\n", 5)
    assert (response.framing, response.length) == (h1wire._LENGTH, length)


@pytest.mark.parametrize("value", [b"", b"1 2", b"\xb2", b"-1", b"9" * 19, b"1,1"])
def test_a_content_length_that_is_not_a_decimal_is_refused(value: bytes):
    with pytest.raises(ProtocolError, match="^Content-Length is not a decimal length$"):
        parse_request_head(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: " + value + b"\r\n", 5)


_OLD_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_OLD_EXT_VALUE = rb"(?:" + _TOKEN + rb"|" + _OLD_QUOTED + rb")"
_OLD_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*" + _OLD_EXT_VALUE + rb")?)*"
)
_EXT_PIECES = [b";", b" ", b"\t", b"=", b"a", b"b-c", b'"q"', b'"', b"\\", b",", b"\x01", b"\x80"]


def test_chunk_extensions_are_accepted_as_before():
    """The token in `_CHUNK_EXT` is possessive now, as in the head regexes."""
    rng = random.Random(7)
    accepted = 0
    for _ in range(20_000):
        ext = b"".join(rng.choice(_EXT_PIECES) for _ in range(rng.randrange(9)))
        old = _OLD_CHUNK_EXT.fullmatch(ext) is not None
        assert (h1wire._CHUNK_EXT.fullmatch(ext) is not None) == old, ext
        accepted += old
    assert accepted > 1000
