"""`LiteralEncoder` (sidecar.http.hpack_literal) uses the peer's dynamic table through a dict: its
blocks decode, by hpack's own `Decoder` and by `LiteralDecoder`, to the headers given, leaving
both decoders' tables as the encoder's own; they are, octet for octet, the blocks of a plain
reference that searches a list; repeated fields go as one-octet indexes, and credentials,
per-request values and oversized fields stay out of the table."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.settings
import hpack
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.hpack import encode_integer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import defaults
from sidecar.http import hpack_literal
from sidecar.http.hpack_literal import LiteralDecoder, LiteralEncoder

FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
NEVER = defaults.H2_NEVER_INDEXED
STATIC = hpack.table.HeaderTable.STATIC_TABLE

# Names from a small pool, so that fields repeat: static names (with and without static values),
# never-indexed and not-indexed ones, and others.
names = st.sampled_from(
    [
        b":method",
        b":authority",
        b":path",
        b":status",
        b"content-type",
        b"user-agent",
        b"x-request-id",
        b"content-length",
        b"authorization",
        b"cookie",
        b"x-forwarded-for",
        b"x-app",
    ]
)
values = st.one_of(
    st.sampled_from([b"", b"GET", b"POST", b"/", b"200", b"application/grpc", b"1", b"2"]),
    st.binary(min_size=60, max_size=300),  # larger than 3/4 of the small tables
)


@st.composite
def fields(draw):
    name, value = draw(names), draw(values)
    kind = draw(st.sampled_from(["plain", "plain", "plain", "tuple", "never"]))
    if kind == "tuple":
        return HeaderTuple(name, value)
    if kind == "never":
        return NeverIndexedHeaderTuple(name, value)
    return (name, value)


@st.composite
def sessions(draw):
    """Blocks of fields mostly from a pool, each after zero or more table sizes set by the peer
    (h2 sets `header_table_size` on its SETTINGS): 0, growth back, the same size twice."""
    pool = draw(st.lists(fields(), min_size=1, max_size=8))
    steps = []
    for _ in range(draw(st.integers(1, 8))):
        sizes = draw(st.lists(st.sampled_from([0, 64, 150, 256, 4096, 8192]), max_size=2))
        block = draw(st.lists(st.one_of(st.sampled_from(pool), fields()), max_size=10))
        steps.append((sizes, block))
    return steps


def table_state(table: hpack.table.HeaderTable) -> tuple:
    return list(table.dynamic_entries), table._current_size, table.maxsize


class Reference:
    """The encoder spelled out, RFC 7541 as the module's docstring puts it, with a list for the
    dynamic table (newest first) searched field by field."""

    def __init__(self, never: frozenset[bytes] = NEVER, size: int = 4096) -> None:
        self.never = never
        self.size = size
        self.entries: list[tuple[bytes, bytes]] = []

    def resize(self, size: int) -> None:
        self.size = size
        self._evict()

    def _evict(self) -> None:
        while sum(len(n) + len(v) + 32 for n, v in self.entries) > self.size:
            self.entries.pop()

    def block(self, headers: list) -> bytes:
        out = bytearray()
        for header in headers:
            name, value = (x.encode() if isinstance(x, str) else x for x in header[:2])
            never = name in self.never or isinstance(header, NeverIndexedHeaderTuple)
            if (name, value) in self.entries and not never:
                out += integer(62 + self.entries.index((name, value)), 7, 0x80)
                continue
            if (name, value) in STATIC:
                out += integer(STATIC.index((name, value)) + 1, 7, 0x80)
                continue
            size = len(name) + len(value) + 32
            if never:
                kind, bits = 0x10, 4
            elif name in defaults.H2_NOT_INDEXED or 4 * size > 3 * self.size:
                kind, bits = 0x00, 4
            else:
                kind, bits = 0x40, 6
                self.entries.insert(0, (name, value))
                self._evict()
            static_names = [n for n, _ in STATIC]
            if name in static_names:
                out += integer(static_names.index(name) + 1, bits, kind)
            else:
                out += bytes([kind]) + integer(len(name), 7, 0) + name
            out += integer(len(value), 7, 0) + value
        return bytes(out)


def integer(value: int, bits: int, first: int) -> bytes:
    """RFC 7541 5.1, as hpack's own encoder writes it (the reference), with the first octet's
    high bits set to `first`."""
    out = encode_integer(value, bits)
    out[0] |= first
    return bytes(out)


@settings(FUZZ, max_examples=300)
@given(sessions())
def test_blocks_decode_to_the_headers_given_and_the_tables_stay_the_encoders(steps):
    """Block by block, hpack's `Decoder` (the reference) and `LiteralDecoder` return the header
    list given, never-indexed fields as such, and hold the table the encoder holds; the blocks
    are the reference's, octet for octet."""
    encoder, reference = LiteralEncoder(), Reference()
    decoders = [hpack.Decoder(), LiteralDecoder()]
    for decoder in decoders:
        decoder.max_allowed_table_size = 8192
    for sizes, headers in steps:
        for size in sizes:
            encoder.header_table_size = size
            reference.resize(size)
        block = encoder.encode(headers)
        assert block.endswith(reference.block(headers))  # after the size updates, if any
        for decoder in decoders:
            decoded = decoder.decode(block, raw=True)
            assert [(h[0], h[1]) for h in decoded] == [(h[0], h[1]) for h in headers]
            for got, sent in zip(decoded, headers, strict=True):
                never = sent[0] in NEVER or isinstance(sent, NeverIndexedHeaderTuple)
                if never and (sent[0], sent[1]) not in STATIC:
                    assert isinstance(got, NeverIndexedHeaderTuple)
            assert table_state(decoder.header_table) == table_state(encoder.header_table)
        entries = encoder.header_table.dynamic_entries
        assert not {name for name, _ in entries} & (NEVER | defaults.H2_NOT_INDEXED)
        assert [tuple(e) for e in entries] == reference.entries


