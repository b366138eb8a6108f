"""HPACK encoding with a dictionary for the dynamic table; fast HPACK decoding.

hpack's `Encoder` searches its dynamic table with a Python loop for every header, inserts every
new header (evicting others) and Huffman-codes every literal, also in Python: 15 % of the
outbound sidecar's CPU per request (bench/README.md, "Where the time goes"). The encoder here
used no dynamic table at all, which made every field of every request a literal that the peer
sidecar's decoder had to read octet by octet (~90 bytecodes a field, 1,000 a request). It now
uses the table, the way nghttp2 does, with the search that made hpack's costly replaced:

- a field that matches a static entry whole (`:method GET`, ...) is that entry's index;
- a field added earlier and still in the table is its dynamic index (RFC 7541 6.1): one octet
  for the newest 65 entries. The encoder keeps, beside hpack's `HeaderTable` (which does the
  insertion and eviction the peer's decoder will do), a dict from each field to the number of
  its insertion: the field's index is 62 plus the number of fields inserted after it, and the
  field is still in the table while that is less than the table's length (eviction drops the
  oldest first). One dict lookup a field, no loop over the table;
- any other field is a literal with incremental indexing (6.2.1), added to the table, unless it
  is not worth an entry: credentials and `NeverIndexedHeaderTuple`s are never indexed (6.2.3),
  and values that change with every request or response (`defaults.H2_NOT_INDEXED`:
  `x-request-id`, `:path`, `content-length`, ...) and fields larger than 3/4 of the table
  (nghttp2's rule) go without indexing (6.2.2), so that they do not push out the fields that
  repeat. A literal names the static name's index where there is one and is never Huffman-coded:
  between a sidecar and its peer or its app the bytes travel over loopback or the pod's network,
  where a few more bytes cost less than the CPU.

The table's size follows what the peer allowed (h2 sets `header_table_size` from its
SETTINGS_HEADER_TABLE_SIZE); the change is announced at the start of the next block, as
RFC 7541 4.2 requires, and a table of 0 octets (or one too small for a field) indexes nothing.

`LiteralDecoder` decodes every HPACK block (RFC 7541) itself, with hpack's results, errors and
dynamic-table updates, in one loop that reads one-byte integers inline. Its blocks come from peer
sidecars (the encoder above) and from apps and clients (grpcio, nghttp2, curl), whose encoders
use the dynamic table too: after the first request almost every field is a dynamic-table index,
and a new field a (Huffman-coded, from apps) literal with incremental indexing. hpack's `Decoder`
spends several Python calls on each field (a memoryview slice, `decode_integer`,
`get_by_index`, `HeaderTuple`, and a `log.debug` even when debug logging is off): about 100 of
the ~1,200 Python calls a gRPC call costs in a sidecar.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from itertools import repeat

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.hpack import DEFAULT_MAX_HEADER_LIST_SIZE
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
_WITH_INDEXING = 0x40  # 01xxxxxx: literal header field with incremental indexing
_PREFIX_BITS = {_WITHOUT_INDEXING: 4, _NEVER_INDEXED: 4, _WITH_INDEXING: 6}  # the name index's


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
    (kind, index): _integer(index, bits, kind)
    for kind, bits in _PREFIX_BITS.items()
    for index in range(1, len(_STATIC) + 1)
}

# A field's name as the three literal representations spell it (without indexing, never
# indexed, with incremental indexing): a static name as its index, any other name as a raw
# string. Static names are always here; other names are remembered as they come (a bounded
# number: past that, forgotten all at once), so that a name is spelled once, not measured and
# written octet by octet in every block.
_STATIC_NAME_CODES: dict[bytes, tuple[bytes, bytes, bytes]] = {
    name: tuple(_NAME_PREFIX[kind, index] for kind in _PREFIX_BITS)  # type: ignore[misc]
    for name, index in _STATIC_NAMES.items()
}
_NAME_CODES = dict(_STATIC_NAME_CODES)
_NAME_CODES_MAX = 1024
_LENGTHS = tuple(bytes([n]) for n in range(0x7F))  # a raw string's one-octet length (5.2)


def _literal_name_code(name: bytes) -> tuple[bytes, bytes, bytes]:
    """A name outside the static table, spelled for the three literal representations, and
    remembered. A `str` name raises TypeError before anything is remembered."""
    spelled = _integer(len(name), 7, 0) + name
    code = tuple(bytes([kind]) + spelled for kind in _PREFIX_BITS)
    if len(_NAME_CODES) >= _NAME_CODES_MAX:
        _NAME_CODES.clear()
        _NAME_CODES.update(_STATIC_NAME_CODES)
    _NAME_CODES[name] = code  # type: ignore[assignment]
    return code  # type: ignore[return-value]


_STATIC_COUNT = len(_STATIC)
_FIRST_DYNAMIC = _STATIC_COUNT + 1  # index 62 is the newest dynamic entry
# A dynamic entry's index field (6.1) by its age (1: the newest), for the ages a default table
# of 4,096 octets can hold (32 octets an entry at least); older ones are spelled when sent.
_SPELLED_AGES = 4096 // 32 + 1
_DYNAMIC_INDEXES = tuple(_integer(_STATIC_COUNT + age, 7, 0x80) for age in range(_SPELLED_AGES))
# The most fields an encoder keeps the octets of (`LiteralEncoder._known`); past that, they are
# forgotten all at once. A request's and a response's fields, and more.
_KNOWN_MAX = 256
_NONES = repeat(None)  # `pop`'s default, for `map`


class LiteralEncoder(Encoder):
    """hpack's `Encoder` with a dict for the dynamic table and literals as they are (see the
    module's docstring). `header_table` is hpack's, holding what the peer's table holds;
    `_inserted` counts the fields added to it so far and `_numbers` maps a field to the count
    before its (latest) insertion: the field's age in the table is `_inserted - number`.

    `_known` maps a field to the octets that spelled it last, while they still spell it: a
    static pair's index and a literal without indexing (one-octet length) until the table's
    size changes, a dynamic index until the next insertion (which makes every entry one older;
    `_dynamic_known` lists those fields). A block whose fields are all known is one C-level
    pass (`map`, `join`): no bytecode per field. A `NeverIndexedHeaderTuple` equals the plain
    field, whose index or literal is not its own: it is always spelled again."""

    def __init__(self, never_indexed: frozenset[bytes] = defaults.H2_NEVER_INDEXED) -> None:
        self._known: dict[tuple[bytes, bytes], bytes] = {}
        self._dynamic_known: list[tuple[bytes, bytes]] = []
        super().__init__()
        self.never_indexed = never_indexed
        # The never-indexed literal's octets before the value's length, for each never-indexed
        # name without a static value (a value not empty is then always spelled so: such a
        # field is never added to the table, nor a static pair): a block's only unknown field is
        # usually one of them (a request's unique `x-request-id`), spelled in `encode` itself.
        self._never_codes = {
            name: (_NAME_CODES.get(name) or _literal_name_code(name))[1]
            for name in never_indexed
            if name not in _VALUED_NAMES
        }
        self._numbers: dict[tuple[bytes, bytes], int] = {}
        self._inserted = 0

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """hpack's, except that size updates already queued stay queued when the size is set to
        the one it has: hpack's table then clears `resized`, and a shrink the peer's decoder
        must hear of (it acknowledged it) would not be sent before fields that assume it. What
        is known is forgotten: entries may be evicted, and the largest field worth an entry
        changes."""
        Encoder.header_table_size.fset(self, value)  # type: ignore[attr-defined]
        if self.table_size_changes:
            self.header_table.resized = True
        self._known.clear()
        self._dynamic_known.clear()

    def encode(self, headers: Iterable, huffman: bool = True) -> bytes:  # type: ignore[override]
        """Encode a header list (pairs of bytes, or `HeaderTuple`s from h2's normalisation, a
        `NeverIndexedHeaderTuple` asking for never indexed); `huffman` is ignored: literals
        are raw. The known fields are looked up all at once, the others spelled by `_spell`,
        which learns them. Names and values are bytes on every path of the sidecar: they are
        taken as they are, and a `str` (or an unhashable field) fails before the field it is in
        changes the table; the block is then made again with them encoded (see
        `_start_over`)."""
        if headers.__class__ is not list:
            headers = list(headers)
        if self.header_table.resized:  # the size updates first (RFC 7541 4.2)
            update = self._encode_table_size_change()
            self.header_table.resized = False
            return update + self.encode(headers)
        inserted = self._inserted
        try:
            codes = [*map(self._known.get, headers), None]  # the None: `index` always finds one
            if NeverIndexedHeaderTuple in map(type, headers):
                _unknown_never_indexed(codes, headers)
            n = len(headers)
            k = codes.index(None)
            if k < n:
                header = headers[k]
                code = self._never_codes.get(header[0])
                if code is not None and 0 < len(value := header[1]) < 0x7F:
                    codes[k] = code + _LENGTHS[len(value)] + value  # (what `_spell` spells)
                    k = codes.index(None, k + 1)
                if k < n:
                    self._spell(codes, headers, k)
        except TypeError:
            block = bytearray()
            if self._inserted != inserted:
                self._start_over(block)
            headers = [_as_bytes(header) for header in headers]
            codes = [None] * (len(headers) + 1)
            self._spell(codes, headers, 0)
            codes[-1] = b""
            return bytes(block) + b"".join(codes)
        codes[n] = b""
        return b"".join(codes)

    def _start_over(self, block: bytearray) -> None:
        """Empty the table on both sides: fields before a failed one were added to it, and the
        block that told the peer so is being made again. Two size updates at the start of
        the block, to 0 and back, empty the peer's (RFC 7541 4.2)."""
        table = self.header_table
        size = table.maxsize
        table.maxsize = 0  # evicts everything
        table.maxsize = size
        table.resized = False
        self._known.clear()
        self._dynamic_known.clear()
        block += _integer(0, 5, 0x20) + _integer(size, 5, 0x20)

    def _spell(self, codes: list, headers: list, k: int) -> None:
        """Spell the fields whose code is None, from the `k`th (`codes` ends with a None after
        the last field's): about two dict lookups a field sent as an index, where hpack's
        `Encoder` made ~9 calls. (Module constants are read as globals: few fields come here.)
        The indexes and literals that stay valid are learned (`_known`). An insertion makes the
        known dynamic indexes (those of the later fields too) stale: they are spelled again."""
        numbers = self._numbers
        known = self._known
        table = self.header_table
        dynamic = table.dynamic_entries
        inserted = self._inserted
        n = len(headers)
        while k < n:
            header = headers[k]
            name = header[0]
            value = header[1]
            entry = (name, value)
            number = numbers.get(entry)  # (only fields that may be indexed are ever added)
            if number is not None:
                age = inserted - number
                # Not evicted (still in the peer's table), and not asked to be never indexed.
                if age <= len(dynamic) and header.__class__ is not NeverIndexedHeaderTuple:
                    code = (
                        _DYNAMIC_INDEXES[age]
                        if age < _SPELLED_AGES
                        else _integer(_STATIC_COUNT + age, 7, 0x80)
                    )
                    codes[k] = known[entry] = code
                    self._dynamic_known.append(entry)
                    k = codes.index(None, k + 1)
                    continue
            # A static pair is looked for only where one may match: one of the few names with
            # static values, or a static name with an empty value (most static entries).
            if name in _VALUED_NAMES or (not value and name in _STATIC_NAMES):
                indexed = _STATIC_PAIRS.get(entry)
                if indexed is not None:
                    codes[k] = known[entry] = indexed
                    k = codes.index(None, k + 1)
                    continue
            code = _NAME_CODES.get(name) or _literal_name_code(name)
            insert = keep = False
            if name in self.never_indexed or header.__class__ is NeverIndexedHeaderTuple:
                code = code[1]
            elif (
                name in defaults.H2_NOT_INDEXED  # not worth an entry (nor the never indexed)
                or len(name) + len(value) + 32 > 3 * table._maxsize // 4  # (nghttp2's rule)
            ):  # (RFC 7541 4.1's entry size)
                code = code[0]
                keep = True  # the same octets until the table's size changes
            else:
                code = code[2]
                insert = True
            length = len(value)
            if length < 0x7F:
                code += _LENGTHS[length] + value  # a `str` value fails here, before the table
            else:  # changes
                code += _integer(length, 7, 0) + value
                keep = False  # (not the memory of long values)
            codes[k] = code
            if insert:
                table.add(name, value)  # hpack's insertion and eviction: the peer's
                numbers[entry] = inserted
                inserted += 1
                self._inserted = inserted
                if len(numbers) > 2 * len(dynamic) + 64:
                    self._forget_evicted()
                # Every entry is one older: the known indexes are not theirs, the later
                # fields' (looked up before) neither.
                dynamic_known = self._dynamic_known
                [*map(known.pop, dynamic_known, _NONES)]  # (a field may be listed twice)
                dynamic_known.clear()
                codes[k + 1 : n] = [None] * (n - k - 1)
            elif keep:
                if len(known) >= _KNOWN_MAX:
                    known.clear()
                    self._dynamic_known.clear()
                known[entry] = code
            k = codes.index(None, k + 1)

    def _forget_evicted(self) -> None:
        """Drop the fields evicted from the table from `_numbers` (which would otherwise grow
        by one for every field inserted once and never sent again)."""
        inserted = self._inserted
        live = {
            entry: inserted - age
            for age, entry in enumerate(self.header_table.dynamic_entries, start=1)
        }
        self._numbers.clear()  # (the same dict: `_spell` holds it)
        self._numbers.update(live)


