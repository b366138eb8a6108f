"""Received header blocks validated and normalised in one pass, as h2 does it.

h2 checks a received block in `H2Stream._process_received_headers`: `normalize_inbound_headers`
(cookie fields joined into one) and `validate_headers`, a pipeline of about eight chained
generators (illegal characters, empty names, TE, connection-specific fields, pseudo-header
fields, Host against :authority, empty :path). Every field resumes each generator in turn, about
a hundred Python calls for a gRPC request. `received_headers` applies the same rules, in the
same order (so the same error wins when a block breaks several), in one plain loop with no
Python calls for a valid field: names seen before are looked up in a table, the others go
through one compiled pattern; values are checked with `in` and indexing; a regular field the
peer indexed and that passed before is found in a set and not checked again. Only the error
paths call helpers (to build h2's exact messages). tests/test_h2validate.py compares it with h2
itself on random blocks, so that the two stay equivalent.
"""

from __future__ import annotations

import re

import h2.utilities
from h2.exceptions import ProtocolError
from hpack import HeaderTuple, NeverIndexedHeaderTuple

__all__ = ["received_headers"]

# What h2 rejects in a name (RFC 9113 section 8.2.1): 0x00-0x20, 0x41-0x5a (upper case),
# 0x7f-0xff, and a colon anywhere but first. Only a detector: the message comes from `_bad_name`,
# which looks at the characters in h2's order. (A one-class pattern; an alternation that also
# finds the colon is several times slower. `in` with an int, as for values below, is a memchr;
# with a bytes needle it is several times slower.)
_NAME_BAD = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]")
_WHITESPACE = frozenset((0x20, 0x09))

# Kinds of field name. A pseudo-header field's kind is its bit in the mask of those seen.
_REGULAR = 0
_TE = 1
_CONNECTION = 2
_HOST = 3
_COOKIE = 4  # only when cookie fields are joined: they are checked after the others, as one
_METHOD = 8
_SCHEME = 16
_AUTHORITY = 32
_PATH = 64
_STATUS = 128
_PROTOCOL = 256
_PSEUDO = {
    b":method": _METHOD,
    b":scheme": _SCHEME,
    b":authority": _AUTHORITY,
    b":path": _PATH,
    b":status": _STATUS,
    b":protocol": _PROTOCOL,
}
_REQUEST_ONLY = _SCHEME | _PATH | _AUTHORITY | _METHOD | _PROTOCOL

# Names that pass h2's character checks, so that the common ones need no pattern search: HPACK's
# static table and what gRPC sends. Any other name is searched with `_NAME_BAD`.
_COMMON_NAMES = (
    b"accept",
    b"accept-charset",
    b"accept-encoding",
    b"accept-language",
    b"accept-ranges",
    b"access-control-allow-origin",
    b"age",
    b"allow",
    b"authorization",
    b"cache-control",
    b"content-disposition",
    b"content-encoding",
    b"content-language",
    b"content-length",
    b"content-location",
    b"content-range",
    b"content-type",
    b"date",
    b"etag",
    b"expect",
    b"expires",
    b"from",
    b"if-match",
    b"if-modified-since",
    b"if-none-match",
    b"if-range",
    b"if-unmodified-since",
    b"last-modified",
    b"link",
    b"location",
    b"max-forwards",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"range",
    b"referer",
    b"refresh",
    b"retry-after",
    b"server",
    b"set-cookie",
    b"strict-transport-security",
    b"user-agent",
    b"vary",
    b"via",
    b"www-authenticate",
    b"grpc-accept-encoding",
    b"grpc-encoding",
    b"grpc-timeout",
    b"grpc-status",
    b"grpc-message",
    b"grpc-status-details-bin",
    b"grpc-previous-rpc-attempts",
    b"grpc-retry-pushback-ms",
    b"grpc-tags-bin",
    b"grpc-trace-bin",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"traceparent",
    b"tracestate",
)
_KINDS_PLAIN: dict[bytes, int] = dict.fromkeys(_COMMON_NAMES, _REGULAR)
_KINDS_PLAIN.update(_PSEUDO)
_KINDS_PLAIN.update(dict.fromkeys(h2.utilities.CONNECTION_HEADERS, _CONNECTION))
_KINDS_PLAIN.update({b"te": _TE, b"host": _HOST, b"cookie": _REGULAR})
_KINDS_JOINING = {**_KINDS_PLAIN, b"cookie": _COOKIE}

