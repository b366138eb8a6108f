"""HPACK without the dynamic table (static-table matches or plain literals); fast HPACK decoding.

hpack's `Encoder` searches its dynamic table with a Python loop for every header, inserts every
new header (evicting others) and Huffman-codes every literal, also in Python: 15 % of the
outbound sidecar's CPU per request (bench/README.md, "Where the time goes"). Between a sidecar
and its peer or its local app the bytes travel over loopback or the pod's network, where a few
more bytes per request cost less than that CPU; and a mesh request carries values never seen
before (`x-request-id`), which only churn the table. So each header is sent as

- the static table's index, when name and value match a static entry (`:method GET`, …);
- else a literal *without indexing* (RFC 7541 6.2.2) — or *never indexed* (6.2.3) for
  credentials and per-request-unique values, which no intermediary should index either — with
  the static table's index for the name where it has one, and no Huffman coding.

That is valid HPACK for any decoder: the peer's dynamic table stays empty. A table size change
the peer asked for (SETTINGS_HEADER_TABLE_SIZE) is still acknowledged at the start of the next
block, as RFC 7541 4.2 requires.

`LiteralDecoder` decodes every HPACK block (RFC 7541) itself, with hpack's results, errors and
dynamic-table updates, in one loop that reads one-byte integers inline. Its blocks come from peer
sidecars (the literals above) and from apps and clients (grpcio, nghttp2, curl), whose encoders
use the dynamic table: after an app's first request almost every field is a dynamic-table index,
and a new field is a Huffman-coded literal with incremental indexing. hpack's `Decoder` spends
several Python calls on each field (a memoryview slice, `decode_integer`, `get_by_index`,
`HeaderTuple`, and a `log.debug` even when debug logging is off): about 100 of the ~1,200 Python
calls a gRPC call costs in a sidecar.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_table import decode_huffman  # what hpack's Decoder uses: the same errors
from hpack.table import HeaderTable

from sidecar import defaults

_STATIC = HeaderTable.STATIC_TABLE  # entry i is index i + 1
_STATIC_PAIRS: dict[tuple[bytes, bytes], bytes] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(_STATIC, start=1):
    _STATIC_PAIRS.setdefault((_name, _value), bytes([0x80 | _index]))
    _STATIC_NAMES.setdefault(_name, _index)

# The static names with an entry whose value is not empty (`:method GET`, `:status 200`, ...).
_VALUED_NAMES = frozenset(name for name, value in _STATIC if value)

_WITHOUT_INDEXING = 0x00  # 0000xxxx: literal header field without indexing
_NEVER_INDEXED = 0x10  # 0001xxxx: literal header field never indexed


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: `value` with an N-bit prefix, the high bits of the first byte `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# The first bytes of a literal with an indexed name, per (representation, static index).
_NAME_PREFIX: dict[tuple[int, int], bytes] = {
    (kind, index): _integer(index, 4, kind)
    for kind in (_WITHOUT_INDEXING, _NEVER_INDEXED)
    for index in range(1, len(_STATIC) + 1)
}

# A field's name as the two literal representations spell it (without indexing, never indexed):
# a static name as its index, any other name as a raw string. Static names are always here; other
# names are remembered as they come (a bounded number: past that, forgotten all at once), so that
# a name is spelled once, not measured and written octet by octet in every block.
_STATIC_NAME_CODES: dict[bytes, tuple[bytes, bytes]] = {
    name: (_NAME_PREFIX[_WITHOUT_INDEXING, index], _NAME_PREFIX[_NEVER_INDEXED, index])
    for name, index in _STATIC_NAMES.items()
}
_NAME_CODES = dict(_STATIC_NAME_CODES)
_NAME_CODES_MAX = 1024
_LENGTHS = tuple(bytes([n]) for n in range(0x7F))  # a raw string's one-octet length (5.2)


def _literal_name_code(name: bytes) -> tuple[bytes, bytes]:
    """A name outside the static table, spelled for both literal representations, and
    remembered. A `str` name raises TypeError before anything is remembered."""
    spelled = _integer(len(name), 7, 0) + name
    code = (bytes([_WITHOUT_INDEXING]) + spelled, bytes([_NEVER_INDEXED]) + spelled)
    if len(_NAME_CODES) >= _NAME_CODES_MAX:
        _NAME_CODES.clear()
        _NAME_CODES.update(_STATIC_NAME_CODES)
    _NAME_CODES[name] = code
    return code


class LiteralEncoder(Encoder):
    """hpack's `Encoder`, encoding without the dynamic table (see the module's docstring)."""

    def __init__(self, never_indexed: frozenset[bytes] = defaults.H2_NEVER_INDEXED) -> None:
        super().__init__()
        self.never_indexed = never_indexed

    def encode(self, headers: Iterable, huffman: bool = True) -> bytes:  # type: ignore[override]
        """Encode a header list (pairs of bytes, or `HeaderTuple`s from h2's normalisation, a
        `NeverIndexedHeaderTuple` asking for never indexed); `huffman` is ignored: literals
        are raw. Names and values are bytes on every path of the sidecar: the loop takes them
        as they are (a `str` fails its first concatenation, and the block is made again with
        them encoded), names spelled once (`_NAME_CODES`) and short lengths from a table:
        about two calls a field (a dict lookup and a len) where hpack's took ~9."""
        if headers.__class__ is not list:
            headers = list(headers)
        block = bytearray()
        table = self.header_table
        start = 0  # where the fields begin
        if table.resized:
            block += self._encode_table_size_change()
            table.resized = False
            start = len(block)
        try:
            self._fields(block, headers)
        except TypeError:
            del block[start:]
            self._fields(block, [_as_bytes(header) for header in headers])
        return bytes(block)

    def _fields(self, block: bytearray, headers: list) -> None:
        pairs = _STATIC_PAIRS
        codes = _NAME_CODES
        never = self.never_indexed
        valued = _VALUED_NAMES
        static_names = _STATIC_NAMES
        lengths = _LENGTHS
        for header in headers:
            name = header[0]
            value = header[1]
            # A static pair is looked for only where one may match: one of the few names with
            # static values, or a static name with an empty value (most static entries).
            if name in valued or (not value and name in static_names):
                indexed = pairs.get((name, value))
                if indexed is not None:
                    block += indexed
                    continue
            code = codes.get(name)
            if code is None:
                code = _literal_name_code(name)
            if name in never or header.__class__ is NeverIndexedHeaderTuple:
                block += code[1]
            else:
                block += code[0]
            n = len(value)
            block += lengths[n] if n < 0x7F else _integer(n, 7, 0)
            block += value