def test_a_repeated_field_is_a_one_octet_index_from_the_second_block():
    encoder = LiteralEncoder()
    request = [
        (b":method", b"POST"),
        (b":authority", b"backend:8080"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"x-forwarded-proto", b"http"),
    ]
    first = encoder.encode(request)
    assert first[0] == 0x83  # :method POST: static entry 3
    assert first[1] == 0x41  # :authority (static name 1), with incremental indexing
    # Newest first: x-forwarded-proto is 62, te 63, content-type 64, :authority 65.
    assert encoder.encode(request) == bytes([0x83, 0xC1, 0xC0, 0xBF, 0xBE])
    assert hpack.Decoder().decode(first, raw=True) == request


def test_per_request_values_and_credentials_never_enter_the_table():
    encoder = LiteralEncoder()
    decoder = hpack.Decoder()
    request = [
        (b":method", b"GET"),
        (b":path", b"/items/7"),
        (b"x-request-id", b"0f6b1c6e-8d9a-4b7e-9f3a-2c1d0e4f5a6b"),
        (b"authorization", b"Bearer secret"),
        (b"cookie", b"a=b"),
        (b"content-length", b"12"),
        NeverIndexedHeaderTuple(b"x-token", b"t"),
    ]
    for _ in range(2):
        block = encoder.encode(request)
        decoded = decoder.decode(block, raw=True)
        assert decoded == request
        assert len(encoder.header_table.dynamic_entries) == 0
        assert len(decoder.header_table.dynamic_entries) == 0
        assert [isinstance(h, NeverIndexedHeaderTuple) for h in decoded] == [
            False,
            False,  # :path: without indexing, an intermediary may index it
            True,
            True,
            True,
            False,
            True,
        ]
    # A field in the table that comes as a NeverIndexedHeaderTuple is not sent as its index.
    encoder.encode([(b"x-app", b"1")])
    block = encoder.encode([NeverIndexedHeaderTuple(b"x-app", b"1")])
    assert block[0] == 0x10 and isinstance(
        decoder.decode(block, raw=True)[0], NeverIndexedHeaderTuple
    )


