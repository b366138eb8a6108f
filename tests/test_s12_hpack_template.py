"""`LiteralDecoder` answers a block that differs from one decoded before only in the value of its
one never-indexed field (a peer sidecar's request and its unique `x-request-id`) from that
block's template (sidecar.http.hpack_literal): the same headers, list size, errors and table as
hpack's own `Decoder`, whatever the value, and never after the table changed."""

from __future__ import annotations

import hpack
import pytest
from hpack import NeverIndexedHeaderTuple, OversizedHeaderListError
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http.hpack_literal import LiteralDecoder
from tests.test_hpack_fast import FUZZ, decode_both, pair


def _literal(first: int, name: bytes, value: bytes) -> bytes:
    return bytes([first, len(name)]) + name + bytes([len(value)]) + value


def _request_id(value: bytes) -> bytes:
    """A never-indexed `x-request-id` with a literal name, as a peer sidecar sends it."""
    return _literal(0x10, b"x-request-id", value)


def _checked(reference: hpack.Decoder, decoder: LiteralDecoder, block: bytes) -> list:
    """`decode_both`, and the list size the decoder noted is the list's."""
    headers = decode_both(reference, decoder, block)
    if isinstance(headers, list):
        assert decoder.list_size == sum(len(n) + len(v) + 32 for n, v in headers)
    return headers


def test_blocks_alike_but_for_the_never_indexed_value_decode_as_hpacks():
    reference, decoder = pair()
    _checked(reference, decoder, _literal(0x40, b"x-app", b"1"))  # a dynamic entry: 62
    head, tail = b"\x83\x86" + _literal(0x04, b"", b"")[:1] + b"\x05/echo\xbe", b"\xbe\x82"
    first = _checked(reference, decoder, head + _request_id(b"a" * 36) + tail)
    assert decoder._templates  # kept as a template
    for value in (b"b" * 36, b"c" * 36, b"", b"d" * 126, b"e" * 36):
        headers = _checked(reference, decoder, head + _request_id(value) + tail)
        assert headers[-3] == (b"x-request-id", value)
        assert type(headers[-3]) is NeverIndexedHeaderTuple
        assert headers[:-3] == first[:-3] and headers[-2:] == first[-2:]
    # The value alone is new each time: the fields before and after are the kept ones.
    again = decoder.decode(head + _request_id(b"f" * 36) + tail, raw=True)
    assert again[2] is decoder.decode(head + _request_id(b"g" * 36) + tail, raw=True)[2]


def test_a_template_is_not_used_after_the_table_changed():
    """The same octets name the new entry after an insertion (and after a size update)."""
    reference, decoder = pair()
    _checked(reference, decoder, _literal(0x40, b"x-app", b"1"))
    block = b"\xbe" + _request_id(b"1" * 36) + b"\xbe"
    assert _checked(reference, decoder, block)[0] == (b"x-app", b"1")
    _checked(reference, decoder, _literal(0x40, b"x-app", b"2"))
    assert _checked(reference, decoder, b"\xbe" + _request_id(b"2" * 36) + b"\xbe")[0] == (
        b"x-app",
        b"2",
    )
    _checked(reference, decoder, b"\x20")  # the table emptied: index 62 is no entry now
    assert isinstance(_checked(reference, decoder, block), hpack.InvalidTableIndex)


def test_a_block_that_only_looks_alike_is_decoded_for_what_it_is():
    """A truncated value, a Huffman-coded or longer one, a second never-indexed field, fields
    after the value that differ: hpack's outcome, not the template's."""
    reference, decoder = pair()
    _checked(reference, decoder, _literal(0x40, b"x-app", b"1"))
    head = b"\x82\xbe"
    _checked(reference, decoder, head + _request_id(b"a" * 10) + b"\x84")
    for block in (
        head + _request_id(b"b" * 10)[:-3],  # truncated
        head + _request_id(b"b" * 10)[:-1] + b"\x84",  # truncated, the next octet as value
        head + b"\x10\x0cx-request-id\x8a" + b"\xff" * 10 + b"\x84",  # Huffman (invalid)
        head + b"\x10\x0cx-request-id\x83" + bytes.fromhex("a8eb10") + b"\x84",  # Huffman
        head + _request_id(b"c" * 11) + b"\x84",
        head + _request_id(b"c" * 10) + b"\x85",
        head + _request_id(b"c" * 10) + b"\x84" + _request_id(b"d"),
        head + _request_id(b"c" * 10) + b"\x84\x00",  # truncated after the value
        head + _request_id(b"c" * 10) + b"\x84" + _literal(0x40, b"x-app", b"3"),
        head + _request_id(b"c" * 10) + b"\x84",
        head + _request_id(b"c" * 10) + b"\xbf",  # no entry 63
    ):
        _checked(reference, decoder, block)


