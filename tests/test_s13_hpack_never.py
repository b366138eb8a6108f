"""Session 13: a block's never-indexed field with a short value, not empty, is spelled in
`LiteralEncoder.encode` itself (a request's unique `x-request-id`, the usual one unknown field)
rather than by `_spell`: checked against the reference encoder of tests/test_hpack_encoder.py,
octet for octet, with the cases `_spell` tells apart (an empty value that is a static pair, a
never-indexed name with static values, a value of 127 octets or more, a str value, fields
before and after it that change the table)."""

from __future__ import annotations

from hpack import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http.hpack_literal import LiteralEncoder
from tests.test_hpack_encoder import FUZZ, Reference

NEVER = frozenset({b"authorization", b"x-request-id", b":method", b"x-secret"})

field = st.one_of(
    st.tuples(
        st.sampled_from([b"x-request-id", b"authorization", b":method", b"x-secret"]),
        st.one_of(
            st.sampled_from([b"", b"GET", b"POST", b"abc"]),
            st.binary(min_size=120, max_size=135),  # around the one-octet length's end
        ),
    ),
    st.tuples(
        st.sampled_from([b"x-app", b"content-type", b":path"]), st.sampled_from([b"1", b"2"])
    ),
    st.builds(NeverIndexedHeaderTuple, st.sampled_from([b"x-request-id", b"x-app"]), st.just(b"v")),
)


@settings(FUZZ, max_examples=300)
@given(st.lists(st.lists(field, max_size=6), max_size=5))
def test_never_indexed_fields_are_the_references(blocks) -> None:
    encoder, reference = LiteralEncoder(NEVER), Reference(NEVER)
    for headers in blocks:
        assert encoder.encode(headers) == reference.block(headers)


def test_a_request_id_after_known_fields_is_a_never_indexed_literal() -> None:
    encoder = LiteralEncoder()
    known = [(b":method", b"GET"), (b"x-app", b"1")]
    encoder.encode(known)
    for request_id in (b"one", b"two-" * 20):
        block = encoder.encode([*known, (b"x-request-id", request_id), (b"x-app", b"1")])
        literal = b"\x10\x0cx-request-id" + bytes([len(request_id)]) + request_id
        assert literal in block


def test_a_str_value_is_encoded_as_before() -> None:
    encoder = LiteralEncoder()
    block = encoder.encode([(b"x-request-id", "abc")])
    assert block == b"\x10\x0cx-request-id\x03abc"
