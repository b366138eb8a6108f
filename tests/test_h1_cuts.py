"""The short paths of sidecar.http.h1wire and sidecar.http.h1 (fewer calls per request) against
the long ones they stand in for: a head checked in one regex pass is refused with the message and
status the checks one by one give, in their order; fields split by two regexes read as before;
an origin-form target skips the target checks but a fragment or a CONNECT does not; the shared
no-body framing cannot be changed by what is written through it."""

from __future__ import annotations

import asyncio
import re

import pytest

from sidecar.http import h1, h1wire
from sidecar.http.exchange import ResponseHead, StreamReset
from sidecar.http.h1 import H1Server, H1ServerExchange
from sidecar.http.h1wire import ProtocolError, parse_request_head, parse_response_head
from tests.attack import FakeTransport

# (head, the message's start, status): several faults at once, the first in the old order wins.
REFUSED_REQUESTS = [
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n", "a control character", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\nX: a\x7f\r\n", "a control character", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n", "a bare CR or LF", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n", "a bare CR or LF", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n folded\r\n", "unsupported version HTTP/2.0", 505),
    (b"GET / HTTP/1.2\r\nHost: a\r\n", "unsupported version HTTP/1.2", 505),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n", "a malformed request line", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n", "a malformed field line", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n", "a malformed field line", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX : v\r\n", "a malformed field line", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n", "Content-Length is not", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n", "Content-Length is not", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"1" * 19 + b"\r\n", "Content-", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\nContent-Length: 1\r\n", "Content-", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 6, "7 header fields", 431),
    (b"GET / HTTP/1.1\r\n", "HTTP/1.1 needs exactly one Host", 400),
]


@pytest.mark.parametrize(("head", "message", "status"), REFUSED_REQUESTS)
def test_a_refused_request_head_says_why_as_before(head: bytes, message: str, status: int):
    with pytest.raises(ProtocolError, match="^" + re.escape(message)) as caught:
        parse_request_head(head, 6)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nX: \x00\r\n", "a control character"),
        (b"HTTP/1.1 200 OK\r\nX: a\nb\r\n", "a bare CR or LF"),
        (b"HTTP/2 200 OK\r\nX: v\r\n", "a malformed status line"),
        (b"HTTP/1.1 200 OK\r\n folded\r\n", "a malformed field line"),
    ],
)
def test_a_refused_response_head_says_why_as_before(head: bytes, message: str):
    with pytest.raises(ProtocolError, match="^" + re.escape(message)):
        parse_response_head(head, 6)


def test_fields_keep_order_repeats_and_value_case_with_names_lower_case():
    request = parse_request_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A:  V: w:x \t\r\nx-a:\r\nCONTENT-LENGTH:\t 12 \r\n", 6
    )
    assert request.headers == [
        (b"host", b"a"),
        (b"x-a", b"V: w:x"),
        (b"x-a", b""),
        (b"content-length", b"12"),
    ]
    assert request.length == 12 and request.framing == h1wire._LENGTH
    response = parse_response_head(b"HTTP/1.5 204\r\nContent-Length: 0\r\nConnection: close\r\n", 6)
    assert (response.status, response.version, response.reason) == (204, b"1.0", b"")
    assert response.headers == [(b"content-length", b"0"), (b"connection", b"close")]
    assert not response.keep_alive


