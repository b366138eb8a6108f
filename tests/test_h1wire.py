"""The HTTP/1.1 wire codec (sidecar.http.h1wire) on its own: framing, strictness, the parsers fed
in any split, arbitrary bytes (only ProtocolError may come out) and a differential test against
h11 on valid messages (both must read the same method, target, fields, body and trailers); then
its asyncio ends (sidecar.http.h1) in-process: pipelining, one write per response, keep-alive,
the early part of a pipelined head timed, a pipelined flood paused, request body framing.

The refusals a server answers at the socket (400/431/501/505 and close) are in test_limits
(the parser) and test_abuse (a running sidecar)."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http import h1wire
from sidecar.http.exchange import RequestHead, ResponseHead, StreamReset
from sidecar.http.h1 import H1Client, H1Server, H1ServerExchange
from sidecar.http.h1wire import (
    Closed,
    End,
    ProtocolError,
    Request,
    RequestParser,
    Response,
    ResponseParser,
)
from sidecar.limits import Limits
from tests.attack import FakeTransport


def summary(events: list[h1wire.Event]) -> list[tuple]:
    """Events as comparable values, body chunks joined (how bytes were split does not matter)."""
    out: list[tuple] = []
    for e in events:
        if type(e) is bytes:
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + e)
            else:
                out.append(("data", e))
        elif type(e) is Request:
            out.append(("request", e.method, e.target, e.version, e.headers, e.keep_alive))
        elif type(e) is Response:
            out.append(("response", e.status, e.version, e.headers, e.reason))
        elif type(e) is End:
            out.append(("end", e.trailers))
        elif type(e) is Closed:
            out.append(("closed", e.complete))
    return out


def read_all(parser: h1wire._Parser, pieces: list[bytes], eof: bool = False) -> list[tuple]:
    """Feed the pieces, resuming after each message as a server would once it has answered."""
    events: list[h1wire.Event] = []
    for piece in pieces:
        events += parser.receive(piece)
        while parser.paused and not getattr(parser, "switched", False) and not parser.eof:
            more = parser.next_cycle()
            if not more:
                break
            events += more
    if eof:
        events += parser.receive_eof()
    return summary(events)


# -- requests ----------------------------------------------------------------------------------

PIPELINED = (
    b"\r\nGET /a?x=1 HTTP/1.1\r\nHost: a\r\nX-Tab:\tv  w \t\r\n\r\n"
    b"POST /b HTTP/1.1\r\nhost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5;name=value;q="a \\" b"\r\nhello\r\n0a\r\n0123456789\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n'
    b"GET /d HTTP/1.0\r\n\r\n"
)
EXPECTED = [
    ("request", b"GET", b"/a?x=1", b"1.1", [(b"host", b"a"), (b"x-tab", b"v  w")], True),
    ("end", None),
    ("request", b"POST", b"/b", b"1.1", [(b"host", b"a"), (b"content-length", b"5")], True),
    ("data", b"hello"),
    ("end", None),
    (
        "request",
        b"PUT",
        b"/c",
        b"1.1",
        [(b"host", b"a"), (b"transfer-encoding", b"chunked")],
        True,
    ),
    ("data", b"hello0123456789"),
    ("end", [(b"x-sum", b"1"), (b"x-b", b"2")]),
    ("request", b"GET", b"/d", b"1.0", [], False),
    ("end", None),
]


def test_pipelined_requests_in_one_piece():
    assert read_all(RequestParser(), [PIPELINED]) == EXPECTED


def test_pipelined_requests_byte_by_byte():
    """Every byte on its own: the same messages (heads split anywhere, chunk lines too)."""
    assert read_all(RequestParser(), [PIPELINED[i : i + 1] for i in range(len(PIPELINED))]) == (
        EXPECTED
    )


@settings(deadline=None)  # a loaded machine's pauses are not the parser's
@given(st.lists(st.integers(0, len(PIPELINED)), max_size=12))
def test_pipelined_requests_split_anywhere(cuts):
    cuts = sorted(set(cuts))
    pieces = [PIPELINED[a:b] for a, b in zip([0, *cuts], [*cuts, len(PIPELINED)], strict=True)]
    assert read_all(RequestParser(), pieces) == EXPECTED


def test_the_next_request_waits_until_the_server_resumes():
    parser = RequestParser()
    first = parser.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [type(e) for e in first] == [Request, End] and parser.paused
    assert parser.receive(b"") == [] and parser.buffered > 0
    second = parser.next_cycle()
    assert [type(e) for e in second] == [Request, End] and second[0].target == b"/2"


def test_request_flags():
    request = RequestParser().receive(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: WebSocket, foo\r\nExpect: 100-continue\r\n\r\n"
    )[0]
    assert request.upgrade == b"websocket" and request.expect_continue and request.keep_alive
    close = RequestParser().receive(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")[0]
    assert not close.keep_alive and close.upgrade is None
    no_connection = RequestParser().receive(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\n\r\n")[0]
    assert no_connection.upgrade is None  # Upgrade without Connection: upgrade is no upgrade


def test_upgrade_bytes_after_the_request_are_trailing():
    parser = RequestParser()
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    assert [type(e) for e in parser.receive(raw)] == [Request, End]
    assert parser.receive(b"more") == []
    assert parser.trailing == b"\x81\x00more"


@pytest.mark.parametrize(
    "tail, events",
    [
        (b"", [("closed", True)]),  # EOF between requests
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc", "cut"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "cut"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r", "cut"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n", "cut"),
    ],
)
def test_eof(tail, events):
    got = read_all(RequestParser(), [tail], eof=True)
    if events == "cut":
        assert got[-1] == ("closed", False)
    else:
        assert got == events


def test_empty_lines_before_a_request_are_skipped_in_one_go():
    parser = RequestParser()
    assert parser.receive(b"\r\n" * 30000 + b"\r") == [] and parser.buffered == 1
    events = parser.receive(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [type(e) for e in events] == [Request, End]
    with pytest.raises(ProtocolError):
        RequestParser().receive(b"\r\n\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_eof_inside_a_head_is_refused():
    parser = RequestParser()
    parser.receive(b"GET / HTTP/1.1\r\nHo")
    with pytest.raises(ProtocolError):
        parser.receive_eof()


REFUSED = {
    "chunk size overflow": (b"f" * 17 + b"\r\n", 400),
    "chunk size not hex": (b"5g\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size empty": (b"\r\nhello\r\n0\r\n\r\n", 400),
    "chunk size signed": (b"+5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk extension with bare CR": (b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
    "chunk extension with bare LF": (b"5;a\nb\r\nhello\r\n0\r\n\r\n", 400),
    "chunk extension not a token": (b"5;a b\r\nhello\r\n0\r\n\r\n", 400),
    "chunk extension too long": (b"5;" + b"a" * 2000 + b"\r\n", 400),
    "chunk data too long": (b"5\r\nhello!\r\n0\r\n\r\n", 400),
    "chunk size line with bare LF": (b"5\nhello\r\n0\r\n\r\n", 400),
    "obs-fold in trailers": (b"0\r\nX: 1\r\n 2\r\n\r\n", 400),
    "Transfer-Encoding in trailers": (b"0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "trailers over the size limit": (b"0\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_malformed_chunked_bodies_are_refused(name):
    body, status = REFUSED[name]
    parser = RequestParser()
    with pytest.raises(ProtocolError) as caught:
        parser.receive(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert caught.value.status == status


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
         501),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: \xff\x80 ok\r\nX\x80: bad\r\n\r\n", 400),
        (b"GET /\xe9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\n\n", 400),  # never complete: refused as it arrives
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000, 431),  # nor is this one
    ],
)  # fmt: skip
def test_malformed_heads_are_refused(raw, status):
    with pytest.raises(ProtocolError) as caught:
        RequestParser().receive(raw)
    assert caught.value.status == status


def test_a_slow_head_is_scanned_once():
    """A head dribbled in: each arrival is searched from where the last search stopped."""
    parser = RequestParser()
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(50))
    for i in range(len(head)):
        assert parser.receive(head[i : i + 1]) == []
    assert parser._scanned == len(head)
    assert [type(e) for e in parser.receive(b"\r\n")] == [Request, End]


# -- responses ---------------------------------------------------------------------------------


def respond(method: bytes, raw: bytes, eof: bool = False) -> tuple[list[tuple], ResponseParser]:
    parser = ResponseParser()
    parser.expect(method)
    events = parser.receive(raw)
    if eof:
        events += parser.receive_eof()
    return summary(events), parser


def test_response_framings():
    events, parser = respond(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert events[1:] == [("data", b"abc"), ("end", None)] and parser.keep_alive
    events, _ = respond(
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    )
    assert events[1:] == [("data", b"abc"), ("end", [(b"t", b"1")])]
    events, parser = respond(b"GET", b"HTTP/1.1 200 OK\r\n\r\nuntil the end", eof=True)
    assert events[1:] == [("data", b"until the end"), ("end", None)] and not parser.keep_alive
    events, _ = respond(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
    assert events[1:] == [("end", None)]
    for status in (b"204", b"304"):
        events, _ = respond(b"GET", b"HTTP/1.1 " + status + b" X\r\nContent-Length: 30\r\n\r\n")
        assert events[1:] == [("end", None)]
    events, parser = respond(b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert events[1:] == [("end", None)] and not parser.keep_alive
    events, parser = respond(
        b"GET", b"HTTP/1.1 200\r\nConnection: close\r\ncontent-length: 0\r\n\r\n"
    )
    assert events[0][4] == b"" and not parser.keep_alive


def test_interim_responses_then_the_final_one():
    events, _ = respond(
        b"GET",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    )
    assert [e[1] for e in events if e[0] == "response"] == [100, 103, 200]
    assert events[-2:] == [("data", b"x"), ("end", None)]


def test_switching_protocols_hands_over_the_rest():
    events, parser = respond(
        b"GET", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"
    )
    assert events == [
        ("response", 101, b"1.1", [(b"upgrade", b"websocket")], b"Switching Protocols")
    ]
    assert parser.switched and parser.trailing == b"\x81\x05hello"
    events, parser = respond(b"CONNECT", b"HTTP/1.1 200 OK\r\n\r\ntunnel bytes")
    assert parser.switched and parser.trailing == b"tunnel bytes" and len(events) == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 O\x01K\r\n\r\n",
    ],
)
def test_malformed_responses_are_refused(raw):
    with pytest.raises(ProtocolError):
        ResponseParser().receive(raw)


# -- serialisers -------------------------------------------------------------------------------


def test_serialised_messages_read_back():
    head = h1wire.request_head(
        b"POST", b"/x", [(b"host", b"a"), (b"transfer-encoding", b"chunked")]
    )
    wire = head + h1wire.chunk(b"hello") + h1wire.last_chunk([(b"x-sum", b"1")])
    assert read_all(RequestParser(), [wire]) == [
        ("request", b"POST", b"/x", b"1.1", [(b"host", b"a"), (b"transfer-encoding", b"chunked")],
         True),
        ("data", b"hello"),
        ("end", [(b"x-sum", b"1")]),
    ]  # fmt: skip
    response = h1wire.response_head(200, b"OK", [(b"content-length", b"0")])
    assert response == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    assert h1wire.last_chunk(None) == b"0\r\n\r\n"


@pytest.mark.parametrize("bad", [b"a\r\nx-injected: 1", b"a\nb", b"a\rb", b"a\x00b"])
def test_serialisers_refuse_line_breaks_in_fields(bad):
    with pytest.raises(ProtocolError):
        h1wire.response_head(200, b"OK", [(b"x", bad)])
    with pytest.raises(ProtocolError):
        h1wire.request_head(b"GET", b"/", [(bad, b"v")])
    with pytest.raises(ProtocolError):
        h1wire.last_chunk([(b"x", bad)])


# -- arbitrary bytes: only the documented error ------------------------------------------------

wire_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from(
            [b"GET / HTTP/1.1", b"HTTP/1.1 200 OK", b"Host: a", b"Content-Length: 3",
             b"Transfer-Encoding: chunked", b"\r\n", b"\n", b"\r", b"5", b";x=y", b"abc", b"0",
             b": ", b" ", b"\t", b"\x00", b"\xff", b"HTTP/1.1 101 S", b"Connection: close"]
        ),
        max_size=30,
    ).map(b"".join),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(wire_bytes, max_size=5), st.sampled_from([b"GET", b"HEAD", b"CONNECT"]))
def test_any_bytes_raise_only_protocol_error(pieces, method):
    for parser in (RequestParser(max_fields=5), ResponseParser()):
        if isinstance(parser, ResponseParser):
            parser.expect(method)
        try:
            for piece in pieces:
                for event in parser.receive(piece):
                    assert type(event) in (Request, Response, bytes, End, Closed)
                parser.next_cycle()
            parser.receive_eof()
            parser.next_cycle()
        except ProtocolError as exc:
            assert exc.status in (400, 431, 501, 505)


# -- differential: h11 and h1wire read valid messages alike ------------------------------------

token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
                min_size=1, max_size=12).map(str.encode)  # fmt: skip
field_value = st.builds(
    lambda parts: b" ".join(parts),
    st.lists(st.binary(min_size=1, max_size=8).map(
        lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80) or b"v"), max_size=3),
)  # fmt: skip
framing_names = {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade",
                 b"expect", b"te", b"trailer"}  # fmt: skip
fields = st.lists(
    st.tuples(token.filter(lambda t: t.lower() not in framing_names), field_value), max_size=6
)
target = st.builds(lambda s: b"/" + s, st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E and c != 0x23)))  # fmt: skip
body_chunks = st.lists(st.binary(min_size=1, max_size=30), max_size=4)


def h11_events(conn: h11.Connection, wire: bytes) -> list[tuple]:
    conn.receive_data(wire)
    out: list[tuple] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return out
        if isinstance(event, h11.Request):
            headers = [(k, v) for k, v in event.headers]
            out.append(("request", event.method, event.target, event.http_version, headers))
        elif isinstance(event, h11.Response):
            out.append(("response", event.status_code, event.http_version, list(event.headers)))
        elif isinstance(event, h11.Data):
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + bytes(event.data))
            else:
                out.append(("data", bytes(event.data)))
        elif isinstance(event, h11.EndOfMessage):
            out.append(("end", list(event.headers) or None))
            return out


def ours(summaries: list[tuple]) -> list[tuple]:
    """h1wire's summary in h11's shape (h11 has no keep-alive flag, and keeps no reason)."""
    return [s[:5] if s[0] == "request" else s[:4] for s in summaries]


@settings(max_examples=200, deadline=None)
@given(token, target, fields, body_chunks, st.sampled_from(["none", "length", "chunked"]),
       fields, st.integers(1, 7))  # fmt: skip
def test_requests_read_alike_by_h11(method, path, headers, chunks, framing, trailers, step):
    client = h11.Connection(h11.CLIENT)
    all_headers = [(b"Host", b"example.test"), *headers]
    body = b"".join(chunks)
    if framing == "length":
        all_headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        all_headers.append((b"Transfer-Encoding", b"chunked"))
    wire = client.send(h11.Request(method=method, target=path, headers=all_headers))
    if framing != "none":
        for chunk in chunks:
            wire += client.send(h11.Data(data=chunk))
    end_trailers = trailers if framing == "chunked" else []
    wire += client.send(h11.EndOfMessage(headers=end_trailers))
    expected = h11_events(h11.Connection(h11.SERVER), wire)
    pieces = [wire[i : i + step] for i in range(0, len(wire), step)]
    assert ours(read_all(RequestParser(), pieces)) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(200, 599).filter(lambda s: s not in (204, 304)), fields, body_chunks,
       st.sampled_from(["length", "chunked"]), fields, st.integers(1, 7))  # fmt: skip
def test_responses_read_alike_by_h11(status, headers, chunks, framing, trailers, step):
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    server.next_event()
    server.next_event()
    body = b"".join(chunks)
    all_headers = list(headers)
    if framing == "length":
        all_headers.append((b"Content-Length", str(len(body)).encode()))
    wire = server.send(h11.Response(status_code=status, headers=all_headers))
    for chunk in chunks:
        wire += server.send(h11.Data(data=chunk))
    wire += server.send(h11.EndOfMessage(headers=trailers if framing == "chunked" else []))
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    expected = h11_events(client, wire)
    pieces = [wire[i : i + step] for i in range(0, len(wire), step)]
    assert ours(read_all(ResponseParser(), pieces)) == expected


# -- the asyncio ends (sidecar.http.h1) in-process ---------------------------------------------


class CountingTransport(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.paused = False

    def write(self, data: Any) -> None:
        self.writes += 1
        super().write(data)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def _hello(exchange: H1ServerExchange) -> None:
    while await exchange.body.read() is not None:
        pass
    await exchange.respond(ResponseHead(200, [(b"content-length", b"5")]))
    await exchange.write(b"hello")
    await exchange.finish()


async def _settle(condition: Any) -> None:
    """Let the handler tasks run until `condition()` holds (bounded: a few hundred turns)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def test_server_answers_pipelined_requests_in_order_one_write_each():
    async def run() -> None:
        server = H1Server(_hello, default_authority=b"backend")
        transport = CountingTransport()
        server.connection_made(transport)
        server.data_received(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        await _settle(lambda: transport.written.count(b"hello") == 2)
        assert transport.written.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert transport.writes == 2  # each response's head left with its body
        assert not transport.closing
        server.data_received(b"GET /3 HTTP/1.0\r\n\r\n")
        await _settle(lambda: transport.closing)
        assert transport.written.endswith(b"connection: close\r\n\r\nhello")

    asyncio.run(run())


def test_server_answers_http10_without_a_length_until_close():
    async def streamed(exchange: H1ServerExchange) -> None:
        await exchange.respond(ResponseHead(200, []))
        await exchange.write(b"one ")
        await exchange.write(b"two")
        await exchange.finish([(b"x-dropped", b"trailers need chunked")])

    async def run() -> None:
        server = H1Server(streamed, default_authority=b"backend")
        transport = CountingTransport()
        server.connection_made(transport)
        server.data_received(b"GET / HTTP/1.0\r\n\r\n")
        await _settle(lambda: transport.closing)
        assert transport.written == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\none two"

    asyncio.run(run())


def test_server_chunks_a_response_without_a_length():
    async def streamed(exchange: H1ServerExchange) -> None:
        await exchange.respond(ResponseHead(200, []))
        for piece in (b"a", b"", b"bc"):
            await exchange.write(piece)
        await exchange.finish([(b"x-sum", b"1")])

    async def run() -> None:
        server = H1Server(streamed, default_authority=b"backend")
        transport = CountingTransport()
        server.connection_made(transport)
        server.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await _settle(
            lambda: transport.written.endswith(b"\r\n\r\n") and b"x-sum" in transport.written
        )
        assert transport.written == (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"1\r\na\r\n2\r\nbc\r\n0\r\nx-sum: 1\r\n\r\n"
        )
        assert not transport.closing  # kept alive

    asyncio.run(run())


def test_server_times_a_head_that_arrived_early():
    """Part of the next request came with the first one: once the first is answered, the
    request headers timeout runs for the rest (a pipelined slowloris gets 408 too)."""

    async def run() -> None:
        server = H1Server(_hello, default_authority=b"backend", limits=Limits(**{
            "request_headers_timeout": 1.0}))  # fmt: skip
        transport = CountingTransport()
        server.connection_made(transport)
        server.data_received(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHo")
        await _settle(lambda: b"hello" in transport.written)
        assert server.head_started is not None
        server.sweep(server.head_started + 2.0)
        # The 408, then a FIN (the close follows once the client closes: Envoy's delayed close).
        assert transport.written.count(b"HTTP/1.1 408 ") == 1 and transport.eof_written

    asyncio.run(run())


def test_server_stops_reading_a_pipelined_flood_until_its_turn():
    async def run() -> None:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(exchange: H1ServerExchange) -> None:
            started.set()
            await release.wait()
            await _hello(exchange)

        server = H1Server(slow, default_authority=b"backend")
        transport = CountingTransport()
        server.connection_made(transport)
        server.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await started.wait()
        one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        server.data_received(one * (70 * 1024 // len(one)))
        assert transport.paused
        release.set()
        await _settle(lambda: not transport.paused)

    asyncio.run(run())


def _client_with(transport: FakeTransport) -> H1Client:
    client = H1Client()
    client.connection_made(transport)
    return client


def test_client_reuses_a_connection_only_when_the_response_allows():
    async def run() -> None:
        transport = CountingTransport()
        client = _client_with(transport)
        head = RequestHead(
            b"GET", b"http", b"app", b"/", [(b"accept", b"*/*")], http_version=b"1.1"
        )
        stream = client.open(head, end_stream=True)
        assert transport.written == b"GET / HTTP/1.1\r\nhost: app\r\naccept: */*\r\n\r\n"
        assert not client.reusable
        client.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert (await stream.response()).status == 200
        assert await stream.body.read() == b"ok" and client.reusable
        stream = client.open(head, end_stream=True)
        client.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        assert await stream.body.read() is None
        assert not client.reusable and transport.closing
        transport = CountingTransport()
        client = _client_with(transport)
        stream = client.open(head, end_stream=True)
        client.data_received(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
        assert await stream.body.read() == b"until close"
        client.eof_received()
        assert await stream.body.read() is None and not client.reusable

    asyncio.run(run())


def test_client_frames_request_bodies():
    async def run() -> None:
        transport = CountingTransport()
        client = _client_with(transport)
        head = RequestHead(b"POST", b"http", b"app", b"/", [], http_version=b"1.1")
        stream = client.open(head, end_stream=False)
        await stream.write(b"abc")
        await stream.write(b"")  # an empty DATA frame: no zero-size chunk, which would end it
        await stream.finish([(b"x-sum", b"1")])
        assert transport.written.endswith(
            b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n"
        )
        client = _client_with(CountingTransport())
        head.headers = [(b"content-length", b"3")]
        stream = client.open(head, end_stream=False)
        with pytest.raises(StreamReset):
            await stream.write(b"abcd")  # more than declared: the app would read a second request
        stream = _client_with(CountingTransport()).open(head, end_stream=False)
        await stream.write(b"ab")
        with pytest.raises(StreamReset):
            await stream.finish()  # less than declared

    asyncio.run(run())
