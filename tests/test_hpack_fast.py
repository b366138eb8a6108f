"""`LiteralDecoder` decodes all of HPACK itself (sidecar.http.hpack_literal): against hpack's own
`Decoder` as the reference, over sequences of blocks from hpack's `Encoder` (dynamic table,
Huffman, table size changes, never-indexed fields) and over malformed blocks, it returns the
same headers, raises the same exception classes and leaves the dynamic table as hpack leaves it.
"""

from __future__ import annotations

import hpack
import pytest
from hpack import (
    HeaderTuple,
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    NeverIndexedHeaderTuple,
    OversizedHeaderListError,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.http import hpack_literal
from sidecar.http.hpack_literal import LiteralDecoder, LiteralEncoder

# Deterministic (the same examples every run), and no per-example deadline.
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SIZES = [0, 1, 40, 64, 100, 256, 1024, 4096, 8192]
MAX_ALLOWED = 8192

names = st.one_of(
    st.sampled_from(
        [
            b":method",
            b":path",
            b":authority",
            b":status",
            b"content-type",
            b"user-agent",
            b"te",
            b"grpc-timeout",
            b"grpc-accept-encoding",
            b"x-request-id",
            b"authorization",
            b"accept-encoding",
        ]
    ),
    st.binary(min_size=1, max_size=20),
    st.binary(min_size=120, max_size=140),  # a length past the 7-bit prefix
)
values = st.one_of(
    st.sampled_from([b"GET", b"POST", b"/", b"", b"200", b"trailers", b"application/grpc"]),
    st.binary(max_size=40),
    st.binary(min_size=126, max_size=300),
)


@st.composite
def headers(draw):
    name, value = draw(names), draw(values)
    kind = draw(st.sampled_from(["plain", "tuple", "never", "sensitive"]))
    if kind == "tuple":
        return HeaderTuple(name, value)
    if kind == "never":
        return NeverIndexedHeaderTuple(name, value)
    if kind == "sensitive":
        return (name, value, True)
    return (name, value)


@st.composite
def sessions(draw, max_blocks=6):
    """An encoder's settings and its blocks: each a header list drawn mostly from a pool (so
    later blocks hit the dynamic table), after zero or more table size changes."""
    pool = draw(st.lists(headers(), min_size=1, max_size=10))
    initial = draw(st.sampled_from(SIZES))
    steps = []
    for _ in range(draw(st.integers(1, max_blocks))):
        changes = draw(st.lists(st.sampled_from(SIZES), max_size=2))
        block = draw(st.lists(st.one_of(st.sampled_from(pool), headers()), max_size=12))
        steps.append((changes, block))
    return initial, draw(st.booleans()), steps


def encode_session(initial, huffman, steps) -> list[bytes]:
    encoder = hpack.Encoder()
    encoder.header_table_size = initial
    blocks = []
    for changes, block in steps:
        for size in changes:
            if size != encoder.header_table_size:  # (setting it unchanged drops queued updates)
                encoder.header_table_size = size
        blocks.append(encoder.encode(block, huffman=huffman))
    return blocks


def pair(max_allowed: int = MAX_ALLOWED) -> tuple[hpack.Decoder, LiteralDecoder]:
    reference, decoder = hpack.Decoder(), LiteralDecoder()
    reference.max_allowed_table_size = decoder.max_allowed_table_size = max_allowed
    return reference, decoder


def table_state(decoder: hpack.Decoder) -> tuple:
    table = decoder.header_table
    return list(table.dynamic_entries), table._current_size, table.maxsize, table.resized


def shape(headers: list) -> list:
    return [(bytes(h[0]), bytes(h[1]), isinstance(h, NeverIndexedHeaderTuple)) for h in headers]


def decode_both(reference: hpack.Decoder, decoder: LiteralDecoder, block: bytes):
    """Decode `block` with both; assert the same outcome and table; hpack's result or error."""
    try:
        expected = reference.decode(block, raw=True)
    except HPACKDecodingError as exc:
        with pytest.raises(HPACKDecodingError) as info:
            decoder.decode(block, raw=True)
        assert type(info.value) is type(exc), (block, info.value, exc)
        assert table_state(decoder) == table_state(reference)
        return exc
    decoded = decoder.decode(block, raw=True)
    assert shape(decoded) == shape(expected)
    assert table_state(decoder) == table_state(reference)
    return expected


@settings(FUZZ, max_examples=120)  # each a whole encoder session: ~20 ms an example
@given(sessions())
def test_a_sequence_of_hpack_encoder_blocks_decodes_as_hpack_decodes_it(session):
    blocks = encode_session(*session)
    reference, decoder = pair()
    for block in blocks:
        result = decode_both(reference, decoder, block)
        assert not isinstance(result, Exception), result


@settings(FUZZ, max_examples=100)
@given(sessions(max_blocks=4))
def test_the_decoded_headers_are_the_encoded_ones(session):
    initial, huffman, steps = session
    blocks = encode_session(initial, huffman, steps)
    decoder = pair()[1]
    for (_, sent), block in zip(steps, blocks, strict=True):
        decoded = decoder.decode(block, raw=True)
        assert [(h[0], h[1]) for h in decoded] == [(h[0], h[1]) for h in sent]
        for header, original in zip(decoded, sent, strict=True):
            sensitive = (isinstance(original, HeaderTuple) and not original.indexable) or (
                len(original) > 2 and original[2]
            )
            # (a sensitive one may still arrive indexed: hpack's encoder sends a table match so)
            assert sensitive or not isinstance(header, NeverIndexedHeaderTuple)


def _mutate(block: bytes, how: str, data) -> bytes:
    if not block or how == "random":
        return data.draw(st.binary(max_size=40))
    if how == "truncate":
        return block[: data.draw(st.integers(0, len(block) - 1))]
    if how == "flip":
        out = bytearray(block)
        for _ in range(data.draw(st.integers(1, 3))):
            position = data.draw(st.integers(0, len(out) - 1))
            out[position] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(out)
    if how == "splice":
        position = data.draw(st.integers(0, len(block)))
        return block[:position] + data.draw(st.binary(min_size=1, max_size=6)) + block[position:]
    raise AssertionError(how)


@settings(FUZZ, max_examples=150)  # a session, then its last block mutated: ~15 ms an example
@given(
    sessions(max_blocks=3),
    st.sampled_from(["random", "truncate", "flip", "splice"]),
    st.sampled_from([100, 300, 65536]),
    st.sampled_from([0, 256, 4096, MAX_ALLOWED, MAX_ALLOWED, MAX_ALLOWED]),
    st.data(),
)
def test_a_malformed_block_fails_as_hpack_fails_it(session, how, list_size, max_allowed, data):
    """From equal state (the same valid blocks before it), a mutated block: both raise the same
    exception class, or both return the same headers, with the same table either way."""
    blocks = encode_session(*session)
    reference, decoder = pair()
    for block in blocks[:-1]:
        decode_both(reference, decoder, block)
    reference.max_header_list_size = decoder.max_header_list_size = list_size
    reference.max_allowed_table_size = decoder.max_allowed_table_size = max_allowed
    decode_both(reference, decoder, _mutate(blocks[-1], how, data))


@settings(FUZZ, max_examples=500)
@given(st.binary(max_size=60), st.sampled_from([100, 65536]))
def test_random_bytes_fail_as_hpack_fails_them(block, list_size):
    reference, decoder = hpack.Decoder(), LiteralDecoder()
    reference.max_header_list_size = decoder.max_header_list_size = list_size
    decode_both(reference, decoder, block)


def _literal(first: int, name: bytes, value: bytes) -> bytes:
    assert len(name) < 127 and len(value) < 127
    return bytes([first, len(name)]) + name + bytes([len(value)]) + value


def test_rfc7541_c6_responses_with_huffman_and_eviction():
    """RFC 7541 Appendix C.6: three responses, Huffman-coded, a 256-octet table evicting."""
    blocks = [
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff"
        "6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        "4883640effc1c0bf",
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b3"
        "35dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
    ]
    reference, decoder = pair()
    reference.header_table_size = decoder.header_table_size = 256
    results = [decode_both(reference, decoder, bytes.fromhex(block)) for block in blocks]
    assert results[2] == [
        (b":status", b"200"),
        (b"cache-control", b"private"),
        (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"),
        (b"location", b"https://www.example.com"),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
    ]
    assert decoder.header_table._current_size == 215
    assert [name for name, _ in decoder.header_table.dynamic_entries] == [
        b"set-cookie",
        b"content-encoding",
        b"date",
    ]


def test_the_shapes_of_decoded_fields():
    """Static entries are shared `HeaderTuple`s, dynamic ones and incrementally indexed literals
    `HeaderTuple`s, literals without indexing plain tuples, never indexed ones marked so."""
    decoder = LiteralDecoder()
    block = (
        b"\x82"  # :method GET, static
        + _literal(0x40, b"a", b"1")  # incremental indexing, literal name
        + b"\xbe"  # 62: the entry just added
        + _literal(0x00, b"b", b"2")  # without indexing
        + _literal(0x10, b"c", b"3")  # never indexed
        + b"\x7e\x01\x34"  # incremental indexing, name of dynamic entry 62 (a), value 4
    )
    decoded = decoder.decode(block, raw=True)
    assert decoded == [
        (b":method", b"GET"),
        (b"a", b"1"),
        (b"a", b"1"),
        (b"b", b"2"),
        (b"c", b"3"),
        (b"a", b"4"),
    ]
    assert decoded[0] is decoder.decode(b"\x82", raw=True)[0]
    assert [type(h) for h in decoded] == [
        HeaderTuple,
        HeaderTuple,
        HeaderTuple,
        tuple,
        NeverIndexedHeaderTuple,
        HeaderTuple,
    ]
    assert list(decoder.header_table.dynamic_entries) == [(b"a", b"4"), (b"a", b"1")]
    assert decoder.decode(b"\x82", raw=False) == [(":method", "GET")]  # hpack's, str


def test_a_table_size_update_only_before_the_first_field():
    for block in (b"\x3f\xe1\x1f\x20\x82", b"\x20\x3f\xe1\x1f\x82"):  # several updates first
        reference, decoder = pair()
        assert decode_both(reference, decoder, block) == [(b":method", b"GET")]
        assert decoder.header_table.maxsize == (0 if block[0] == 0x3F else 4096)
    reference, decoder = pair()
    assert isinstance(decode_both(reference, decoder, b"\x82\x3f\xe1\x1f"), HPACKDecodingError)
    reference, decoder = pair()
    block = _literal(0x40, b"a", b"1") + b"\x20"  # after a field that changed the table
    assert type(decode_both(reference, decoder, block)) is HPACKDecodingError
    assert list(decoder.header_table.dynamic_entries) == [(b"a", b"1")]  # as hpack left it


def test_a_table_size_beyond_the_allowed_maximum():
    reference, decoder = pair(max_allowed=100)
    assert type(decode_both(reference, decoder, b"\x3f\x46")) is InvalidTableSizeError  # 101
    assert decode_both(reference, decoder, b"\x3f\x45") == []  # 100
    # The maximum lowered (a SETTINGS acknowledged) and the encoder did not follow: hpack's
    # check at the end of the block.
    reference.max_allowed_table_size = decoder.max_allowed_table_size = 50
    assert type(decode_both(reference, decoder, b"\x82")) is InvalidTableSizeError


def test_index_zero_and_past_the_table():
    for block in (
        b"\x80",  # indexed field 0
        b"\xbe",  # 62: the dynamic table is empty
        b"\x7e\x01a",  # incremental indexing, name index 62
        b"\x0f\x2f\x01a",  # without indexing, name index 62
        b"\xff\xff\xff\xff\xff\x0f",  # a huge index (five continuation octets: allowed)
    ):
        reference, decoder = pair()
        assert type(decode_both(reference, decoder, block)) is InvalidTableIndex, block
    reference, decoder = pair()
    decode_both(reference, decoder, _literal(0x40, b"a", b"1"))
    assert decode_both(reference, decoder, b"\xbe") == [(b"a", b"1")]
    assert type(decode_both(reference, decoder, b"\xbf")) is InvalidTableIndex  # 63


def test_integer_overflow_and_truncation():
    for block in (
        b"\xff\xff\xff\xff\xff\xff\x01",  # six continuation octets: hpack's limit is five
        b"\xff\x80",  # truncated integer
        b"\x3f",  # truncated size update
        b"\x40",  # literal without its name
        b"\x40\x01a",  # literal without its value
        b"\x00\x05ab",  # name shorter than its length
        b"\x00\x01a\x7f\x80\x80\x80\x80\x01",  # a value length far past the block
        b"\x00\x81\xff\x00",  # an invalid Huffman string (EOS)
    ):
        reference, decoder = pair()
        assert type(decode_both(reference, decoder, block)) is HPACKDecodingError, block


def test_eviction_by_a_large_entry():
    reference, decoder = pair()
    reference.header_table_size = decoder.header_table_size = 100
    first = _literal(0x40, b"a", b"x" * 30)  # 63 octets
    second = _literal(0x40, b"b", b"y" * 20)  # 53: evicts the first
    decode_both(reference, decoder, first + second)
    assert list(decoder.header_table.dynamic_entries) == [(b"b", b"y" * 20)]
    assert decoder.header_table._current_size == 53
    decode_both(reference, decoder, _literal(0x40, b"c", b"z" * 80))  # 113 > 100: clears it
    assert len(decoder.header_table.dynamic_entries) == 0
    assert decoder.header_table._current_size == 0
    decode_both(reference, decoder, b"\x3f\x00" + first)  # resized to 31
    assert decoder.header_table.maxsize == 31 and len(decoder.header_table.dynamic_entries) == 0


def test_an_oversized_header_list():
    reference, decoder = pair()
    reference.max_header_list_size = decoder.max_header_list_size = 84
    assert decode_both(reference, decoder, b"\x82" * 2) == [(b":method", b"GET")] * 2  # 2 x 42
    assert type(decode_both(reference, decoder, b"\x82" * 3)) is OversizedHeaderListError
    for first in (0x00, 0x10, 0x40):  # 42 + 32 + 10: the limit exactly, then one octet over
        reference, decoder = pair()
        reference.max_header_list_size = decoder.max_header_list_size = 84
        assert len(decode_both(reference, decoder, b"\x82" + _literal(first, b"a", b"x" * 9))) == 2
        block = b"\x82" + _literal(first, b"a", b"x" * 10)
        assert type(decode_both(reference, decoder, block)) is OversizedHeaderListError
    reference, decoder = pair()
    decode_both(reference, decoder, _literal(0x40, b"a", b"1"))  # a dynamic entry of 34
    reference.max_header_list_size = decoder.max_header_list_size = 68
    assert decode_both(reference, decoder, b"\xbe\xbe") == [(b"a", b"1")] * 2  # exactly
    reference.max_header_list_size = decoder.max_header_list_size = 67
    assert type(decode_both(reference, decoder, b"\xbe\xbe")) is OversizedHeaderListError
    reference, decoder = pair()
    reference.max_header_list_size = decoder.max_header_list_size = 84
    block = b"\x82" + _literal(0x40, b"a", b"1") + b"\x82"  # 42 + 34: added, then refused
    assert type(decode_both(reference, decoder, block)) is OversizedHeaderListError
    assert list(decoder.header_table.dynamic_entries) == [(b"a", b"1")]


@settings(FUZZ, max_examples=100)
@given(st.lists(st.tuples(names, values), max_size=15))
def test_the_literal_encoders_blocks_still_decode(headers):
    block = LiteralEncoder().encode(headers)
    reference, decoder = pair()
    assert [(h[0], h[1]) for h in decode_both(reference, decoder, block)] == headers


def test_integers_of_one_continuation_octet_and_more_read_as_hpack_reads_them():
    """A static name index from 15 on (a 4-bit prefix) and a value of 127 octets or more (a
    7-bit prefix) take continuation octets: one is read inline, more by `_varint`; each
    boundary decodes as hpack decodes it, and a block cut after the full prefix fails as
    hpack's does."""
    for first in (0x00, 0x10, 0x40):  # without indexing, never indexed, incremental
        mask = 0x3F if first & 0x40 else 0x0F
        for index in (mask - 1, mask, mask + 1, 61):
            if index > mask:
                name = bytes([first | mask]) + _prefix_rest(index - mask)
            else:
                name = bytes([first | index])
            for size in (126, 127, 128, 200, 254, 255, 300, 20000):
                value = bytes([0x7F]) + _prefix_rest(size - 0x7F) if size >= 127 else bytes([size])
                block = name + value + b"v" * size
                reference, decoder = pair()
                decode_both(reference, decoder, block)
                reference, decoder = pair()
                assert isinstance(decode_both(reference, decoder, name), HPACKDecodingError)
                reference, decoder = pair()
                cut = name + value[:1]
                assert isinstance(decode_both(reference, decoder, cut), HPACKDecodingError)


def _prefix_rest(value: int) -> bytes:
    """RFC 7541 5.1's continuation octets for what is past a full prefix."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_the_header_list_size_is_counted_as_hpack_counts_it_to_the_octet():
    """The list size (RFC 7541 4.1: name, value and 32 octets a field) is counted from a raw
    string's length, a static name's precomputed size, or a decoded string's length: at a
    limit of exactly the list's size and one octet under it, blocks of every kind of field
    (static and dynamic names, raw and Huffman strings, never indexed) decode or fail as
    hpack's do."""
    fields = [
        (b":method", b"GET"),
        (b":path", b"/a/long/path"),
        (b"content-length", b"123"),
        (b"x-request-id", b"abc-123"),
        (b"authorization", b"secret"),
        (b"user-agent", b"u" * 200),
        (b"x-long-name-" + b"n" * 130, b"v"),
    ]
    blocks = [LiteralEncoder().encode(fields)]
    encoder = hpack.Encoder()
    blocks += [encoder.encode(fields), encoder.encode(fields)]  # then from the dynamic table
    size = sum(len(n) + len(v) + 32 for n, v in fields)  # every block's list
    for block in blocks:
        for limit in (size - 1, size):
            reference, decoder = pair()
            reference.max_header_list_size = decoder.max_header_list_size = limit
            for earlier in blocks[1 : blocks.index(block)]:  # the dynamic table as it was
                decode_both(reference, decoder, earlier)
            outcome = decode_both(reference, decoder, block)
            assert isinstance(outcome, OversizedHeaderListError) == (limit < size)


def test_the_dynamic_tables_entries_are_the_header_tuples_handed_out():
    """A literal with incremental indexing goes into the table as the `HeaderTuple` handed
    out (equal to hpack's plain tuple, which hpack's table reads alike), and an index to it
    hands out that object again; an entry that is a plain tuple is still handed out as a
    `HeaderTuple`."""
    encoder = hpack.Encoder()
    first = encoder.encode([(b"x-app", b"1"), (b"grpc-timeout", b"5S")])
    second = encoder.encode([(b"x-app", b"1"), (b"grpc-timeout", b"5S")])
    reference, decoder = pair()
    added = decoder.decode(first, raw=True)
    assert added == reference.decode(first, raw=True)
    entries = list(decoder.header_table.dynamic_entries)
    assert [type(e) for e in entries] == [HeaderTuple, HeaderTuple]
    assert entries == list(reference.header_table.dynamic_entries)
    again = decoder.decode(second, raw=True)
    assert again == reference.decode(second, raw=True)
    assert all(a is b for a, b in zip(again, added, strict=True))
    decoder.header_table.dynamic_entries[0] = (b"grpc-timeout", b"5S")  # as hpack adds it
    assert type(decoder.decode(second, raw=True)[1]) is HeaderTuple


@settings(FUZZ, max_examples=50)
@given(sessions())
def test_the_list_size_noted_is_the_decoded_lists(session):
    """`list_size` after a block is its list's size counted as the request path counts it
    (name and value octets, 32 a field), which it then takes instead of counting again."""
    initial, huffman, steps = session
    decoder = LiteralDecoder()
    decoder.max_allowed_table_size = MAX_ALLOWED
    decoder.max_header_list_size = 2**31
    for block in encode_session(initial, huffman, steps):
        fields = decoder.decode(block, raw=True)
        assert decoder.list_size == sum(len(n) + len(v) + 32 for n, v in fields)


def test_a_run_of_indexes_is_decoded_again_whenever_the_table_changed():
    """Runs of one-octet indexes are kept while the table is the same: after an insertion (even
    of a field equal to the newest, the length unchanged by an eviction), a size update, and
    hpack's own decoding (`raw=False`), the same octets name other entries, as hpack's do."""
    reference, decoder = pair()
    reference.header_table_size = decoder.header_table_size = 68  # two entries of 34 octets
    a, b = _literal(0x40, b"a", b"1"), _literal(0x40, b"b", b"1")
    decode_both(reference, decoder, a + b)
    assert decode_both(reference, decoder, b"\x82\xbe\xbf") == [
        (b":method", b"GET"),
        (b"b", b"1"),
        (b"a", b"1"),
    ]
    decode_both(reference, decoder, b)  # b again: a evicted; the newest equal to the last
    assert decode_both(reference, decoder, b"\x82\xbe\xbf")[1:] == [(b"b", b"1")] * 2
    # In one block: the run, an insertion, the same run.
    block = b"\xbe\xbf" + _literal(0x40, b"c", b"1") + b"\xbe\xbf"
    assert decode_both(reference, decoder, block) == [(b"b", b"1")] * 2 + [(b"c", b"1")] * 2 + [
        (b"b", b"1")
    ]
    # A size update that evicts, then the run: one entry is left.
    assert type(decode_both(reference, decoder, b"\x3f\x03\xbe\xbf")) is InvalidTableIndex
    decode_both(reference, decoder, b"\x3f\x25")  # back to 68
    decode_both(reference, decoder, b)
    assert decode_both(reference, decoder, b"\xbe\xbf") == [(b"b", b"1"), (b"c", b"1")]  # kept
    # hpack's decoding (str fields) adds d, evicting c: the same length, a new newest entry
    reference.decode(_literal(0x40, b"d", b"1"), raw=False)
    decoder.decode(_literal(0x40, b"d", b"1"), raw=False)
    assert decode_both(reference, decoder, b"\xbe\xbf") == [(b"d", b"1"), (b"b", b"1")]
    decoder.header_table.dynamic_entries[0] = (b"e", b"1")  # a new newest entry, by hand
    reference.header_table.dynamic_entries[0] = (b"e", b"1")
    assert decode_both(reference, decoder, b"\xbe\xbf") == [(b"e", b"1"), (b"b", b"1")]


def test_an_invalid_index_in_a_run_fails_after_the_list_size_of_the_fields_before_it():
    """hpack checks the list's size after each field: an oversized list before an invalid
    index in the same run is that error, at the limit it is the index's; a run decoded before
    (kept) fails on its size alike."""
    for limit, error in ((84, InvalidTableIndex), (83, OversizedHeaderListError)):
        reference, decoder = pair()
        reference.max_header_list_size = decoder.max_header_list_size = limit
        assert type(decode_both(reference, decoder, b"\x82\x82\xbe")) is error
    reference, decoder = pair()
    assert len(decode_both(reference, decoder, b"\x82\x82\x82")) == 3  # kept
    reference.max_header_list_size = decoder.max_header_list_size = 125
    assert type(decode_both(reference, decoder, b"\x82\x82\x82")) is OversizedHeaderListError
    assert type(decode_both(reference, decoder, b"\x82" + b"\x82\x82\x82")) is (
        OversizedHeaderListError
    )


def test_long_runs_decode_and_the_runs_kept_stay_bounded():
    reference, decoder = pair()
    decode_both(reference, decoder, _literal(0x40, b"a", b"1"))
    for n in range(1, 300):
        run = bytes([0x81 + n % 61]) * (n % 20) + b"\xbe" * (n // 20) + b"\x82" * (n % 7)
        block = b"\x0f\x00\x01x" + run if n % 3 else run * 20  # after a literal; long runs
        decode_both(reference, decoder, block)
        assert len(decoder._runs) <= hpack_literal._RUNS_KEPT