def test_after_a_header_table_size_of_0_nothing_is_indexed_and_growth_back_indexes_again():
    """Through h2: the server's SETTINGS_HEADER_TABLE_SIZE sets the client's encoder."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.encoder = LiteralEncoder()
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())

    def settle(table_size: int) -> None:
        server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: table_size})
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())  # the ACK: the server's decoder expects it

    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
    request += [(b":authority", b"backend"), (b"x-app", b"1")]
    settle(0)
    for stream_id in (1, 3):
        client.send_headers(stream_id, request, end_stream=True)
        server.receive_data(client.data_to_send())
        assert len(client.encoder.header_table.dynamic_entries) == 0
        assert len(server.decoder.header_table.dynamic_entries) == 0
    assert client.encoder.encode(request) == Reference(NEVER, 0).block(request)  # no insertion
    settle(4096)
    client.send_headers(5, request, end_stream=True)
    server.receive_data(client.data_to_send())
    assert list(server.decoder.header_table.dynamic_entries) == [
        (b"x-app", b"1"),
        (b":authority", b"backend"),
    ]
    assert client.encoder.encode(request) == bytes([0x82, 0x86, 0x84, 0xBF, 0xBE])


def test_an_evicted_field_is_added_again_and_the_others_indexes_follow():
    encoder = LiteralEncoder()
    encoder.header_table_size = 100  # room for two entries of 40 octets
    decoders = [hpack.Decoder(), LiteralDecoder()]
    a, b, c = (b"x-a", b"1" * 4), (b"x-b", b"2" * 4), (b"x-c", b"3" * 4)  # 39 octets each

    def send(*headers: tuple[bytes, bytes]) -> bytes:
        block = encoder.encode(list(headers))
        for decoder in decoders:
            assert decoder.decode(block, raw=True) == list(headers)
            assert table_state(decoder.header_table) == table_state(encoder.header_table)
        return block

    send(a, b)
    assert send(a, b) == b"\xbf\xbe"  # a is 63, b 62
    assert send(c)[0] == 0x40  # added: a is evicted
    assert send(b) == b"\xbf"  # b is 63 now
    assert send(a)[0] == 0x40  # a, evicted, is added again (evicting b)
    assert send(a, c) == b"\xbe\xbf"
    assert [name for name, _ in encoder.header_table.dynamic_entries] == [b"x-a", b"x-c"]


def test_a_field_larger_than_three_quarters_of_the_table_is_not_indexed():
    encoder = LiteralEncoder()
    fits = (b"x-a", b"v" * (3072 - 32 - 3))  # 3,072 octets: 3/4 of 4,096
    over = (b"x-b", b"v" * (3073 - 32 - 3))
    assert encoder.encode([fits, over])[0] == 0x40
    assert len(encoder.header_table.dynamic_entries) == 1
    assert encoder.encode([fits, over])[:1] == b"\xbe"


def test_the_fields_remembered_stay_bounded_and_their_indexes_right():
    """Fields inserted once and evicted are forgotten now and then; the live ones keep their
    index. (The decoder's remembered runs of indexes are bounded too.)"""
    encoder = LiteralEncoder()
    decoder = LiteralDecoder()
    kept = (b"x-kept", b"1")
    for n in range(2000):
        block = encoder.encode([kept, (b"x-trace", b"%d" % n)])
        assert decoder.decode(block, raw=True) == [kept, (b"x-trace", b"%d" % n)]
        assert decoder.list_size == 32 + 6 + 1 + 32 + 7 + len(b"%d" % n)  # (sizes remembered)
        assert len(decoder._runs) <= hpack_literal._RUNS_KEPT
        assert len(encoder._numbers) <= 2 * len(encoder.header_table.dynamic_entries) + 64
    assert table_state(decoder.header_table) == table_state(encoder.header_table)


def test_a_str_field_after_an_insertion_starts_the_table_over_on_both_sides():
    """The block is made again with `str` encoded; a field before it had been added to the
    table, so the table is emptied, the peer's too (size updates to 0 and back)."""
    encoder = LiteralEncoder()
    decoders = [hpack.Decoder(), LiteralDecoder()]

    def send(headers: list) -> bytes:
        block = encoder.encode(headers)
        for decoder in decoders:
            decoded = decoder.decode(block, raw=True)
            assert decoded == [
                tuple(x.encode() if isinstance(x, str) else x for x in h) for h in headers
            ]
            assert table_state(decoder.header_table) == table_state(encoder.header_table)
        return block

    send([(b"x-old", b"0")])
    assert send([(b"x-a", b"1"), ("x-b", "2")]).startswith(b"\x20\x3f\xe1\x1f")  # 0, 4,096
    assert [name for name, _ in encoder.header_table.dynamic_entries] == [b"x-b", b"x-a"]
    assert send([(b"x-a", b"1"), (b"x-old", b"0")])[:2] == b"\xbf\x40"


def test_a_size_set_twice_keeps_the_queued_update():
    """hpack's table clears `resized` when a size equals the last one; the shrink the peer
    acknowledged is still sent first."""
    encoder = LiteralEncoder()
    encoder.header_table_size = 100
    encoder.header_table_size = 100
    assert encoder.encode([(b":method", b"GET")]) == b"\x3f\x45\x82"
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"


# -- the literals' spelling (what the encoder did alone before it indexed) --------------------


def test_every_static_pair_is_sent_as_its_index_and_other_fields_as_literals():
    """The encoder looks for a static pair only under a static name with an empty or a
    static value: every static pair still goes as its (first) index, one octet, and a static
    name with another value as a literal naming the index."""
    first: dict[tuple[bytes, bytes], int] = {}
    for index, pair in enumerate(STATIC, start=1):
        first.setdefault(pair, index)
    encoder = LiteralEncoder(never_indexed=frozenset())
    encoder.header_table_size = 0  # nothing indexed
    encoder.encode([])
    for (name, value), index in first.items():
        assert encoder.encode([(name, value)]) == bytes([0x80 | index])
        other = value + b"-other" if value else b"x"
        block = encoder.encode([(name, other)])
        assert block[0] & 0xF0 == 0x00 and block[0] != 0x00, (name, block)
        assert hpack.Decoder().decode(block, raw=True) == [(name, other)]


plain_or_never = st.one_of(
    st.tuples(names, values),
    st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=150)),
    st.builds(NeverIndexedHeaderTuple, names, values),
    st.builds(HeaderTuple, names, values),
    st.tuples(st.sampled_from(["x-text", ":path", "user-agent"]), st.sampled_from(["a", ""])),
)


