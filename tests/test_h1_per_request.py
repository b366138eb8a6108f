"""Per-request work in sidecar.http.h1 and h1wire that was cut (session 9): the Content-Length of
a head to send found at C level, the usual head taken with a search bounded by the size limit,
and an exchange that knows from its request head whether it may become a tunnel."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from sidecar.http import h1, h1wire
from sidecar.http.exchange import EMPTY_BODY, RequestHead, StreamReset
from sidecar.http.h1 import H1Server, H1ServerExchange
from sidecar.http.h1wire import ProtocolError


@pytest.mark.parametrize(
    ("headers", "length"),
    [
        ([], None),
        ([(b"x", b"1"), (b"content-type", b"a")], None),
        ([(b"x", b"1"), (b"content-length", b"12")], 12),
        ([(b"content-length", b"0"), (b"content-length", b"x")], 0),  # the first one frames
        ([(b"Content-Length", b"x"), (b"content-length-x", b"x")], None),  # names are lower-case
    ],
)
def test_the_content_length_to_send_is_the_first_one(headers: h1wire.Headers, length: int | None):
    assert h1._content_length(headers) == length


@pytest.mark.parametrize("value", [b"", b"x", b"-1", b" 1", b"1,1"])
def test_a_content_length_to_send_that_is_not_a_decimal_cannot_frame(value: bytes):
    with pytest.raises(StreamReset, match="cannot frame a body by Content-Length"):
        h1._content_length([(b"a", b"b"), (b"content-length", value)])


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_a_head_up_to_the_limit_is_taken_and_one_past_it_refused(extra: int):
    """The blank line must end within the limit, whether the head came whole (the short path) or
    in pieces (the long one)."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * extra + b"\r\n\r\n"
    limit = len(head) - extra + 1  # the head fits for extra 0 and 1, not for 2
    for pieces in ([head], [head[:5], head[5:]]):
        parser = h1wire.RequestParser(max_head_bytes=limit)
        try:
            events = [event for piece in pieces for event in parser.receive(piece)]
        except ProtocolError as exc:
            assert extra == 2 and exc.status == 431
        else:
            assert extra < 2 and type(events[0]) is h1wire.Request


def test_a_head_with_a_long_rest_is_taken_and_the_rest_kept():
    body = b"b" * 10_000
    parser = h1wire.RequestParser()
    events = parser.receive(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000\r\n\r\n" + body)
    assert events[0].length == 10_000 and b"".join(events[1:-1]) == body


@pytest.mark.parametrize(
    ("method", "upgrade"), [(b"GET", False), (b"POST", False), (b"CONNECT", True)]
)
def test_an_exchange_may_become_a_tunnel_when_its_request_is_a_connect(
    method: bytes, upgrade: bool
):
    """A websocket upgrade is a CONNECT by the time the exchange is made (as HTTP/2 carries it)."""

    async def run() -> None:
        server = H1Server(lambda exchange: asyncio.sleep(0), b"a")
        head = RequestHead(method, b"http", b"a", b"/")
        wire = SimpleNamespace(keep_alive=True, framing=h1wire.BODYLESS)
        exchange = H1ServerExchange(server, head, wire)
        assert exchange.upgrade is upgrade
        # A tunnel's body carries the client's bytes: never the shared empty one.
        assert (exchange.body is EMPTY_BODY) is not upgrade

    asyncio.run(run())
