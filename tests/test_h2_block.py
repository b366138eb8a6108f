"""`_header_block` reads a received header block once for what h2 and the sidecar read of it:
compared here with h2's own readings of the same random blocks (`is_informational_response`,
`H2Stream._initialize_content_length`, with its errors and words) and with the split the
request and response paths made of it (pseudo-header fields, the last of a name counting, and
the regular fields in order). Then the content-length a stream expects after a whole response
block taken by the fast path, HEAD requests included, is compared with h2's.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import h2.stream
import h2.utilities
import hpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.http.exchange import RequestHead
from sidecar.http.h2 import _REQUEST_PSEUDO, H2Protocol, _header_block
from tests.attack import END_HEADERS, HEADERS, FakeTransport, frame

NAMES = st.one_of(
    st.sampled_from(
        [
            b":status",
            b":method",
            b":path",
            b":authority",
            b":scheme",
            b":protocol",
            b":other",
            b":",
            b"content-length",
            b"content-type",
            b"x-a",
            b"0digit",
            b"",
        ]
    ),
    st.binary(max_size=4),
)
VALUES = st.one_of(
    st.sampled_from(
        [b"0", b"10", b"11", b"010", b"100", b"103", b"1", b"200", b"", b"-1", b" 1", b"ten"]
    ),
    st.binary(max_size=3),
    st.just(b"9" * 5000),  # digits, more than `int` reads
)
FIELDS = st.lists(st.tuples(NAMES, VALUES), max_size=8)


def h2s_reading(fields: list[tuple[bytes, bytes]]) -> tuple[bool, object]:
    """What h2 reads of a block: informational or not, and the content-length its stream
    expects or the error (class and words) it raises for it."""
    informational = h2.utilities.is_informational_response(fields)
    stream = h2.stream.H2Stream(1, h2.config.H2Configuration(), 65535, 65535)
    try:
        stream._initialize_content_length(fields)
    except h2.exceptions.ProtocolError as exc:
        return informational, f"{type(exc).__name__}: {exc}"
    return informational, stream._expected_content_length


PSEUDO_NAMES = st.sampled_from([b":status", b":method", b":path", b":authority", b":other", b":"])
REGULAR_NAMES = st.one_of(
    st.sampled_from([b"content-length", b"content-type", b"x-a", b"0digit", b""]),
    st.binary(max_size=4).filter(lambda name: not name.startswith(b":")),
)


def _usual(pseudo: list, regular: list, kinds: list) -> list:
    """Pseudo-header fields then regular ones, the first made with HPACK's tuple classes."""
    fields = pseudo + regular
    for i, kind in enumerate(kinds[: len(fields)]):
        fields[i] = kind(*fields[i])
    return fields


# Blocks as endpoints send them (the pseudo-header fields first), some with HPACK's tuple
# classes and a content-length or two: the usual case, drawn more often than FIELDS draws it.
USUAL_FIELDS = st.builds(
    _usual,
    st.lists(st.tuples(PSEUDO_NAMES, VALUES), max_size=5),
    st.lists(st.tuples(REGULAR_NAMES, VALUES), max_size=8),
    st.lists(st.sampled_from([hpack.HeaderTuple, hpack.NeverIndexedHeaderTuple])),
)


def split(fields: list[tuple[bytes, bytes]]) -> tuple[dict[bytes, bytes], list]:
    """The pseudo-header fields (the last of a name counts) and the regular ones, in order."""
    pseudo = {name: value for name, value in fields if name.startswith(b":")}
    return pseudo, [(name, value) for name, value in fields if not name.startswith(b":")]


@settings(max_examples=1500, deadline=None)
@given(st.one_of(FIELDS, USUAL_FIELDS))
@example([(b":status", b"100"), (b":status", b"200")])  # the first :status decides
@example([(b"x-a", b""), (b":status", b"100")])  # not before a regular field
@example([(b":method", b"GET"), (b":status", b"103"), (b"content-length", b"1")])
@example([(b"content-length", b"10"), (b"content-length", b"11"), (b"content-length", b"x")])
@example([(b"content-length", b"x"), (b"content-length", b"9" * 5000)])
@example([(b"content-length", b"010"), (b"content-length", b"10")])  # the same number
@example([(b":status", b"103"), (b":status", b"200"), (b"content-length", b"x")])
@example([(b":path", b"/"), (b"x-a", b"1"), (b"content-length", b"9" * 5000)])
@example([hpack.HeaderTuple(b":status", b"200"), hpack.NeverIndexedHeaderTuple(b"x-a", b"")])
def test_one_pass_reads_a_block_as_h2_and_the_split_read_it(
    fields: list[tuple[bytes, bytes]],
) -> None:
    pseudo, regular, informational, length, problem = _header_block(fields)
    theirs_informational, theirs_length = h2s_reading(fields)
    assert informational is theirs_informational
    if problem is not None:
        assert isinstance(problem, h2.exceptions.ProtocolError)
        assert f"{type(problem).__name__}: {problem}" == theirs_length
    else:
        assert length == theirs_length
    assert (pseudo, regular) == split(fields)
    assert all(type(field) is tuple for field in regular)
    # A request's block: the pseudo-header fields it lacks keep the defaults, left unchanged.
    defaults = dict(_REQUEST_PSEUDO)
    assert _header_block(fields, _REQUEST_PSEUDO)[0] == {**defaults, **split(fields)[0]}
    assert defaults == _REQUEST_PSEUDO


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize(
    "fields",
    [
        [],
        [(b"content-length", b"5")],
        [(b"content-length", b"5"), (b"content-length", b"5")],
        [(b"content-length", b"5"), (b"content-length", b"6")],
        [(b"content-length", b"five")],
    ],
)
async def test_a_response_blocks_content_length_is_h2s(
    method: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    """The content-length a client stream expects once the response's block was taken by the
    fast path (`_take_headers`), or the error the connection ends with, is h2's for the same
    block: a HEAD's answer expects no body, whatever its block says (and is not checked)."""
    head = RequestHead(method=method, scheme=b"http", authority=b"b", path=b"/")
    proto = H2Protocol(client_side=True)
    proto.connection_made(FakeTransport())
    oracle = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    oracle.initiate_connection()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    preface = server.data_to_send()
    block = hpack.Encoder().encode([(b":status", b"200"), *fields])
    answer = frame(HEADERS, END_HEADERS, 1, block)
    oracle.receive_data(preface)
    oracle.send_headers(
        1, [(b":method", method), (b":scheme", b"http"), (b":authority", b"b"), (b":path", b"/")]
    )
    try:
        oracle.receive_data(answer)
        expected: object = oracle.streams[1]._expected_content_length
    except h2.exceptions.ProtocolError as exc:
        expected = f"{type(exc).__name__}: {exc}"
    errors: list[str] = []
    lost = proto._protocol_error

    def noted(exc: h2.exceptions.ProtocolError, terminate: bool = False) -> None:
        errors.append(f"{type(exc).__name__}: {exc}")
        lost(exc, terminate)

    proto._protocol_error = noted  # type: ignore[method-assign]
    try:
        proto.data_received(preface)
        proto.open_stream(head, end_stream=True)
        proto.data_received(answer)
        if errors:
            assert errors == [expected]
        else:
            assert proto.conn.streams[1]._expected_content_length == expected
    finally:
        proto.connection_lost(None)