@settings(FUZZ, max_examples=200)
@given(st.lists(st.lists(plain_or_never, max_size=8), max_size=4), st.sampled_from([0, 256, 4096]))
def test_the_encoders_blocks_are_the_references(blocks, size):
    """The encoder's remembered name spellings, one-octet lengths and dict give, octet for
    octet, the blocks of the reference (str names and values are encoded; a block with one
    after an insertion starts over, so those come only first)."""
    never = frozenset({b"authorization", b"x-request-id"})
    encoder, reference = LiteralEncoder(never), Reference(never, size)
    encoder.header_table_size = size
    prefix = encoder.encode([])
    for headers in blocks:
        strs = [h for h in headers if isinstance(h[0], str) or isinstance(h[1], str)]
        if strs:
            headers = strs
        assert encoder.encode(headers) == reference.block(headers)
    assert prefix == (b"" if size == 4096 else integer(size, 5, 0x20))


def test_the_remembered_names_are_bounded_and_static_names_stay():
    """Past the bound on remembered names they are forgotten at once, the static names kept:
    blocks are spelled the same before and after."""
    encoder = LiteralEncoder(frozenset())
    encoder.header_table_size = 0  # nothing indexed: the same block every time
    fields = [(b":method", b"PUT"), (b"user-agent", b"u"), (b"x-a", b"1"), (b":path", b"/")]
    before = encoder.encode(fields)[1:]
    for n in range(3000):
        encoder.encode([(f"x-name-{n}".encode(), b"v")])
        assert len(hpack_literal._NAME_CODES) <= hpack_literal._NAME_CODES_MAX
    assert set(hpack_literal._STATIC_NAME_CODES) <= set(hpack_literal._NAME_CODES)
    assert encoder.encode(fields) == before == Reference(frozenset(), 0).block(fields)