def _as_bytes(header: tuple) -> tuple:
    """A field with `str` name or value encoded (UTF-8), never-indexed-ness kept."""
    name, value = header[0], header[1]
    if not isinstance(name, bytes):
        name = name.encode()
    if not isinstance(value, bytes):
        value = value.encode()
    if isinstance(header, HeaderTuple) and not header.indexable:
        return NeverIndexedHeaderTuple(name, value)
    return (name, value)


# Decoded static entries, shared (tuples are immutable), and static names; index 0 is no entry.
_STATIC_HEADERS: list[HeaderTuple | None] = [None, *(HeaderTuple(n, v) for n, v in _STATIC)]
_STATIC_NAMES_BY_INDEX: list[bytes | None] = [None, *(n for n, _ in _STATIC)]
_STATIC_SIZES: list[int] = [0, *(len(n) + len(v) + 32 for n, v in _STATIC)]  # RFC 7541 4.1
_STATIC_NAME_SIZES: list[int] = [0, *(len(n) + 32 for n, _ in _STATIC)]  # a value's length to add
_STATIC_COUNT = len(_STATIC)
_FIRST_DYNAMIC = _STATIC_COUNT + 1  # index 62 is the newest dynamic entry

# `HeaderTuple(name, value)` runs a Python `__new__`; this builds the same object without it.
_new_tuple = tuple.__new__

# Continuation octets hpack's `decode_integer` accepts after a full prefix (VARINT_MAX_LENGTH).
_VARINT_MAX_OCTETS = 5


def _varint(data: bytes, i: int, value: int) -> tuple[int, int]:
    """The rest of an RFC 7541 5.1 integer whose prefix is full (`value`, its maximum), from its
    first continuation octet at `data[i]`: (integer, index after it). Too many octets is
    hpack's error; a truncated one raises IndexError, which the decoder turns into hpack's."""
    shift = 0
    for _ in range(_VARINT_MAX_OCTETS):
        byte = data[i]
        i += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
    raise HPACKDecodingError("Variable integer representation is too long")


def _invalid_index(index: int) -> InvalidTableIndex:
    return InvalidTableIndex(f"Invalid table index {index}")