# Regular fields that passed the checks, as decoded (`HeaderTuple`s: fields the peer's encoder
# indexed, so likely to come again; the same entry of the decoder's dynamic table is the same
# object each time). Whether a field's name and value pass depends on them alone, so a field
# seen valid before needs one set lookup instead of the name and value checks: most of a
# gRPC block, where the rest are per-request values sent without indexing. Shared by all
# connections and bounded: past `_VALID_MAX`, forgotten all at once.
_VALID: set[tuple[bytes, bytes]] = set()
_VALID_MAX = 1024


def received_headers(
    headers: list,
    flags: h2.utilities.HeaderValidationFlags,
    validate: bool = True,
    normalize: bool = True,
) -> list:
    """What `h2_stream._process_received_headers(headers, flags, None)` returns, or raises.

    `headers` is a decoded block: a list of (name, value) tuples of bytes (HeaderTuple and
    NeverIndexedHeaderTuple included). `validate` and `normalize` are the H2Configuration's
    `validate_inbound_headers` and `normalize_inbound_headers`. The result is a new list holding
    the same field objects; with `normalize`, the cookie fields are replaced by one
    NeverIndexedHeaderTuple at the end, their values joined with "; ". An invalid block raises
    h2's ProtocolError with h2's message.
    """
    if headers.__class__ is not list:
        headers = list(headers)
    if not validate:
        if not normalize:
            return headers[:]
        return _joined(headers)
    kinds = _KINDS_JOINING if normalize else _KINDS_PLAIN
    trailer = flags.is_trailer
    response = flags.is_response_header
    request = not response and not trailer
    cookies = None
    seen = 0  # the pseudo-header fields, as a mask of their kinds
    regular = False  # a regular field seen: no pseudo-header field may follow
    method = authority = host = None
    valid = _VALID
    for header in headers:
        if header in valid:
            regular = True
            continue
        name = header[0]
        if name in kinds:
            kind = kinds[name]
            if kind == _COOKIE:  # checked once joined, after the other fields, as h2 does
                if cookies is None:
                    cookies = [header[1]]
                else:
                    cookies.append(header[1])
                continue
        elif _NAME_BAD.search(name) is not None or (0x3A in name and name.find(b":", 1) != -1):
            raise _bad_name(name)
        elif not name:
            kind = -1
        elif name[0] == 0x3A:
            kind = -2  # a pseudo-header field h2 does not know
        else:
            kind = _REGULAR
        value = header[1]
        if value and (
            0x00 in value
            or 0x0A in value
            or 0x0D in value
            or value[0] in _WHITESPACE
            or value[-1] in _WHITESPACE
        ):
            raise _bad_value(value)
        if kind == _REGULAR:
            regular = True
            if header.__class__ is HeaderTuple and name != b"cookie":
                if len(valid) >= _VALID_MAX:
                    valid.clear()
                valid.add(header)
        elif kind >= _METHOD:
            if seen & kind:
                raise ProtocolError(f"Received duplicate pseudo-header field {name!r}")
            seen |= kind
            if regular:
                raise ProtocolError(f"Received pseudo-header field out of sequence: {name!r}")
            if kind == _METHOD:
                method = value
            elif request:
                if kind == _AUTHORITY:
                    authority = value
                elif kind == _PATH and not value:
                    raise ProtocolError("An empty :path header is forbidden")
        elif kind == _TE:
            if value != b"trailers" and value.lower() != b"trailers":
                raise ProtocolError(f"Invalid value for TE header: {value!r}")
            regular = True
        elif kind == _HOST:
            if request:
                if host is not None:
                    raise ProtocolError("Request header block has multiple Host headers.")
                host = value
            regular = True
        elif kind == _CONNECTION:
            raise ProtocolError(f"Connection-specific header field present: {name!r}.")
        elif kind == -1:
            raise ProtocolError("Received header name with zero length.")
        elif regular:  # kind -2
            raise ProtocolError(f"Received pseudo-header field out of sequence: {name!r}")
        else:
            raise ProtocolError(f"Received custom pseudo-header field {name!r}")

    if cookies is not None:
        value = b"; ".join(cookies)
        if value and (
            0x00 in value
            or 0x0A in value
            or 0x0D in value
            or value[0] in _WHITESPACE
            or value[-1] in _WHITESPACE
        ):
            raise _bad_value(value)

    # The pseudo-header fields, as h2's _check_pseudo_header_field_acceptability takes them.
    if trailer and seen:
        _raise_pseudo(headers, method, flags)
    if response:
        if not seen & _STATUS or seen & _REQUEST_ONLY:
            _raise_pseudo(headers, method, flags)
    elif not trailer:
        if not seen & _METHOD or seen & _STATUS:
            _raise_pseudo(headers, method, flags)
        if method == b"CONNECT":
            if seen & _PROTOCOL:  # extended CONNECT (RFC 8441): the usual fields
                if seen & (_SCHEME | _PATH) != _SCHEME | _PATH:
                    _raise_pseudo(headers, method, flags)
            elif seen & (_SCHEME | _PATH):  # ordinary CONNECT: neither :scheme nor :path
                _raise_pseudo(headers, method, flags)
        elif seen & (_SCHEME | _PATH | _PROTOCOL) != _SCHEME | _PATH:
            _raise_pseudo(headers, method, flags)
        if authority is None:
            if host is None:
                raise ProtocolError(
                    "Request header block does not have an :authority or Host header."
                )
        elif host is not None and authority != host:
            raise ProtocolError(
                "Request header block has mismatched :authority and "
                f"Host headers: {authority!r} / {host!r}"
            )

    if cookies is None:
        return headers[:]
    return _joined(headers)