def _unknown_never_indexed(codes: list, headers: list) -> None:
    """Forget the codes looked up for `NeverIndexedHeaderTuple`s: they are the equal plain
    field's (an index, a literal without indexing), not a never-indexed literal's."""
    types = [*map(type, headers)]
    k = -1
    for _ in range(types.count(NeverIndexedHeaderTuple)):
        k = types.index(NeverIndexedHeaderTuple, k + 1)
        codes[k] = None


def _as_bytes(header: tuple) -> tuple:
    """A field with `str` name or value encoded (UTF-8), other bytes-likes made `bytes`,
    never-indexed-ness kept."""
    name, value = header[0], header[1]
    name = name.encode() if isinstance(name, str) else bytes(name)
    value = value.encode() if isinstance(value, str) else bytes(value)
    if isinstance(header, HeaderTuple) and not header.indexable:
        return NeverIndexedHeaderTuple(name, value)
    return (name, value)


# Decoded static entries, shared (tuples are immutable), and static names; index 0 is no entry.
_STATIC_HEADERS: list[HeaderTuple | None] = [None, *(HeaderTuple(n, v) for n, v in _STATIC)]
_STATIC_NAMES_BY_INDEX: list[bytes | None] = [None, *(n for n, _ in _STATIC)]
_STATIC_SIZES: list[int] = [0, *(len(n) + len(v) + 32 for n, v in _STATIC)]  # RFC 7541 4.1
_STATIC_NAME_SIZES: list[int] = [0, *(len(n) + 32 for n, _ in _STATIC)]  # a value's length to add

