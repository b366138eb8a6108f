"""HPACK without the dynamic table: static-table matches or plain literals, and their fast decoding.

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

`LiteralDecoder` reads such blocks (what a peer sidecar sends on the mesh hop) without hpack's
per-field method calls and debug logging; a block with anything else in it (Huffman, the dynamic
table, a size update, a malformed field) is decoded by hpack from its start, with hpack's errors.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import OversizedHeaderListError
from hpack.table import HeaderTable

from sidecar import defaults

_STATIC = HeaderTable.STATIC_TABLE  # entry i is index i + 1
_STATIC_PAIRS: dict[tuple[bytes, bytes], bytes] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(_STATIC, start=1):
    _STATIC_PAIRS.setdefault((_name, _value), bytes([0x80 | _index]))
    _STATIC_NAMES.setdefault(_name, _index)

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


def _string(data: bytes) -> bytes:
    """A string literal, not Huffman-coded (H bit 0)."""
    n = len(data)
    return (bytes([n]) if n < 0x7F else _integer(n, 7, 0)) + data


# The first bytes of a literal with an indexed name, per (representation, static index).
_NAME_PREFIX: dict[tuple[int, int], bytes] = {
    (kind, index): _integer(index, 4, kind)
    for kind in (_WITHOUT_INDEXING, _NEVER_INDEXED)
    for index in range(1, len(_STATIC) + 1)
}


class LiteralEncoder(Encoder):
    """hpack's `Encoder`, encoding without the dynamic table (see the module's docstring)."""

    def __init__(self, never_indexed: frozenset[bytes] = defaults.H2_NEVER_INDEXED) -> None:
        super().__init__()
        self.never_indexed = never_indexed

    def encode(self, headers: Iterable, huffman: bool = True) -> bytes:  # type: ignore[override]
        """Encode a header list (pairs of bytes, or `HeaderTuple`s from h2's normalisation, whose
        `indexable` False asks for never indexed); `huffman` is ignored: literals are raw."""
        block = bytearray()
        table = self.header_table
        if table.resized:
            block += self._encode_table_size_change()
            table.resized = False
        pairs = _STATIC_PAIRS
        names = _STATIC_NAMES
        never = self.never_indexed
        prefixes = _NAME_PREFIX
        for header in headers:
            name, value = header[0], header[1]
            if not isinstance(name, bytes):
                name = name.encode()
            if not isinstance(value, bytes):
                value = value.encode()
            indexed = pairs.get((name, value))
            if indexed is not None:
                block += indexed
                continue
            sensitive = name in never or (isinstance(header, HeaderTuple) and not header.indexable)
            kind = _NEVER_INDEXED if sensitive else _WITHOUT_INDEXING
            index = names.get(name)
            if index is not None:
                block += prefixes[kind, index]
            else:
                block.append(kind)
                block += _string(name)
            block += _string(value)
        return bytes(block)


# Decoded static entries, shared (tuples are immutable); index 0 is no entry.
_STATIC_HEADERS: list[HeaderTuple | None] = [None, *(HeaderTuple(n, v) for n, v in _STATIC)]
_STATIC_COUNT = len(_STATIC)


class _NotPlain(Exception):
    """A field the fast path does not read: hpack decodes the block."""


def _read_integer(data: bytes, i: int, mask: int) -> tuple[int, int]:
    """RFC 7541 5.1 at `data[i]` with prefix `mask`: (value, index after it)."""
    value = data[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        byte = data[i]
        i += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 28:
            raise _NotPlain


def _read_string(data: bytes, i: int) -> tuple[bytes, int]:
    if data[i] & 0x80:
        raise _NotPlain  # Huffman-coded
    length, i = _read_integer(data, i, 0x7F)
    end = i + length
    if end > len(data):
        raise _NotPlain  # truncated: hpack says so
    return data[i:end], end


class LiteralDecoder(Decoder):
    """hpack's `Decoder`, with a fast path for blocks of static indexes and raw literals."""

    def decode(self, data: bytes, raw: bool = False) -> list:  # type: ignore[override]
        if raw:
            try:
                headers = self._decode_plain(bytes(data))
            except (_NotPlain, IndexError):
                pass
            else:
                self._assert_valid_table_size()
                return headers
        return super().decode(data, raw)

    def _decode_plain(self, data: bytes) -> list:
        """The fields of a block as (name, value) byte tuples — `NeverIndexedHeaderTuple` for a
        never-indexed literal — bounded by the header list size as hpack bounds them."""
        headers: list = []
        append = headers.append
        static = _STATIC_HEADERS
        limit = self.max_header_list_size
        size = 0
        i = 0
        end = len(data)
        while i < end:
            first = data[i]
            if first & 0x80:
                index, i = _read_integer(data, i, 0x7F)
                if not 0 < index <= _STATIC_COUNT:
                    raise _NotPlain  # the dynamic table (or index 0, an error)
                header = static[index]
            elif first < 0x20:  # literal without indexing (0000) or never indexed (0001)
                index, i = _read_integer(data, i, 0x0F)
                if index:
                    if index > _STATIC_COUNT:
                        raise _NotPlain
                    name = _STATIC[index - 1][0]
                else:
                    name, i = _read_string(data, i)
                value, i = _read_string(data, i)
                header = NeverIndexedHeaderTuple(name, value) if first & 0x10 else (name, value)
            else:
                raise _NotPlain  # incremental indexing, or a table size update
            append(header)
            size += len(header[0]) + len(header[1]) + 32
            if size > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
        return headers
