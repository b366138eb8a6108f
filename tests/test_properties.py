"""Property tests: every parser a peer or a file can reach raises only its documented error, on
any input (the Dataplane, policy, Kafka and XFCC parsers have theirs beside their other tests:
test_config_fuzz, test_policy, test_kafka, test_identity_spiffe).

Here: protocol sniffing, the TLS ClientHello reader, the XFCC parser on any text, the limits
file, a mesh-directory file of any bytes, and the two HTTP server codecs as a whole — any bytes
into an HTTP/1.1 server, any frames into an HTTP/2 server, and nothing escapes `data_received`:
a bad peer ends its own connection, never the sidecar. (Which status a malformed HTTP/1.1 head
gets is judged at the socket, in test_abuse, so that it holds whatever parser is behind it.)
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config.mesh import _read
from sidecar.http.exchange import RequestHead
from sidecar.http.h1 import H1Server
from sidecar.http.h2 import PREFACE, H2Protocol
from sidecar.http.rules import request_problem
from sidecar.identity.spiffe import parse_xfcc
from sidecar.limits import Limits, LimitsError, load_limits
from sidecar.transport.detect import (
    MAX_PEEK,
    Detected,
    client_hello_sni,
    detect,
    requested_name,
)
from tests.attack import FakeTransport, frame

# -- sniffing ------------------------------------------------------------------------------------

first_bytes = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [b"GET / HTTP/1.1\r\n", PREFACE, b"\x16\x03\x01\x00\x10\x01", b"PRI * HT"]
    ).flatmap(lambda prefix: st.binary(max_size=100).map(lambda tail: prefix + tail)),
)


@given(first_bytes, st.binary(max_size=100))
def test_detect_answers_and_keeps_its_answer(data, more):
    """Any bytes: a verdict or None ("need more"), never an exception; and a verdict does not
    change when more bytes come (the replayed stream is judged once)."""
    verdict = detect(data)
    assert verdict is None or isinstance(verdict, Detected)
    if verdict is not None:
        assert detect(data + more) is verdict
    if verdict is None:
        assert len(data) < MAX_PEEK


@given(st.binary(max_size=600))
def test_client_hello_reader_never_raises(data):
    sni = client_hello_sni(data)
    assert sni is None or isinstance(sni, str)
    sni = client_hello_sni(b"\x16\x03\x01" + data)
    assert sni is None or isinstance(sni, str)


def _h2_frame(kind: int, flags: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + b"\0\0\0\1" + payload


h2_frames = st.lists(
    st.builds(
        _h2_frame,
        st.sampled_from([0x1, 0x4, 0x8, 0x9, 0x0]),  # HEADERS, SETTINGS, WINDOW_UPDATE, CONT., DATA
        st.integers(0, 255),
        st.binary(max_size=60),
    ),
    max_size=4,
).map(b"".join)


@given(st.one_of(first_bytes, h2_frames.map(lambda frames: PREFACE + frames)))
def test_the_name_asked_for_is_read_from_any_bytes_without_raising(data):
    """MeshPassthrough's Domain entries judge these names on an app's first bytes: whatever
    they are (a cut ClientHello, a HEADERS frame of any flags and HPACK block), an answer."""
    told, name = requested_name(data)
    assert isinstance(told, bool) and (name is None or isinstance(name, str))


# -- XFCC on any text ------------------------------------------------------------------------------


@given(st.text(max_size=80))
def test_parse_xfcc_raises_only_value_error_on_any_text(text):
    try:
        elements = parse_xfcc(text)
    except ValueError:
        return
    assert all(isinstance(e, dict) for e in elements)


# -- a request head before it is forwarded ---------------------------------------------------------

head_bytes = st.one_of(
    st.binary(max_size=20),
    st.sampled_from([b"/", b"*", b"GET", b"OPTIONS", b"CONNECT", b"backend:80", b"/a b", b"a@b"]),
)


@given(head_bytes, head_bytes, head_bytes, st.one_of(st.none(), st.just(b"websocket")))
def test_a_forwarded_head_makes_one_request_line_and_one_host(method, path, authority, protocol):
    """`request_problem` never raises, and what it lets through writes as an HTTP/1.1 request
    line of exactly three parts and a Host value of one token: nothing to smuggle."""
    head = RequestHead(method, b"http", authority, path, protocol=protocol)
    problem = request_problem(head)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        # A CONNECT (no :protocol) is written in authority form: its target is the authority.
        target = authority if method == b"CONNECT" and protocol is None else path
        line = b" ".join([method, target or b"/", b"HTTP/1.1"])
        assert len(line.split(b" ")) == 3
        assert target and not any(byte < 0x21 or byte == 0x7F for byte in method + target)
        assert not any(byte < 0x21 or byte == 0x7F for byte in authority)


# -- the limits file ---------------------------------------------------------------------------

limit_values = st.one_of(
    st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(),
    st.none(), st.lists(st.integers(), max_size=2),
)  # fmt: skip


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)  # a file per example
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(sorted(Limits.__dataclass_fields__)), st.text(max_size=10)),
        limit_values,
        max_size=4,
    )
)
def test_limits_file_raises_only_limits_error(values):
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "limits.yaml"
        path.write_text(yaml.safe_dump(values))
        try:
            limits = load_limits(path)
        except LimitsError:
            return
    assert isinstance(limits, Limits)


@settings(deadline=None)  # a file per example: a loaded disk is slow
@given(st.binary(max_size=400))
def test_a_mesh_file_of_any_bytes_is_read_or_reported(data):
    """A corrupted file in the mesh directory: its documents, or the message that skips it."""
    fd, name = tempfile.mkstemp(suffix=".yaml")
    try:
        os.write(fd, data)
        os.close(fd)
        result = _read(name)
    finally:
        os.unlink(name)
    assert isinstance(result, list | str)


# -- the server codecs as a whole ---------------------------------------------------------------


LOOP = asyncio.new_event_loop()
ERRORS: list[dict[str, Any]] = []
LOOP.set_exception_handler(lambda loop, context: ERRORS.append(context))


async def _answer(exchange: Any) -> None:
    """A handler that reads nothing and answers nothing: the codec's bookkeeping alone."""


