"""Session 12: the head regexes of sidecar.http.h1wire write a value's and a reason's class as the
bytes it takes, and a value's end as a branch: every byte is taken or refused as the negated
class did, and a value is still what lies between blanks. sidecar.http.rules' patterns are
possessive and its path class is written the same way: every head is judged as before."""

from __future__ import annotations

import pytest

from sidecar.http.exchange import RequestHead
from sidecar.http.h1wire import ProtocolError, parse_request_head, parse_response_head
from sidecar.http.rules import request_problem
from tests.test_router_rules import part_by_part

# What a field value or a reason phrase may hold: HTAB, visible characters, SP and obs-text.
_TAKEN = {0x09, *range(0x20, 0x7F), *range(0x80, 0x100)}


@pytest.mark.parametrize("byte", range(256))
def test_a_value_byte_is_taken_or_refused_as_before(byte: int):
    value = b"a" + bytes([byte]) + b"b"
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-V: " + value + b"\r\n"
    if byte in _TAKEN:
        assert parse_request_head(head, 5).headers == [(b"host", b"h"), (b"x-v", value)]
    else:
        with pytest.raises(ProtocolError):
            parse_request_head(head, 5)


@pytest.mark.parametrize("byte", range(256))
def test_a_reason_byte_is_taken_or_refused_as_before(byte: int):
    reason = b"O" + bytes([byte]) + b"K"
    head = b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 0\r\n"
    if byte in _TAKEN:
        assert parse_response_head(head, 5).reason == reason
    else:
        with pytest.raises(ProtocolError):
            parse_response_head(head, 5)


@pytest.mark.parametrize(
    ("value", "read"),
    [
        (b"", b""),
        (b" ", b""),
        (b"\t \t", b""),
        (b"a", b"a"),
        (b" a ", b"a"),
        (b"a \t", b"a"),
        (b"a b\tc", b"a b\tc"),
        (b"\t a b \t ", b"a b"),
        (b" \x80 ", b"\x80"),
    ],
)
def test_each_value_of_a_head_is_what_lies_between_its_blanks(value: bytes, read: bytes):
    """Several fields, blank-only and empty ones among them: each line's value, none skipped
    or run into the next line."""
    head = b"HTTP/1.1 200 OK\r\nA:" + value + b"\r\nB:" + value + b"\r\nC: c\r\n"
    assert parse_response_head(head, 5).headers == [(b"a", read), (b"b", read), (b"c", b"c")]


# sidecar.http.rules before session 12 (greedy repeats, a negated path class) is the
# part-by-part oracle of tests/test_router_rules.py, whose patterns are those of then.


@pytest.mark.parametrize("byte", range(256))
def test_each_byte_in_each_part_of_a_request_head_is_judged_as_before(byte: int):
    b = bytes([byte])
    for method, authority, path in [
        (b"G" + b + b"T", b"a:1", b"/p"),
        (b + b"GET", b"a:1", b"/p"),
        (b"GET", b"a" + b + b":1", b"/p"),
        (b"GET", b + b"a", b"/p"),
        (b"GET", b"a:1", b"/p" + b + b"q"),
        (b"GET", b"a:1", b"/" + b),
        (b"GET", b"", b"/p" + b),
        (b"CONNECT", b"a" + b, b""),
    ]:
        head = RequestHead(method, b"http", authority, path)
        assert request_problem(head) == part_by_part(head), (method, authority, path)
