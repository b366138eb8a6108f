"""An HPACK encoder that never touches the dynamic table: static-table matches or plain literals.

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

That is valid HPACK for any decoder: the peer's dynamic table stays empty, so its decoding is
cheap too. A table size change the peer asked for (SETTINGS_HEADER_TABLE_SIZE) is still
acknowledged at the start of the next block, as RFC 7541 4.2 requires.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Encoder, HeaderTuple
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