class LiteralDecoder(Decoder):
    """hpack's `Decoder`, decoding raw blocks itself (see the module's docstring): apps' blocks
    (grpcio, nghttp2, curl) are mostly dynamic-table indexes and Huffman-coded literals with
    incremental indexing, which hpack decodes with several Python calls and a `log.debug` per
    field, about 100 calls per gRPC call; here a field of one-octet integers costs no call of its
    own, and there is no fallback to hpack: malformed blocks get hpack's errors from here too.

    `decode(data, raw=True)` returns what hpack's returns and leaves the dynamic table (entries,
    size, maximum) as hpack's would, raising the same exception classes in the same cases, after
    the same table updates: it is hpack's algorithm, fused into one loop without per-field calls
    or logging. Fields are static `HeaderTuple`s (shared), `HeaderTuple`s for dynamic-table
    entries and literals with incremental indexing, `NeverIndexedHeaderTuple`s for never-indexed
    literals, and plain `(name, value)` tuples for literals without indexing; callers use only
    `header[0]`, `header[1]` and whether a header is a `NeverIndexedHeaderTuple`. `raw=False`
    (str headers) is left to hpack."""

    # The size of the last list `decode(raw=True)` returned (RFC 7541 4.1: name, value and 32
    # octets a field, RFC 9113 6.5.2's too), counted as it decoded: the request path needs it.
    list_size = 0

    def decode(self, data: bytes, raw: bool = False) -> list:  # type: ignore[override]
        if not raw:
            return super().decode(data, raw)
        if data.__class__ is not bytes:
            data = bytes(data)
        table = self.header_table
        dynamic = table.dynamic_entries  # newest first; the same deque for the whole block
        static = _STATIC_HEADERS
        static_sizes = _STATIC_SIZES
        static_names = _STATIC_NAMES_BY_INDEX
        static_name_sizes = _STATIC_NAME_SIZES
        limit = self.max_header_list_size
        headers: list = []
        append = headers.append
        size = 0  # the header list's size, as hpack counts it (RFC 7541 4.1's entry size)
        i = 0
        end = len(data)
        try:
            while i < end:
                first = data[i]
                i += 1
                if first & 0x80:  # 1xxxxxxx: indexed field (6.1)
                    index = first & 0x7F
                    if index == 0x7F:
                        index, i = _varint(data, i, 0x7F)
                    if index <= _STATIC_COUNT:
                        if not index:
                            raise _invalid_index(index)
                        append(static[index])
                        size += static_sizes[index]
                    else:
                        try:
                            entry = dynamic[index - _FIRST_DYNAMIC]
                        except IndexError:
                            raise _invalid_index(index) from None
                        # Entries this decoder added are HeaderTuples already (see below).
                        if entry.__class__ is not HeaderTuple:
                            entry = _new_tuple(HeaderTuple, entry)
                        append(entry)
                        size += len(entry[0]) + len(entry[1]) + 32
                    if size > limit:
                        raise OversizedHeaderListError(
                            f"A header list larger than {limit} has been received"
                        )
                    continue
                if first & 0x40:  # 01xxxxxx: literal with incremental indexing (6.2.1)
                    mask = 0x3F
                elif first & 0x20:  # 001xxxxx: dynamic table size update (6.3)
                    if headers:
                        raise HPACKDecodingError("Table size update not at the start of the block")
                    new_size = first & 0x1F
                    if new_size == 0x1F:
                        new_size, i = _varint(data, i, 0x1F)
                    if new_size > self.max_allowed_table_size:
                        raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                    self.header_table_size = new_size  # evicts what no longer fits
                    continue
                else:  # 0000xxxx without indexing (6.2.2), 0001xxxx never indexed (6.2.3)
                    mask = 0x0F
                index = first & mask
                if index:  # the name is a table entry's
                    if index == mask:  # a full prefix: static names from 15 on take one octet
                        octet = data[i]
                        if octet < 0x80:
                            index += octet
                            i += 1
                        else:
                            index, i = _varint(data, i, mask)
                    if index <= _STATIC_COUNT:
                        name = static_names[index]
                        field = static_name_sizes[index]
                    else:
                        try:
                            name = dynamic[index - _FIRST_DYNAMIC][0]
                        except IndexError:
                            raise _invalid_index(index) from None
                        field = len(name) + 32
                else:  # a literal name (5.2)
                    octet = data[i]
                    length = octet & 0x7F
                    i += 1
                    if length == 0x7F:
                        length, i = _varint(data, i, 0x7F)
                    stop = i + length
                    if stop > end:
                        raise HPACKDecodingError("Truncated header block")
                    name = data[i:stop]
                    if octet & 0x80:
                        name = decode_huffman(name)
                        field = len(name) + 32
                    else:
                        field = length + 32
                    i = stop
                octet = data[i]  # the value (5.2)
                length = octet & 0x7F
                i += 1
                if length == 0x7F:  # 127 octets or more: up to 254 take one more octet
                    more = data[i]
                    if more < 0x80:
                        length += more
                        i += 1
                    else:
                        length, i = _varint(data, i, 0x7F)
                stop = i + length
                if stop > end:
                    raise HPACKDecodingError("Truncated header block")
                value = data[i:stop]
                if octet & 0x80:
                    value = decode_huffman(value)
                    field += len(value)
                else:
                    field += length
                i = stop
                if first & 0x40:
                    header = _new_tuple(HeaderTuple, (name, value))
                    table.add(name, value)  # hpack's insertion and eviction
                    if dynamic:  # the entry is the newest (unless it cleared the table)
                        dynamic[0] = header  # equal to hpack's, and handed out as it is
                elif first & 0x10:
                    header = _new_tuple(NeverIndexedHeaderTuple, (name, value))
                else:
                    header = (name, value)
                append(header)
                size += field  # RFC 7541 4.1's entry size: a raw string's length is its own
                if size > limit:
                    raise OversizedHeaderListError(
                        f"A header list larger than {limit} has been received"
                    )
        except IndexError as err:  # a read past the block's end: truncated, as hpack says
            raise HPACKDecodingError("Truncated header block") from err
        # A maximum lowered by SETTINGS that the encoder did not follow: hpack's check (and
        # error), called only when it fails, to spare its three Python calls on every block.
        if table._maxsize > self.max_allowed_table_size:  # `maxsize`, without its property
            self._assert_valid_table_size()
        self.list_size = size  # RFC 7541 4.1's (and RFC 9113 6.5.2's) size of the list
        return headers
