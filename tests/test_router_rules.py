"""`request_problem` (sidecar.http.rules) passes the usual head by one combined match: its
answers must be those of the part-by-part checks, which are written out plainly here."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.exchange import RequestHead
from sidecar.http.rules import request_problem

METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
AUTHORITY = re.compile(rb"[0-9A-Za-z\-._~%!$&'()*+,;=:\[\]]*")
PATH = re.compile(rb"/[^\x00-\x20\x7f#]*")


def part_by_part(head: RequestHead) -> str | None:
    """The rule as RFC 9113 8.3.1 reads, one part after the other."""
    if METHOD.fullmatch(head.method) is None:
        return "invalid method"
    if AUTHORITY.fullmatch(head.authority) is None:
        return "invalid authority"
    if head.method == b"CONNECT" and head.protocol is None:
        return None if head.authority else "CONNECT without an authority"
    if head.path == b"*":
        return None if head.method == b"OPTIONS" else "asterisk path is only for OPTIONS"
    if head.path[:1] != b"/":
        return "path must begin with /"
    if PATH.fullmatch(head.path) is None:
        return "invalid character in path"
    return None


SAMPLES = [
    b"", b"/", b"*", b"GET", b"OPTIONS", b"CONNECT", b"backend:80", b"/a b", b"a b", b"/a#b",
    b"a@b", b"/x\x7f", b"/\x80", b"[::1]:8080", b"GET /", b"/ /",
]  # fmt: skip
parts = st.one_of(st.binary(max_size=12), st.sampled_from(SAMPLES))


@given(parts, parts, parts, st.one_of(st.none(), st.just(b"websocket")))
def test_the_one_match_answers_as_the_checks_one_by_one(method, authority, path, protocol):
    head = RequestHead(method, b"http", authority, path, protocol=protocol)
    assert request_problem(head) == part_by_part(head)


def test_spaces_cannot_move_a_part_into_another() -> None:
    # Joined, "GET" "a" "/ /" would read as three valid parts shifted: each must fail alone.
    assert request_problem(RequestHead(b"GET", b"http", b"a", b"/ /")) == (
        "invalid character in path"
    )
    assert request_problem(RequestHead(b"GET", b"http", b"a b", b"/")) == "invalid authority"
    assert request_problem(RequestHead(b"GET /", b"http", b"a", b"/")) == "invalid method"
    assert request_problem(RequestHead(b"CONNECT", b"http", b"", b"/")) == (
        "CONNECT without an authority"
    )
