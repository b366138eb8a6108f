"""A head's names and values are split by one regex pass, the names lower-cased one by one
after it (session 13; two passes before, one for the names over the lower-cased lines): the
framing headers must be found by name whatever their place and case, and a field whose name
only ends with a framing header's name (`X-Host`, `X-Content-Length`, ...) or whose value holds
one must not count as one.
"""

from __future__ import annotations

import pytest

from sidecar.http import h1wire
from sidecar.http.h1wire import ProtocolError, parse_request_head, parse_response_head

# Names that end with a framing header's name, and values that hold `name:`.
_LOOK_ALIKES = (
    b"X-Host: a\r\nX-Content-Length: 5\r\nX-Transfer-Encoding: gzip\r\n"
    b"X-Connection: close\r\nX-Upgrade: websocket\r\nX-Expect: 100-continue\r\n"
    b"X-V: host: b, content-length: 7, transfer-encoding: chunked, connection: close\r\n"
)


def test_look_alike_names_are_not_framing_headers_in_a_request():
    request = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\n" + _LOOK_ALIKES, 20)
    assert request.framing == h1wire.BODYLESS
    assert request.length == 0
    assert request.keep_alive is True
    assert request.expect_continue is False
    assert request.upgrade is None
    assert request.headers[0] == (b"host", b"h")
    assert (b"x-host", b"a") in request.headers


def test_a_request_with_only_a_look_alike_host_has_no_host():
    with pytest.raises(ProtocolError, match="^HTTP/1.1 needs exactly one Host$"):
        parse_request_head(b"GET / HTTP/1.1\r\nX-Host: a\r\n", 20)


def test_look_alike_names_are_not_framing_headers_in_a_response():
    response = parse_response_head(b"HTTP/1.1 200 OK\r\n" + _LOOK_ALIKES, 20)
    assert response.framing == h1wire._UNTIL_EOF
    assert response.keep_alive is True


def test_framing_headers_are_found_in_any_place_and_case():
    request = parse_request_head(
        b"POST / HTTP/1.1\r\nX-A: 1\r\nCONTENT-LENGTH: 12\r\nConnection: Upgrade, close\r\n"
        b"UPGRADE: h2c\r\nexpect: 100-continue\r\nhOsT: h\r\n",
        20,
    )
    assert (request.framing, request.length) == (h1wire._LENGTH, 12)
    assert request.keep_alive is False
    assert request.upgrade == b"h2c"
    assert request.expect_continue is True
    response = parse_response_head(
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\nContent-Length:\t 3 \r\n", 20
    )
    assert (response.framing, response.length, response.keep_alive) == (h1wire._LENGTH, 3, False)


@pytest.mark.parametrize(
    "fields",
    [
        b"Content-Length: 1\r\nX-A: b\r\ncontent-length: 1\r\n",
        b"Content-Length: 1\r\nContent-Length: 2\r\n",
    ],
)
def test_a_repeated_content_length_is_refused_wherever_the_second_is(fields: bytes):
    with pytest.raises(ProtocolError, match="^Content-Length given more than once$"):
        parse_request_head(b"PUT / HTTP/1.1\r\nHost: h\r\n" + fields, 20)
    with pytest.raises(ProtocolError, match="^Content-Length given more than once$"):
        parse_response_head(b"HTTP/1.1 200 OK\r\n" + fields, 20)


def test_the_content_length_value_ends_at_its_own_line():
    request = parse_request_head(
        b"PUT / HTTP/1.1\r\nContent-Length: 42\r\nX-N: 99\r\nHost: h\r\n", 20
    )
    assert request.length == 42