def test_trailers_are_checked_as_before():
    parser = h1wire.RequestParser()
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = parser.receive(head + b"1\r\na\r\n0\r\nX-Sum: A b\r\n\r\n")
    assert events[-1].trailers == [(b"x-sum", b"A b")]
    for bad, message in [
        (b"X: a\x01\r\n\r\n", "a control character"),
        (b"Content-Length: 1\r\n\r\n", "Content-Length or Transfer-Encoding"),
        (b" folded\r\n\r\n", "a bare CR or LF|a malformed field line"),
        (b"X y: 1\r\n\r\n", "a malformed field line"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            h1wire.RequestParser().receive(head + b"0\r\n" + bad)


def test_next_cycle_with_nothing_buffered_waits_and_still_reports_the_close():
    parser = h1wire.RequestParser()
    assert len(parser.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")) == 2  # the head, End
    assert parser.next_cycle() == [] and not parser.paused and parser.idle
    assert [type(e) for e in parser.receive_eof()] == [h1wire.Closed]


def _serve_one(request: bytes) -> bytes:
    async def ok(exchange: H1ServerExchange) -> None:
        await exchange.respond(ResponseHead(200, [(b"content-length", b"0")]), end=True)

    async def run() -> bytes:
        server = H1Server(ok, default_authority=b"backend")
        transport = FakeTransport()
        server.connection_made(transport)
        server.data_received(request)
        for _ in range(50):
            await asyncio.sleep(0)
        return bytes(transport.written)

    return asyncio.run(run())


@pytest.mark.parametrize(
    "line",
    [b"GET /a#b HTTP/1.1", b"CONNECT /a:80 HTTP/1.1", b"GET a/b HTTP/1.1", b"GET * HTTP/1.1"],
)
def test_targets_that_are_none_of_the_four_forms_are_still_refused(line: bytes):
    assert _serve_one(line + b"\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_an_origin_form_target_is_the_path():
    seen = []

    async def record(exchange: H1ServerExchange) -> None:
        seen.append((exchange.request.authority, exchange.request.path))
        await exchange.respond(ResponseHead(200, [(b"content-length", b"0")]), end=True)

    async def run() -> None:
        server = H1Server(record, default_authority=b"backend")
        server.connection_made(FakeTransport())
        server.data_received(b"GET /p?q=1 HTTP/1.1\r\nHost: h:1\r\n\r\n")
        for _ in range(50):
            await asyncio.sleep(0)

    asyncio.run(run())
    assert seen == [(b"h:1", b"/p?q=1")]


def test_the_shared_no_body_framing_refuses_bytes_and_stays_as_it_is():
    framing = h1._NO_BODY_FRAMING
    assert framing.frame(b"") == b"" and framing.last(None) == b""
    with pytest.raises(StreamReset, match="longer"):
        framing.frame(b"x")
    with pytest.raises(StreamReset, match="longer"):
        framing.last(None, b"x")
    assert (framing.chunked, framing.remaining) == (False, 0)


def test_a_length_body_ends_exactly_at_its_length():
    framing = h1._BodyFraming(False, 5)
    assert framing.frame(b"ab") == b"ab"
    with pytest.raises(StreamReset, match="shorter"):
        framing.last(None, b"c")
    with pytest.raises(StreamReset, match="longer"):
        framing.last(None, b"cdef")
    assert framing.last(None, b"cde") == b"cde"
    assert h1._BodyFraming(False, None).last(None, b"any") == b"any"
    chunked = h1._BodyFraming(True, None)
    assert chunked.last([(b"x", b"1")], b"ab") == b"2\r\nab\r\n0\r\nx: 1\r\n\r\n"


@pytest.mark.parametrize("piece", [1, 2, 1000])
def test_a_length_body_read_with_its_head_ends_with_it_and_leaves_the_rest(piece: int):
    """A body that came whole with its head is emitted at once (not through the body loop); what
    follows it stays for the next message, however the bytes were split into reads."""
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + b"HTTP/1.1 204 No\r\n\r\n"
    parser = h1wire.ResponseParser()
    events: list[h1wire.Event] = []
    for at in range(0, len(wire), piece):
        events += parser.receive(wire[at : at + piece])
    body = b"".join(e for e in events if type(e) is bytes)
    assert body == b"hello" and type(events[-1]) is h1wire.End and parser.paused
    assert bytes(parser.buf) == wire[wire.index(b"HTTP/1.1 204") :]
    rest = parser.next_cycle()
    assert [type(e) for e in rest] == [h1wire.Response, h1wire.End]
    assert rest[0].status == 204 and parser.buf == b""


def test_a_response_content_length_is_refused_as_before():
    for head, message in [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 1\r\n", "given more than once"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n", "not a decimal length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n", "both"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            parse_response_head(head, 6)
    response = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length:  7 \r\n", 6)
    assert (response.length, response.framing, response.keep_alive) == (7, h1wire._LENGTH, True)


def test_cancelled_follows_the_error():
    """`cancelled` is an attribute now (the router reads it per request): set wherever `error`
    is."""

    async def run() -> None:
        async def hold(exchange: H1ServerExchange) -> None:
            await asyncio.get_running_loop().create_future()

        for end in ("lost", "reset"):
            server = H1Server(hold, default_authority=b"backend")
            server.connection_made(FakeTransport())
            server.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            exchange = server.exchange
            assert exchange is not None and not exchange.cancelled
            if end == "lost":
                exchange.lost(StreamReset("gone"))
            else:
                exchange.reset()
            assert exchange.cancelled and exchange.error is not None
            assert server.task is not None
            server.task.cancel()

    asyncio.run(run())


def test_a_length_response_still_ends_exactly_at_its_length():
    async def run() -> None:
        results = []

        async def short(exchange: H1ServerExchange) -> None:
            await exchange.respond(ResponseHead(200, [(b"content-length", b"5")]))
            for last in (b"abc", b"abcdef"):
                try:
                    await exchange.finish(None, last)
                except StreamReset as exc:
                    results.append(str(exc))
            await exchange.finish(None, b"abcde")

        server = H1Server(short, default_authority=b"backend")
        transport = FakeTransport()
        server.connection_made(transport)
        server.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        for _ in range(50):
            await asyncio.sleep(0)
        assert results == [
            "body shorter than its Content-Length",
            "body longer than its Content-Length",
        ]
        assert bytes(transport.written).endswith(b"\r\n\r\nabcde")

    asyncio.run(run())