# `HeaderTuple(name, value)` runs a Python `__new__`; this builds the same object without it.
_new_tuple = tuple.__new__

# A run of indexed fields of one octet each (6.1: indexes 1 to 126), from a field's start.
_INDEX_RUN = re.compile(rb"[\x81-\xfe]*")
# The longest run (or block) whose fields a decoder keeps, and how many it keeps (past that,
# they are forgotten all at once): the memory a peer's blocks can make it hold.
_RUN_KEPT_OCTETS = 128
_RUNS_KEPT = 64

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


def _indexed_run(run: bytes, dynamic: deque) -> tuple[tuple, int, int]:
    """The fields of a run of one-octet indexes (6.1) and their list size (RFC 7541 4.1), up to
    the first index in neither table, which is returned too (0: none). Dynamic entries that are
    plain tuples (hpack's own decoding adds such) are handed out as `HeaderTuple`s."""
    headers = []
    size = 0
    for octet in run:
        index = octet & 0x7F
        if index <= _STATIC_COUNT:
            headers.append(_STATIC_HEADERS[index])
            size += _STATIC_SIZES[index]
            continue
        try:
            entry = dynamic[index - _FIRST_DYNAMIC]
        except IndexError:
            return tuple(headers), size, index
        if entry.__class__ is not HeaderTuple:
            entry = _new_tuple(HeaderTuple, entry)
        headers.append(entry)
        size += len(entry[0]) + len(entry[1]) + 32
    return tuple(headers), size, 0


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

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        super().__init__(max_header_list_size)
        # Runs of one-octet indexes (the most common fields: an app's or a peer's repeated
        # ones), and whole blocks that change nothing in the table and hold no never-indexed
        # field, decoded since the dynamic table was last seen to change: their octets to
        # their fields and the fields' size. The table is the same while its newest entry is
        # the same object and its length the same (an insertion makes a new newest entry, an
        # eviction alone shortens it).
        self._runs: dict[bytes, tuple[tuple, int]] = {}
        # The last block `decode` answered from `_runs` (the very object it was given: whoever
        # holds that object tells by identity whether its decoding was such an answer), and what
        # callers read from blocks so answered, by their octets (h2.py's `_take_headers`): valid
        # while the block is in `_runs`, so cleared with it. `checked`, alike: the validation
        # flags for which the block's fields passed h2's checks as they are (`_take_headers`).
        self.hit: bytes | None = None
        self.reads: dict[bytes, tuple] = {}
        self.checked: dict[bytes, object] = {}
        # Blocks that would be kept but for one never-indexed field, a raw value of fewer than
        # 127 octets (a peer sidecar's request: its unique `x-request-id`), decoded since the
        # table last changed: the block's octets without that value (its length octet stays)
        # to the fields before and after it, its name, the list's size without the value, and
        # its place in the list (the number of fields before it).
        # `_variable_at`: where the value began in the last such block, where a block alike
        # has its value too (0: no such block yet). Cleared with `_runs`.
        self._templates: dict[bytes, tuple[tuple, bytes, tuple, int, int]] = {}
        self._variable_at = 0
        # The last block `decode` answered from a template (the very object, as `hit`), that
        # template's key and the never-indexed field's place in the list, and what callers read
        # from blocks so answered, by their template's key (h2.py's `_take_headers` and
        # `_varied_read`): valid while the template is kept, so cleared with it.
        self.varied: bytes | None = None
        self.varied_key = b""
        self.varied_field = 0
        self.varied_reads: dict[bytes, tuple] = {}
        self._newest: object = None
        self._entries = 0

    def decode(self, data: bytes, raw: bool = False) -> list:  # type: ignore[override]
        if not raw:
            return super().decode(data, raw)
        if data.__class__ is not bytes:
            data = bytes(data)
        table = self.header_table
        dynamic = table.dynamic_entries  # newest first; the same deque for the whole block
        runs = self._runs
        newest = dynamic[0] if dynamic else None
        if newest is not self._newest or len(dynamic) != self._entries:
            self._table_changed()
        limit = self.max_header_list_size
        known = runs.get(data)  # a block decoded before
        if known is not None:
            fields, size = known
            if size > limit:  # (no field of the block changes the table: hpack's error)
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
            if table._maxsize > self.max_allowed_table_size:  # (see the end)
                self._assert_valid_table_size()
            self.list_size = size
            self.hit = data
            return [*fields]
        at = self._variable_at
        end = len(data)
        if at and at <= end:  # a block alike but for its never-indexed value, maybe
            stop = at + data[at - 1]  # the value's end, if it is one (its length octet < 0x7F)
            if stop <= end:
                key = data[:at] + data[stop:]
                template = self._templates.get(key)
                if template is not None:
                    before, name, after, size, field = template
                    size += stop - at
                    if size > limit:  # (no field of the block changes the table)
                        raise OversizedHeaderListError(
                            f"A header list larger than {limit} has been received"
                        )
                    if table._maxsize > self.max_allowed_table_size:
                        self._assert_valid_table_size()
                    self.list_size = size
                    self.varied = data
                    self.varied_key = key
                    self.varied_field = field
                    value = data[at:stop]
                    return [*before, _new_tuple(NeverIndexedHeaderTuple, (name, value)), *after]
        keep = True  # no field changes the table, and none is never indexed
        variable = 0  # where the value of the only never-indexed field begins (-1: no template)
        run_at = _INDEX_RUN.match
        headers: list = []
        append = headers.append
        size = 0  # the header list's size, as hpack counts it (RFC 7541 4.1's entry size)
        i = 0
        try:
            while i < end:
                first = data[i]
                i += 1
                if first & 0x80:  # 1xxxxxxx: indexed field (6.1)
                    if 0x80 < first < 0xFF:  # one octet: a run of such fields, known or not
                        stop = run_at(data, i).end()
                        run = data[i - 1 : stop]
                        known = runs.get(run)
                        if known is None:
                            fields, run_size, invalid = _indexed_run(run, dynamic)
                            if invalid:  # after the fields before it, as hpack's
                                size += run_size
                                if size > limit:
                                    raise OversizedHeaderListError(
                                        f"A header list larger than {limit} has been received"
                                    )
                                raise _invalid_index(invalid)
                            if stop - i < _RUN_KEPT_OCTETS:
                                if len(runs) >= _RUNS_KEPT:
                                    runs.clear()
                                    self.reads.clear()
                                    self.checked.clear()
                                runs[run] = fields, run_size
                        else:
                            fields, run_size = known
                        headers += fields
                        size += run_size
                        i = stop
                        # No field of the run changes the table: the list's size checked
                        # after the run raises what checking it after each field would.
                        if size > limit:
                            raise OversizedHeaderListError(
                                f"A header list larger than {limit} has been received"
                            )
                        continue
                    index = first & 0x7F
                    if index == 0x7F:
                        index, i = _varint(data, i, 0x7F)
                    if index <= _STATIC_COUNT:
                        if not index:
                            raise _invalid_index(index)
                        append(_STATIC_HEADERS[index])
                        size += _STATIC_SIZES[index]
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
                    self._table_changed()
                    keep = False
                    variable = -1
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
                        name = _STATIC_NAMES_BY_INDEX[index]
                        field = _STATIC_NAME_SIZES[index]
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
                    self._table_changed()
                    keep = False
                    variable = -1
                elif first & 0x10:
                    header = _new_tuple(NeverIndexedHeaderTuple, (name, value))
                    if keep and octet < 0x7F:  # the first, a raw value with a one-octet length
                        variable, variable_end, variable_field = i - length, i, len(headers)
                    else:
                        variable = -1
                    keep = False  # (a credential, or unique: not kept)
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
        if keep and end < _RUN_KEPT_OCTETS:  # the same octets decode alike while the table is
            if len(runs) >= _RUNS_KEPT:
                runs.clear()
                self.reads.clear()
                self.checked.clear()
            runs[data] = tuple(headers), size
        elif variable > 0 and end - (variable_end - variable) < _RUN_KEPT_OCTETS:
            self._remember_template(data, variable, variable_end, headers, variable_field, size)
        return headers

    def _remember_template(
        self, data: bytes, at: int, stop: int, headers: list, field: int, size: int
    ) -> None:
        """Keep a block whose fields change nothing in the table, the `field`th never indexed
        with its raw value at `data[at:stop]`, as the template of blocks alike but for that
        value (`_templates`)."""
        templates = self._templates
        if len(templates) >= _RUNS_KEPT:
            templates.clear()
            self.varied_reads.clear()
        templates[data[:at] + data[stop:]] = (
            tuple(headers[:field]),
            headers[field][0],
            tuple(headers[field + 1 :]),
            size - (stop - at),
            field,
        )
        self._variable_at = at

    def _table_changed(self) -> None:
        """Forget the runs decoded (their dynamic indexes may name other entries now) and note
        the table as it is."""
        self._runs.clear()
        self.reads.clear()
        self.checked.clear()
        self._templates.clear()
        self.varied_reads.clear()
        self.varied = None
        dynamic = self.header_table.dynamic_entries
        self._newest = dynamic[0] if dynamic else None
        self._entries = len(dynamic)
