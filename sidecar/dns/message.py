"""DNS messages (RFC 1035), as much of them as a stub resolver's query and our answer need.

Sans-I/O: bytes in, a `Query` or bytes out. A query is read up to the end of its one question;
what follows (EDNS's OPT record, a cookie) is not needed to answer it and is left alone. The
answers written here are a header, the question as the client sent it, and A or AAAA records
whose names point back at the question (compression, RFC 1035 4.1.4).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# Record types and classes.
A, AAAA, ANY = 1, 28, 255
IN = 1
# Response codes.
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
# Header flags.
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
_OPCODE = 0x7800

HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
_QUESTION_TAIL = struct.Struct("!HH")  # qtype, qclass
_RECORD = struct.Struct("!HHHIH")  # name pointer, type, class, ttl, rdlength
_NAME_AT_QUESTION = 0xC000 | HEADER.size  # a pointer to the question's name
# A UDP answer to a client that did not offer more (RFC 1035 4.2.1; Envoy's DNS filter keeps
# its answers under it too).
UDP_LIMIT = 512
_MAX_NAME = 255


class FormatError(ValueError):
    """Not a DNS query we can read: answered FORMERR when its header could be read."""


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str  # lower case, without the final dot; "" for the root
    type: int
    klass: int
    question: bytes  # the question section as sent (its name's case kept, as answers echo it)

    @property
    def opcode(self) -> int:
        return (self.flags & _OPCODE) >> 11


def parse_query(data: bytes) -> Query:
    """The query in `data`; FormatError when it is not one (a response, no or several
    questions, a name that does not end where it should)."""
    if len(data) < HEADER.size:
        raise FormatError("shorter than a DNS header")
    id_, flags, qdcount, _, _, _ = HEADER.unpack_from(data)
    if flags & QR:
        raise FormatError("a response, not a query")
    if qdcount != 1:
        raise FormatError(f"{qdcount} questions (one is answered)")
    labels = []
    offset = HEADER.size
    while True:
        if offset >= len(data):
            raise FormatError("the question's name runs past the message")
        length = data[offset]
        if length & 0xC0:  # a pointer (nothing before a question to point at) or reserved
            raise FormatError("a compressed or reserved label in the question")
        offset += 1
        if length == 0:
            break
        labels.append(data[offset : offset + length])
        offset += length
        if offset - HEADER.size > _MAX_NAME:
            raise FormatError("the question's name is longer than 255 bytes")
    end = offset + _QUESTION_TAIL.size
    if end > len(data):
        raise FormatError("the question has no type and class")
    qtype, qclass = _QUESTION_TAIL.unpack_from(data, offset)
    name = b".".join(labels).lower().decode("latin-1")
    return Query(id_, flags, name, qtype, qclass, data[HEADER.size : end])


def error_for(data: bytes, rcode: int) -> bytes | None:
    """An answer carrying only `rcode` to a message that could not be read as a query (its id
    and opcode kept), or None when even its header is missing or it is itself a response."""
    if len(data) < HEADER.size:
        return None
    id_, flags = struct.unpack_from("!HH", data)
    if flags & QR:
        return None  # never answer an answer: two servers would bounce it forever
    return HEADER.pack(id_, QR | (flags & (_OPCODE | RD)) | RA | rcode, 0, 0, 0, 0)


def reply(
    query: Query,
    rcode: int = NOERROR,
    addresses: Sequence[str] = (),
    ttl: int = 0,
    authoritative: bool = False,
    limit: int = UDP_LIMIT,
) -> bytes:
    """The answer to `query`: `rcode`, and a record for each of `addresses` (A or AAAA by its
    family) that fits in `limit` bytes; a name with more addresses than fit gets the first."""
    records = []
    size = HEADER.size + len(query.question)
    for address in addresses:
        packed = ipaddress.ip_address(address).packed
        rtype = A if len(packed) == 4 else AAAA
        record = _RECORD.pack(_NAME_AT_QUESTION, rtype, IN, ttl, len(packed)) + packed
        if size + len(record) > limit:
            break
        size += len(record)
        records.append(record)
    flags = QR | (query.flags & (_OPCODE | RD)) | RA | rcode | (AA if authoritative else 0)
    header = HEADER.pack(query.id, flags, 1, len(records), 0, 0)
    return b"".join((header, query.question, *records))