def test_a_template_answers_an_oversized_list_with_hpacks_error():
    reference, decoder = pair()
    block = b"\x82" + _request_id(b"a" * 20) + b"\x84"
    _checked(reference, decoder, block)
    size = decoder.list_size
    reference.max_header_list_size = decoder.max_header_list_size = size + 4
    _checked(reference, decoder, b"\x82" + _request_id(b"b" * 24) + b"\x84")
    error = _checked(reference, decoder, b"\x82" + _request_id(b"c" * 25) + b"\x84")
    assert isinstance(error, OversizedHeaderListError)


def test_a_table_larger_than_allowed_fails_as_hpack_fails():
    reference, decoder = pair()
    block = b"\x82" + _request_id(b"a" * 20)
    _checked(reference, decoder, block)
    reference.max_allowed_table_size = decoder.max_allowed_table_size = 100  # SETTINGS lowered
    with pytest.raises(hpack.InvalidTableSizeError):
        reference.decode(b"\x82" + _request_id(b"b" * 20), raw=True)
    with pytest.raises(hpack.InvalidTableSizeError):
        decoder.decode(b"\x82" + _request_id(b"b" * 20), raw=True)


blocks = st.lists(
    st.tuples(
        st.sampled_from([b"\x82\xbe", b"\x82\xbf", b"\x86\x04\x02/a", b"\x0f\x00\x01z", b""]),
        st.one_of(st.binary(max_size=40), st.binary(min_size=120, max_size=130)),
        st.sampled_from([b"", b"\xbe", b"\x84", b"\x40\x01a\x01b", b"\x10\x01n\x01v", b"\x21"]),
        st.booleans(),  # cut short
    ),
    min_size=1,
    max_size=12,
)


@settings(FUZZ, max_examples=150)
@given(blocks)
def test_blocks_of_a_few_shapes_and_any_values_decode_as_hpacks(steps):
    reference, decoder = pair()
    _checked(reference, decoder, _literal(0x40, b"x-app", b"1") + _literal(0x40, b"y", b"2"))
    for head, value, tail, short in steps:
        block = head + b"\x10\x0cx-request-id" + bytes([len(value)]) + value + tail
        _checked(reference, decoder, block[: len(block) // 2] if short else block)


def test_a_block_cut_short_in_the_value_of_a_template_without_fields_after_it():
    reference, decoder = pair()
    _checked(reference, decoder, b"\x82" + _request_id(b"a" * 10))
    _checked(reference, decoder, b"\x82" + _request_id(b"b" * 10))
    for cut in (1, 5, 10):
        error = _checked(reference, decoder, b"\x82" + _request_id(b"c" * 10)[:-cut])
        assert isinstance(error, hpack.HPACKDecodingError)


@pytest.mark.parametrize("huffman", [False, True])
def test_hpacks_own_never_indexed_blocks_decode_alike(huffman):
    """hpack's encoder (a peer other than a sidecar): Huffman-coded values are no template's,
    raw ones are; values of every length."""
    encoder = hpack.Encoder()
    reference, decoder = pair()
    for n in [*range(0, 140, 7), 40, 40, 126, 127, 127, 128, 128, 40]:
        for value in (b"0123456789abcdef" * 9)[:n], (b"fedcba9876543210" * 9)[:n]:
            fields = [(b":method", b"GET"), NeverIndexedHeaderTuple(b"x-request-id", value)]
            block = encoder.encode([*fields, (b"x-app", b"1")], huffman=huffman)
            _checked(reference, decoder, block)


def test_a_huffman_coded_value_makes_no_template():
    """Its length octet has the Huffman bit: a block 128 octets longer could otherwise look
    alike (its first octets, then the template's last ones) and be answered from it."""
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    coded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(b"abcd")
    head = b"\x82\x10\x0cx-request-id" + bytes([0x80 | len(coded)]) + coded
    reference, decoder = pair()
    _checked(reference, decoder, head + b"\x84")
    headers = _checked(reference, decoder, head + b"\x82" * 128 + b"\x84")
    assert len(headers) == 131 and headers[1] == (b"x-request-id", b"abcd")
