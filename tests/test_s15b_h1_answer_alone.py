"""Session 15: an app's answer read whole in one read (head, a whole Content-Length body that is
not empty, nothing after it) is taken by `ResponseParser.answer_alone` (its status, fields and
body: no `Response` made) and handled by `H1Client.data_received` without the event list, the
parsing loop and `_process`. Any other read
whose head is whole is parsed once and handed on as the events `receive` gives; a read without a
whole head, or one while anything is buffered, is left to `receive` untouched. The parser ends in
the state `receive` leaves it in either way, and refuses what `receive` refuses.
"""

from __future__ import annotations

import pytest

from sidecar.http import h1wire
from sidecar.http.exchange import RequestHead
from sidecar.http.h1 import H1Client
from sidecar.http.h1wire import END, ProtocolError, Response, ResponseParser
from tests.attack import FakeTransport

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

# (method, read) taken whole: the head and its body.
_USUAL = [
    (b"GET", _OK),
    (b"POST", b"HTTP/1.0 201 Created\r\ncontent-length: 2\r\nX-A: 1\r\n\r\nhi"),
    (b"GET", b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"),
    (b"GET", b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000),  # large
]
# (method, read) with a whole head but not the usual answer: parsed once, `receive`'s events.
_UNUSUAL = [
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),  # an empty body
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"),  # part of the body
    (b"GET", _OK + b"HTTP/1.1 200 OK\r\n"),  # more than the answer
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello"),  # more than its length
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),  # HEAD: no body
    (b"HEAD", _OK),  # HEAD, with bytes no request asked for
    (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello"),
    (b"CONNECT", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),  # a tunnel's bytes
    (b"CONNECT", b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nhello"),  # declined
    (b"GET", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nraw"),
    (b"GET", b"HTTP/1.1 100 Continue\r\n\r\n" + _OK),  # an interim, then the final answer
    (b"GET", b"HTTP/1.1 100 Continue\r\n\r\n"),  # an interim alone
    (b"GET", b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhello"),  # not its body
    (b"GET", b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 3\r\n\r\nraw"),
    (b"GET", b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
    (b"GET", b"HTTP/1.1 200 OK\r\n\r\nuntil close"),  # until EOF
    (b"GET", b"HTTP/1.0 200 OK\r\n\r\n"),
]
# Reads without a whole head (within the size limit): left to `receive`.
_PARTIAL = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", b"HTTP/1.1 2", b"", b"garbage"]
# Heads refused.
_BAD = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/2 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
]


def _state(parser: ResponseParser) -> tuple[object, ...]:
    return (
        bytes(parser.buf),
        parser.paused,
        parser.keep_alive,
        parser.switched,
        parser._in_body,
        parser._framing,
        parser._remaining,
    )


def _shape(events: list[h1wire.Event]) -> list[object]:
    """Events compared by what they say (a head's fields, a chunk's bytes, an end's trailers)."""
    out: list[object] = []
    for event in events:
        if type(event) is Response:
            out.append(
                (event.status, event.version, event.headers, event.reason, event.keep_alive)
            )
        elif isinstance(event, h1wire.End):
            out.append(("end", event.trailers))
        elif isinstance(event, h1wire.Closed):
            out.append(("closed", event.complete))
        else:
            out.append(bytes(event))
    return out


def _parsers(method: bytes) -> tuple[ResponseParser, ResponseParser]:
    alone, general = ResponseParser(), ResponseParser()
    alone.expect(method)
    general.expect(method)
    return alone, general


@pytest.mark.parametrize(("method", "raw"), _USUAL)
def test_the_usual_answer_is_its_head_and_body_as_receive_gives_them(method, raw):
    alone, general = _parsers(method)
    answer = alone.answer_alone(raw)
    events = general.receive(raw)
    assert type(answer) is tuple
    status, headers, body = answer
    assert type(body) is bytes
    assert [(status, headers), body] == [(events[0].status, events[0].headers), events[1]]
    assert len(events) == 3 and events[2] is END
    assert _state(alone) == _state(general)


@pytest.mark.parametrize(("method", "raw"), _UNUSUAL)
def test_any_other_whole_head_is_parsed_once_and_handed_on_as_receives_events(
    method, raw, monkeypatch
):
    alone, general = _parsers(method)
    events = general.receive(raw)
    parses = []
    parse = h1wire.response_fields

    def counted(head: bytes, max_fields: int) -> h1wire.ResponseFields:
        parses.append(head)
        return parse(head, max_fields)

    monkeypatch.setattr(h1wire, "response_fields", counted)
    answer = alone.answer_alone(raw)
    assert type(answer) is list
    assert _shape(answer) == _shape(events)
    assert _state(alone) == _state(general)
    assert len(parses) == len([e for e in events if type(e) is Response])  # each head once


@pytest.mark.parametrize("raw", _PARTIAL)
def test_a_read_without_a_whole_head_is_left_to_receive(raw):
    parser = ResponseParser()
    before = _state(parser)
    assert parser.answer_alone(raw) is None
    assert _state(parser) == before


def test_nothing_is_taken_while_the_parser_holds_or_waits_for_anything():
    parser = ResponseParser()
    assert parser.receive(b"HTTP/1.1 200 OK\r\n") == []
    assert parser.answer_alone(b"Content-Length: 5\r\n\r\nhello") is None  # (buffered)
    parser = ResponseParser()
    parser.receive(_OK)
    assert parser.paused and parser.answer_alone(_OK) is None  # (paused: not the next one yet)
    parser = ResponseParser()
    parser.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert parser._in_body and parser.answer_alone(b"HTTP/1.1 200 OK\r\n\r\n") is None
    parser = ResponseParser(max_head_bytes=16)
    assert parser.answer_alone(_OK) is None  # no head within the limit: `receive` refuses it


@pytest.mark.parametrize("raw", _BAD)
def test_a_bad_head_is_refused_as_receive_refuses_it(raw):
    with pytest.raises(ProtocolError) as general:
        ResponseParser().receive(raw)
    with pytest.raises(ProtocolError) as alone:
        ResponseParser().answer_alone(raw)
    assert (str(alone.value), alone.value.status) == (str(general.value), general.value.status)


def _client() -> tuple[H1Client, FakeTransport, list[H1Client]]:
    idle: list[H1Client] = []
    client = H1Client(on_idle=idle.append)
    transport = FakeTransport()
    client.connection_made(transport)
    return client, transport, idle


async def test_the_client_hands_the_usual_answer_to_its_stream_and_goes_idle():
    client, transport, idle = _client()
    stream = client.open(RequestHead(b"GET", b"http", b"app", b"/", []), True)
    client.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
    head = stream.response_head.result()
    assert (head.status, head.headers) == (201, [(b"content-length", b"5"), (b"x-a", b"1")])
    assert stream.body.ended and await stream.body.read() == b"hello"
    assert await stream.body.read() is None
    assert client.stream is None and client.reusable and idle == [client]
    assert not transport.closing


async def test_the_client_closes_after_the_usual_answer_that_says_close():
    client, transport, idle = _client()
    stream = client.open(RequestHead(b"GET", b"http", b"app", b"/", []), True)
    client.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
    assert stream.response_head.result().status == 200 and await stream.body.read() == b"x"
    assert transport.closing and idle == [] and not client.reusable


async def test_an_upgrade_answered_with_a_whole_body_is_declined():
    client, _, idle = _client()
    head = RequestHead(b"CONNECT", b"http", b"app", b"/ws", [], protocol=b"websocket")
    stream = client.open(head, True)
    client.data_received(_OK)
    assert stream.tunnel is not None and stream.tunnel.result() is False
    assert stream.response_head.result().status == 200 and await stream.body.read() == b"hello"
    assert not client.tunnelling and idle == [client]


async def test_a_bad_answer_aborts_the_stream():
    client, transport, _ = _client()
    stream = client.open(RequestHead(b"GET", b"http", b"app", b"/", []), True)
    client.data_received(_BAD[0])
    assert stream.response_head.done() and stream.response_head.exception() is not None
    assert transport.closing