def test_a_table_size_change_is_kept_when_str_fields_are_spelled_again():
    """A table size change the peer asked for starts the next block, and stays there when the
    block's fields are spelled again as bytes (a `str` field)."""
    encoder = LiteralEncoder(frozenset())
    encoder.header_table_size = 0
    fields = [("x-text", "a"), (b":path", b"/")]
    block = encoder.encode(fields)
    assert block == b"\x20" + Reference(frozenset(), 0).block(fields)
    assert encoder.encode(fields) == Reference(frozenset(), 0).block(fields)


# -- what the encoder knows of fields (their octets, looked up all at once) -------------------


def test_known_fields_are_spelled_again_where_their_octets_are_not_theirs():
    """A field's octets are looked up as the last block spelled them: after an insertion (every
    index one older, in the same block too), after a size change (evictions, and which fields
    are worth an entry), and for a `NeverIndexedHeaderTuple` equal to a known plain field,
    the blocks are still the reference's and decode to the fields given."""
    encoder, reference = LiteralEncoder(), Reference()
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 8192
    a, b = (b"x-a", b"1"), (b"x-b", b"1")
    length = (b"content-length", b"12")  # a literal without indexing
    steps: list[tuple[int | None, list]] = [
        (None, [a, b, length, (b":method", b"GET")]),
        (None, [a, b, length, (b":method", b"GET")]),  # all known
        (None, [a, (b"x-c", b"1"), b, a, length]),  # an insertion between known fields
        (None, [NeverIndexedHeaderTuple(*a), NeverIndexedHeaderTuple(*length), a, length]),
        (None, [HeaderTuple(*b), b, (b"x-c", b"1")]),
        (64, [a, b, length]),  # a table for one entry: a evicts b
        (64, [b, a, (b"x-d", b"v" * 20)]),  # 55 octets: more than 3/4 of 64, not indexed
        (4096, [(b"x-d", b"v" * 20), b, a]),
        (None, [(b"x-d", b"v" * 20), b, a, (b":path", b"/" * 200), (b":path", b"/" * 200)]),
    ]
    for size, headers in steps:
        if size is not None:
            encoder.header_table_size = size
            reference.resize(size)
        block = encoder.encode(headers)
        assert block.endswith(reference.block(headers))
        decoded = decoder.decode(block, raw=True)
        assert decoded == [(h[0], h[1]) for h in headers]
        assert [isinstance(h, NeverIndexedHeaderTuple) for h in decoded] == [
            isinstance(h, NeverIndexedHeaderTuple) for h in headers
        ]
        assert table_state(decoder.header_table) == table_state(encoder.header_table)


def test_an_unhashable_field_is_spelled_as_bytes_and_what_is_known_stays_bounded():
    encoder, reference = LiteralEncoder(), Reference()
    headers = [(b"x-a", b"1"), [b"x-b", b"2"], (b"x-c", bytearray(b"3"))]
    as_bytes = [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")]
    assert encoder.encode(headers) == reference.block(as_bytes)
    assert encoder.encode(headers) == reference.block(as_bytes) == b"\xc0\xbf\xbe"
    for n in range(1000):  # literals without indexing are kept, up to a bound
        fields = [(b":path", b"/%d" % n), (b"x-a", b"1")]
        assert encoder.encode(fields) == reference.block(fields)
        assert len(encoder._known) <= hpack_literal._KNOWN_MAX