def _joined(headers: list) -> list:
    """The block with its cookie fields joined into one, last (h2's _combine_cookie_fields)."""
    out = []
    cookies = []
    for header in headers:
        if header[0] == b"cookie":
            cookies.append(header[1])
        else:
            out.append(header)
    if cookies:
        out.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(cookies)))
    return out


def _bad_name(name: bytes) -> ProtocolError:
    """h2's error for a name with a bad character (the first decides) or a colon past the first."""
    for c in name:
        if 0x41 <= c <= 0x5A:
            return ProtocolError(f"Received uppercase header name {name!r}.")
        if c <= 0x20 or c >= 0x7F:
            return ProtocolError(f"Illegal character '{chr(c)}' in header name: {name!r}")
    return ProtocolError(f"Illegal character ':' in header name: {name!r}")


def _bad_value(value: bytes) -> ProtocolError:
    """h2's error for a value with NUL, CR or LF (the first decides) or surrounding whitespace."""
    for c in value:
        if c == 0 or c == 0x0A or c == 0x0D:
            return ProtocolError(f"Illegal character '{chr(c)}' in header value: {value!r}")
    return ProtocolError(f"Received header value surrounded by whitespace {value!r}")


def _raise_pseudo(
    headers: list, method: bytes | None, flags: h2.utilities.HeaderValidationFlags
) -> None:
    """Raise h2's error for pseudo-header fields its final check rejects.

    The set is rebuilt in the block's order (every field has passed the per-field checks, so the
    pseudo-header names are known and distinct), so that h2's message shows it as h2 would.
    """
    seen = set()
    for header in headers:
        if header[0][:1] == b":":
            seen.add(header[0])
    check = getattr(h2.utilities, "_check_pseudo_header_field_acceptability", None)
    if check is not None:
        check(seen, method, flags)
    raise ProtocolError(f"Invalid pseudo-header fields {seen}")