def _drive(feed: Any) -> None:
    """Run `feed` on the loop, let the tasks it started run, and fail on any exception that
    escaped — from `feed` itself, from a task, or through the loop's exception handler."""

    async def run() -> None:
        feed()
        for _ in range(3):
            await asyncio.sleep(0)  # let handler tasks start and end
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        escaped = [r for r in results if isinstance(r, Exception)]
        assert not escaped, escaped

    ERRORS.clear()
    LOOP.run_until_complete(run())
    assert not ERRORS, ERRORS


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_any_bytes_into_an_http1_server_never_escape(chunks):
    def feed() -> None:
        server = H1Server(_answer, default_authority=b"backend")
        transport = FakeTransport()
        server.connection_made(transport)
        for chunk in chunks:
            if transport.closing:
                break
            server.data_received(b"GET / HTTP/1.1\r\n" + chunk if chunk[:1] == b"G" else chunk)
        server.eof_received()
        server.connection_lost(None)

    _drive(feed)


frames = st.lists(
    st.tuples(
        st.integers(0, 12),  # frame type, some unknown
        st.integers(0, 255),  # flags
        st.integers(0, 9),  # stream id
        st.binary(max_size=48),  # payload
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(frames, st.booleans())
def test_any_frames_into_an_http2_server_never_escape(spec, valid_request_first):
    def feed() -> None:
        server = H2Protocol(client_side=False, handler=_answer, max_concurrent_streams=4)
        transport = FakeTransport()
        server.connection_made(transport)
        data = PREFACE + frame(4, 0, 0)
        if valid_request_first:
            import hpack

            block = hpack.Encoder().encode(
                [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]
            )
            data += frame(1, 0x5, 1, block)
        data += b"".join(frame(kind, flags, sid, payload) for kind, flags, sid, payload in spec)
        for i in range(0, len(data), 37):  # and in pieces, as a socket delivers them
            if server.closed:
                break
            server.data_received(data[i : i + 37])
        server.connection_lost(None)
        assert server.closed

    _drive(feed)
