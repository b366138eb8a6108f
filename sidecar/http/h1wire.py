"""HTTP/1.1 on the wire, sans-I/O: a strict request parser, a response parser and serialisers.

The parsers are fed bytes and hand back events: a head (`Request` / `Response`), body chunks
(`bytes`), `End` (with the trailers, if any) and `Closed`. They do no I/O and keep no more state
than framing needs, so `sidecar.http.h1` drives them from `data_received`.

Why our own and not h11: h11 costs ~170 Python calls per request on each end (bench/README.md,
"Where the time goes"); here a head is checked whole by one regex pass over the bytes (start
line, every field line, no control characters), then split into names and values by bytes
methods (the names lower-cased), and the framing headers are looked up in the list of names,
not by walking the fields. Only a head that the one regex refuses goes through the checks one
by one, to say what is wrong with it.

Strictness is the point of a proxy's parser: a message the next hop could read differently is how
requests get smuggled. A request is refused (`ProtocolError`, with the status to answer) for
Content-Length with Transfer-Encoding, a repeated, listed or non-decimal Content-Length,
Transfer-Encoding on HTTP/1.0 or other than `chunked` alone (501), obs-fold, bare CR or LF,
control characters, field names that are not tokens, a missing or repeated Host on HTTP/1.1, more
fields than the limit or a head over the size limit (431), an unknown HTTP version (505), and
chunk sizes or chunk lines that are malformed or absurd. Responses are held to the same field
syntax, since they are forwarded too.
"""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Final, NoReturn

from sidecar import defaults

Headers = list[tuple[bytes, bytes]]

# The repeats in the head regexes are possessive (`++`, `*+`: what they took is never given
# back): what follows each of them cannot start with a character it takes (a token is followed
# by a space, a colon, `=`, `;` or blanks; a value or reason by CR; a field line by CRLF), so
# giving back could never make a match, and not keeping the places to go back to costs less
# (~900 instructions for a request head, ~1,700 for a response head).
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]++"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*+))?")
# The field lines of a head, each preceded by CRLF, and the CRLF that ends the last line: a
# token, a colon, a value of visible characters, blanks and obs-text (no control character but
# HTAB, so no bare CR or LF either). The value's class is written as what it takes, not as what
# it refuses (`[^\x00-\x08\x0a-\x1f\x7f]`, the same bytes): sre tests a negated class one
# step more per byte (~800 instructions for a request head).
_FIELD_LINES = rb"(?:\r\n" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*+)*+\r\n"
# A whole head in one pass: start line (a request's version 1.0 or 1.1 only, captured as
# `Request.version` says it), then the field lines (a group: the fields are split from it).
_REQUEST_HEAD = re.compile(
    rb"(" + _TOKEN + rb") ([\x21-\x7e]++) HTTP/(1\.[01])(" + _FIELD_LINES + rb")"
)
_RESPONSE_HEAD = re.compile(_STATUS_LINE.pattern + rb"(" + _FIELD_LINES + rb")")
_FIELDS = re.compile(_FIELD_LINES)
# A field's name: `map(_NAME, headers)` lists the names in one C-level pass.
_NAME = itemgetter(0)
# A Content-Length value (blanks stripped) longer than this is refused: at most 18 digits is an
# int64 whatever the digits.
_MAX_LENGTH_DIGITS: Final = 18
# Control characters other than HTAB, CR and LF (CR and LF are counted against the line ends).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)

# What is left after a message or a chunk is copied when it is this small; a larger rest goes
# into a bytearray whose front is dropped in place (no copy per message or chunk).
_SMALL_REST: Final = 4096

# Body framing, as the parsers track it.
_NO_BODY: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UNTIL_EOF: Final = 3
# `Request.framing` of a request without a body (sidecar.http.h1 gives it the shared empty one).
BODYLESS: Final = _NO_BODY


class ProtocolError(Exception):
    """A message this codec refuses. `status` is what a server answers to it (400, 431, 501,
    505); the connection cannot be trusted after it and is closed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Request:
    """A request head. Field names are lower-case; wire order and repeats are kept.

    Built by `parse_request_head`, which sets every attribute: no `__init__`, a Python call
    fewer per request."""

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "keep_alive",
        "expect_continue",
        "upgrade",
        "framing",
        "length",
    )

    method: bytes
    target: bytes
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers
    keep_alive: bool  # False: close after the response (1.0, close)
    expect_continue: bool
    upgrade: bytes | None  # the protocol asked for (Connection: upgrade)
    framing: int
    length: int  # of a Content-Length body


class Response:
    """A response head (an informational one when 100 <= status < 200). Built by
    `parse_response_head`, which sets every attribute (no `__init__`, as for `Request`)."""

    __slots__ = ("status", "version", "headers", "reason", "keep_alive", "framing", "length")

    status: int
    version: bytes
    headers: Headers
    reason: bytes
    keep_alive: bool
    framing: int  # what the head says; no body for HEAD, 1xx, 204, 304
    length: int


class End:
    """The end of a message's body, with its trailers (None when there were none)."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: Headers | None = None) -> None:
        self.trailers = trailers


class Closed:
    """The peer closed its side. `complete` is False when it did so inside a message."""

    __slots__ = ("complete",)

    def __init__(self, complete: bool) -> None:
        self.complete = complete


Event = Request | Response | bytes | End | Closed

_END: Final = End()  # the usual end: no trailers (immutable in practice, so shared)
# The same, public: sidecar.http.h1 tells by identity (`event is END`) that a read ended its
# response without trailers.
END: Final = _END


def _fields(fields: bytes, max_fields: int) -> tuple[list[bytes], Headers]:
    """The names (lower-case) and the (name, value) pairs of field lines already checked
    (`_FIELD_LINES`), in wire order. `fields` is the field lines each preceded by CRLF. The
    names are what the framing checks look in (`b"host" in names`, a C-level compare or two):
    a search of the lower-cased head for `\\nhost:` cost more (~2,500 instructions a search).

    As the lines were checked, the split only says where a line's parts are, not what they may
    hold: the lines lie between CRLFs (no bare CR or LF: the first and last pieces are empty),
    a name ends at a line's first colon (a token has none), and the value is what follows it
    between blanks. Bytes methods do that at C level, in 13-17 % less time than the regex pass
    that found names and values before (`findall`; two to five fields, timed)."""
    lines = fields.split(b"\r\n")
    if len(lines) - 2 > max_fields:
        raise ProtocolError(f"{len(lines) - 2} header fields, more than {max_fields}", 431)
    headers = []
    for line in lines[1:-1]:
        name, _, value = line.partition(b":")
        headers.append((name.lower(), value.strip(b" \t")))
    return [*map(_NAME, headers)], headers


def _check_chars(head: bytes, what: str) -> None:
    """Refuse bare CR, bare LF and control characters other than HTAB (a head that the one-pass
    regex refused, or trailers)."""
    lines = head.count(b"\r\n")
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise ProtocolError(f"a bare CR or LF in the {what}")
    if _CONTROL.search(head) is not None:
        raise ProtocolError(f"a control character in the {what}")


def _values(headers: Headers, name: bytes) -> list[bytes]:
    """The values of field `name` (lower-case), in order."""
    return [v for k, v in headers if k == name]


def _tokens(values: list[bytes]) -> list[bytes]:
    """A comma-separated list (RFC 9110 5.6.1), lower-cased, empty elements dropped."""
    return [t.strip(b" \t").lower() for v in values for t in v.split(b",") if t.strip(b" \t")]


def _content_length(names: list[bytes], headers: Headers) -> int:
    """The one Content-Length of a head's fields (`names` has it at least once): a decimal of at
    most `_MAX_LENGTH_DIGITS` digits (`bytes.isdigit` is ASCII digits only)."""
    if names.count(b"content-length") > 1:
        raise ProtocolError("Content-Length given more than once")
    value = headers[names.index(b"content-length")][1]
    if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
        raise ProtocolError("Content-Length is not a decimal length")
    return int(value)


def _request_head_problem(head: bytes) -> NoReturn:
    """What is wrong with a head `_REQUEST_HEAD` refused: the checks one by one, in order."""
    _check_chars(head, "request head")
    match = _REQUEST_LINE.fullmatch(head, 0, head.find(b"\r\n"))
    if match is None:
        raise ProtocolError("a malformed request line")
    major, minor = match.group(3, 4)
    if major != b"1" or minor not in (b"1", b"0"):
        raise ProtocolError(f"unsupported version HTTP/{major.decode()}.{minor.decode()}", 505)
    # Characters and start line are right, so a field line is what the one pass refused.
    raise ProtocolError("a malformed field line in the request head (obs-fold, bad name)")


def _response_head_problem(head: bytes) -> NoReturn:
    """What is wrong with a head `_RESPONSE_HEAD` refused: the checks one by one, in order."""
    _check_chars(head, "response head")
    if _STATUS_LINE.fullmatch(head, 0, head.find(b"\r\n")) is None:
        raise ProtocolError("a malformed status line")
    raise ProtocolError("a malformed field line in the response head (obs-fold, bad name)")


def parse_request_head(head: bytes, max_fields: int) -> Request:
    """Parse and check one request head (`head` ends with the CRLF of its last line)."""
    match = _REQUEST_HEAD.fullmatch(head)
    if match is None:
        _request_head_problem(head)
    method, target, version, fields = match.groups()
    names, headers = _fields(fields, max_fields)
    request = Request()
    request.method = method
    request.target = target
    request.version = version
    request.headers = headers
    request.keep_alive = version == b"1.1"
    request.expect_continue = False
    request.upgrade = None
    request.framing = _NO_BODY
    request.length = 0
    if b"content-length" in names:
        if b"transfer-encoding" in names:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        request.length = _content_length(names, headers)
        request.framing = _LENGTH
    elif b"transfer-encoding" in names:
        if version == b"1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if _tokens(_values(headers, b"transfer-encoding")) != [b"chunked"]:
            raise ProtocolError("a transfer coding other than chunked", 501)
        request.framing = _CHUNKED
    hosts = names.count(b"host")
    if hosts != 1 and (hosts > 1 or version == b"1.1"):
        raise ProtocolError("HTTP/1.1 needs exactly one Host")
    if b"connection" in names:
        connection = _tokens(_values(headers, b"connection"))
        if b"close" in connection:
            request.keep_alive = False
        if b"upgrade" in connection and b"upgrade" in names:
            upgrade = _tokens(_values(headers, b"upgrade"))
            request.upgrade = upgrade[0] if upgrade else None
    if b"expect" in names:
        request.expect_continue = b"100-continue" in _tokens(_values(headers, b"expect"))
    return request


# What a response head says, in `Response`'s order: status, version, headers, reason, keep_alive,
# framing, length.
ResponseFields = tuple[int, bytes, Headers, bytes, bool, int, int]


def response_fields(head: bytes, max_fields: int) -> ResponseFields:
    """Parse and check one response head; what it says as a tuple in `Response`'s order, its
    framing as the head says it (the parser knows when there is no body whatever it says). A
    tuple, not a `Response`: `ResponseParser.answer_alone` reads the usual answer from it, with
    no object made and no attributes written and read back."""
    match = _RESPONSE_HEAD.fullmatch(head)
    if match is None:
        _response_head_problem(head)
    minor, status, reason, fields = match.groups()
    names, headers = _fields(fields, max_fields)
    keep_alive = minor == b"1"
    framing = _UNTIL_EOF
    length = 0
    if b"connection" in names and b"close" in _tokens(_values(headers, b"connection")):
        keep_alive = False
    if b"content-length" in names:
        if b"transfer-encoding" in names:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        length = _content_length(names, headers)
        framing = _LENGTH
    elif b"transfer-encoding" in names:
        if _tokens(_values(headers, b"transfer-encoding")) != [b"chunked"]:
            raise ProtocolError("a transfer coding other than chunked", 501)
        framing = _CHUNKED
    version = b"1.1" if minor == b"1" else b"1.0"
    return int(status), version, headers, reason or b"", keep_alive, framing, length


def _response(fields: ResponseFields) -> Response:
    response = Response()
    (
        response.status,
        response.version,
        response.headers,
        response.reason,
        response.keep_alive,
        response.framing,
        response.length,
    ) = fields
    return response


def parse_response_head(head: bytes, max_fields: int) -> Response:
    """Parse and check one response head (`response_fields`, as a `Response`)."""
    return _response(response_fields(head, max_fields))


class _Parser:
    """Framing shared by both directions: a body by length, chunked or until EOF, then End.

    After a message ends the parser pauses until its owner calls `next_cycle`: what follows is
    the next (pipelined) message, or a tunnel's first bytes (`trailing`)."""

    def __init__(self, max_head_bytes: int, max_fields: int) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_fields = max_fields
        # Bytes received and not parsed yet. Public so that an owner can see, without a call,
        # whether anything of a next message is here (sidecar.http.h1 does, once per message).
        self.buf: bytes | bytearray = b""
        self._scanned = 0  # how far the search for the end of a head has gone
        self._framing = _NO_BODY
        self._remaining = 0  # of the current Content-Length body or chunk
        self._in_body = False
        self._chunk_end = False  # the CRLF after a chunk's data is next
        self._trailers = False  # the trailer section is next
        self.eof = False  # the peer has closed its side
        self.paused = False

    @property
    def trailing(self) -> bytes:
        """Bytes received after the last message: the start of a tunnel after an upgrade."""
        return bytes(self.buf)

    @property
    def buffered(self) -> int:
        return len(self.buf)

    @property
    def idle(self) -> bool:
        """Between messages, with nothing of the next one read."""
        return not self._in_body and not self.buf

    def receive(self, data: bytes) -> list[Event]:
        """Bytes from the peer; the events they complete (none while paused). `receive(b"")`
        parses what is buffered: the loop is here rather than in a method of its own, a call
        fewer per read."""
        if data:
            buf = self.buf
            if not buf:
                self.buf = data
            else:
                if type(buf) is bytes:
                    buf = self.buf = bytearray(buf)
                buf += data
        out: list[Event] = []
        while not self.paused:
            if self._in_body:
                if not (self._chunked(out) if self._framing == _CHUNKED else self._body(out)):
                    break
            elif not self.buf:
                if self.eof:
                    out.append(Closed(True))
                    self.paused = True
                break
            elif not self._head(out):
                break
        return out

    def receive_eof(self) -> list[Event]:
        self.eof = True
        return self.receive(b"")

    def next_cycle(self) -> list[Event]:
        """Resume after a message: parse what is already buffered of the next one."""
        self.paused = False
        if not self.buf and not self.eof:
            return []  # the usual case: nothing of a next message yet
        return self.receive(b"")

    def _consume(self, n: int) -> None:
        """Drop the first `n` bytes. Many messages or chunks in one read are taken one by one,
        so the rest is not copied each time: a bytearray drops its front in place."""
        buf = self.buf
        if n >= len(buf):
            self.buf = b""
        elif type(buf) is bytearray:
            del buf[:n]
        elif len(buf) - n <= _SMALL_REST:
            self.buf = buf[n:]
        else:
            buf = self.buf = bytearray(buf)
            del buf[:n]

    def _take_head(self) -> bytes | None:
        """The head up to its blank line (the CRLF of its last line kept), or None for more."""
        buf = self.buf
        if type(buf) is bytes and len(buf) <= _SMALL_REST and not self._scanned:
            # The usual head: read whole, little or nothing after it (so the rest is copied), and
            # searched for only within the size limit (a blank line found is within it).
            end = buf.find(b"\r\n\r\n", 0, self.max_head_bytes)
            if end >= 0:
                self.buf = buf[end + 4 :]
                return buf[: end + 2]
        scanned = self._scanned
        end = buf.find(b"\r\n\r\n", scanned - 3 if scanned > 3 else 0)
        if end < 0:
            if len(buf) > self.max_head_bytes:
                raise ProtocolError("headers too large", 431)
            # A head that ends in bare LFs would never be found: refuse it now (and a bare CR or
            # LF anywhere, counting only what is new since the last look).
            start = scanned - 1 if scanned and buf[scanned - 1] == 13 else scanned  # a CR's LF
            lf = buf.count(b"\n", start)
            cr = buf.count(b"\r", start) - (buf[-1:] == b"\r")  # a last CR may meet its LF
            if lf != buf.count(b"\r\n", start) or cr != lf:
                raise ProtocolError("a bare CR or LF in the head")
            if self.eof:
                raise ProtocolError("connection closed inside a head")
            self._scanned = len(buf)
            return None
        if end + 4 > self.max_head_bytes:
            raise ProtocolError("headers too large", 431)
        head = bytes(buf[: end + 2])
        if type(buf) is bytes and len(buf) - end - 4 <= _SMALL_REST:
            self.buf = buf[end + 4 :]  # the usual head: read whole, little or nothing after it
        else:
            self._consume(end + 4)
        self._scanned = 0
        return head

    def _head(self, out: list[Event]) -> bool:
        raise NotImplementedError

    def _start_body(self, out: list[Event], framing: int, length: int) -> None:
        if framing == _NO_BODY or (framing == _LENGTH and not length):
            out.append(_END)
            self.paused = True
        elif framing == _LENGTH and length <= len(self.buf):
            # The whole body came with its head (a small message): emitted here with its end,
            # not through `_body` and `_take` on the next turn of the loop.
            buf = self.buf
            if len(buf) == length:
                out.append(buf if type(buf) is bytes else bytes(buf))
                self.buf = b""
            else:
                out.append(bytes(buf[:length]))
                self._consume(length)
            out.append(_END)
            self.paused = True
        else:
            self._framing, self._remaining = framing, length
            self._in_body = True

    def _ended(self, out: list[Event], event: Event) -> bool:
        self._in_body = False
        self.paused = True
        out.append(event)
        return True

    def _take(self, out: list[Event], n: int) -> int:
        """Emit up to `n` bytes of body from the buffer; returns how many are still due."""
        buf = self.buf
        size = len(buf)
        if size <= n:
            out.append(buf if type(buf) is bytes else bytes(buf))
            self.buf = b""
            return n - size
        out.append(bytes(buf[:n]))
        self._consume(n)
        return 0

    def _body(self, out: list[Event]) -> bool:
        """Emit what the buffer holds of a length or until-EOF body; False for more bytes."""
        if not self.buf:
            if self.eof:
                return self._ended(out, _END if self._framing == _UNTIL_EOF else Closed(False))
            return False
        if self._framing == _UNTIL_EOF:
            self._take(out, len(self.buf))
            return True
        self._remaining = self._take(out, self._remaining)
        if not self._remaining:
            self._ended(out, _END)
        return True

    def _chunked(self, out: list[Event]) -> bool:
        buf = self.buf
        if not buf:
            return self._cut(out)
        if self._remaining:
            self._remaining = self._take(out, self._remaining)
            return True
        if self._chunk_end:
            if buf[:2] == b"\r\n":
                self._consume(2)
                self._chunk_end = False
                return True
            if buf == b"\r":
                return self._cut(out)
            raise ProtocolError("chunk data not followed by CRLF")
        if self._trailers:
            return self._trailer_section(out)
        eol = buf.find(b"\r\n", 0, defaults.MAX_CHUNK_LINE + 2)
        if eol < 0:
            if len(buf) > defaults.MAX_CHUNK_LINE or 10 in buf:  # an LF (see head_bytes)
                raise ProtocolError("a malformed or too long chunk-size line")
            return self._cut(out)
        line = bytes(buf[:eol])
        size, semicolon, ext = line.partition(b";")
        size = size.rstrip(b" \t")
        if _HEX.fullmatch(size) is None:
            raise ProtocolError("a malformed or absurd chunk size")
        if semicolon and _CHUNK_EXT.fullmatch(line, len(size)) is None:
            raise ProtocolError("a malformed chunk extension")  # extensions are ignored
        self._consume(eol + 2)
        self._remaining = int(size, 16)
        if self._remaining:
            self._chunk_end = True
        else:
            self._trailers = True
        return True

    def _trailer_section(self, out: list[Event]) -> bool:
        buf = self.buf
        if buf[:2] == b"\r\n":
            self._consume(2)
            self._trailers = False
            return self._ended(out, _END)
        if buf == b"\r" or (self.eof and buf.find(b"\r\n\r\n") < 0):
            return self._cut(out)
        try:
            block = self._take_head()
        except ProtocolError as exc:
            raise ProtocolError(f"{exc} (trailers)", exc.status) from None
        if block is None:
            return self._cut(out)
        _check_chars(block, "trailers")
        fields = b"\r\n" + block
        lower = fields.lower()
        if b"\r\ncontent-length:" in lower or b"\r\ntransfer-encoding:" in lower:
            raise ProtocolError("Content-Length or Transfer-Encoding in trailers")
        if _FIELDS.fullmatch(fields) is None:
            raise ProtocolError("a malformed field line in the trailers (obs-fold, bad name)")
        _, trailers = _fields(fields, self.max_fields)
        self._trailers = False
        return self._ended(out, End(trailers))

    def _cut(self, out: list[Event]) -> bool:
        """Out of bytes inside a chunked body: wait, or report the cut at EOF."""
        if self.eof:
            self._chunk_end = self._trailers = False
            return self._ended(out, Closed(False))
        return False


class RequestParser(_Parser):
    """The server end: requests from a client."""

    def __init__(
        self,
        max_head_bytes: int = defaults.MAX_REQUEST_HEADERS_BYTES,
        max_fields: int = defaults.MAX_REQUEST_HEADERS_COUNT,
    ) -> None:
        super().__init__(max_head_bytes, max_fields)

    def request_alone(self, data: bytes) -> Request | None:
        """The usual read, taken whole: one request head and nothing else, while the parser
        waits for a request with nothing buffered. The head is parsed and refused as `receive`
        would; a request whose body ended with its head (none, or Content-Length: 0) leaves the
        parser `paused`, as after `End`, and one with a body to come leaves it in that body.
        So the events `receive` would have handed back are the request, then `End` if `paused`.
        None, with nothing taken, for any other read (`receive` takes it then). No event list
        and no turn of the parsing loop, nor the calls of its steps (`_head`, `_take_head`,
        `_start_body`): the head is searched for within the size limit, as `_take_head` does,
        and empty lines before it are left to `_head`."""
        if self.buf or self.paused or self._in_body or data[:2] == b"\r\n":
            return None
        end = data.find(b"\r\n\r\n", 0, self.max_head_bytes)
        if end < 0 or end + 4 != len(data):
            return None
        request = parse_request_head(data[: end + 2], self.max_fields)
        if request.framing == _NO_BODY:
            self.paused = True
        else:
            self._start_body([], request.framing, request.length)  # (its `End`: `paused`)
        return request

    def _head(self, out: list[Event]) -> bool:
        buf = self.buf
        if buf.startswith(b"\r\n"):  # RFC 9112 2.2: empty lines before a request line are ignored
            rest = buf.lstrip(b"\r\n")  # all at once: one by one would copy the rest each time
            empty = len(buf) - len(rest)
            pairs = empty // 2
            if buf[: 2 * pairs] != b"\r\n" * pairs or (empty % 2 and (rest or buf[-1:] != b"\r")):
                raise ProtocolError("a bare CR or LF before the request line")
            if empty % 2:  # a CR whose LF has not come yet
                self.buf = b"\r"
                return False
            self._consume(empty)
            buf = self.buf
        if not buf:
            return True
        head = self._take_head()
        if head is None:
            return False
        request = parse_request_head(head, self.max_fields)
        out.append(request)
        self._start_body(out, request.framing, request.length)
        return True


class ResponseParser(_Parser):
    """The client end: responses from a server. `expect(method)` is called before each request
    is sent: a response to HEAD has no body, and a 2xx to CONNECT or a 101 ends HTTP/1.1 on the
    connection (the parser pauses and stays paused; what follows is `trailing`)."""

    def __init__(
        self,
        max_head_bytes: int = defaults.MAX_RESPONSE_HEADERS_BYTES,
        max_fields: int = defaults.MAX_RESPONSE_HEADERS_COUNT,
    ) -> None:
        super().__init__(max_head_bytes, max_fields)
        self.method = b"GET"
        self.keep_alive = True  # False once a response says the connection closes after it
        self.switched = False

    def expect(self, method: bytes) -> None:
        self.method = method

    def answer_alone(self, data: bytes) -> tuple[int, Headers, bytes] | list[Event] | None:
        """The usual read, taken whole: a final answer's head and all of its Content-Length body
        (not empty) and nothing else, while the parser waits for an answer with nothing
        buffered. Handed back as its status, its fields and its body, the parser `paused` as
        after `End`: the events `receive` would have given are the head, the body and `End` (no
        trailers). No `Response` is made for the head (`response_fields`), no event list, no
        turn of the parsing loop, nor the calls of its steps. Any other read
        whose head is here whole is parsed once and handed on as `receive`'s events (`_answer`
        says what it means); None, with nothing taken, for a read without a whole head (within
        the size limit) or while anything is buffered (`receive` takes it then). A head is
        refused (`ProtocolError`) as `receive` would refuse it."""
        if self.buf or self.paused or self._in_body:
            return None
        end = data.find(b"\r\n\r\n", 0, self.max_head_bytes)
        if end < 0:
            return None
        fields = response_fields(data[: end + 2], self.max_fields)
        status, _, headers, _, keep_alive, _, length = fields
        # (A length that is not 0 is a Content-Length body's: the framing need not be looked at.)
        if (
            length == len(data) - end - 4
            and length
            and 200 <= status
            and status != 204
            and status != 304
            and self.method not in (b"HEAD", b"CONNECT")
        ):
            if not keep_alive:
                self.keep_alive = False
            self.paused = True
            return status, headers, data[end + 4 :]
        self.buf = data[end + 4 :]
        response = _response(fields)
        out: list[Event] = [response]
        self._answer(out, response)
        return out if self.paused else out + self.receive(b"")

    def _head(self, out: list[Event]) -> bool:
        # `_take_head`'s usual case, written out here (a call fewer per response): the head read
        # whole, little or nothing after it, searched for within the size limit.
        buf = self.buf
        end = -1
        if type(buf) is bytes and len(buf) <= _SMALL_REST and not self._scanned:
            end = buf.find(b"\r\n\r\n", 0, self.max_head_bytes)
        if end >= 0:
            self.buf = buf[end + 4 :]
            head = buf[: end + 2]
        else:
            head = self._take_head()
            if head is None:
                return False
        response = parse_response_head(head, self.max_fields)
        out.append(response)
        self._answer(out, response)
        return True

    def _answer(self, out: list[Event], response: Response) -> None:
        """What a parsed head (appended to `out`) means for what follows it in `buf`: a 1xx is
        followed by the final answer, a switch by a tunnel's bytes; otherwise its body, as
        the head, the request's method and the status frame it."""
        status = response.status
        if status < 200:
            if status == 101:
                self.switched = self.paused = True
            return  # the final response follows
        if self.method == b"CONNECT" and status < 300:
            self.switched = self.paused = True
            return
        if not response.keep_alive:
            self.keep_alive = False
        if self.method == b"HEAD" or status in (204, 304):
            self._start_body(out, _NO_BODY, 0)
        else:
            framing = response.framing
            if framing == _LENGTH:
                rest = self.buf
                if response.length == len(rest) and rest and type(rest) is bytes:
                    # Its whole body came with the head, and nothing after it. Emitted here
                    # with its end (`_start_body`'s case, a call fewer).
                    out += (rest, _END)
                    self.buf = b""
                    self.paused = True
                    return
            elif framing == _UNTIL_EOF:
                self.keep_alive = False
            self._start_body(out, framing, response.length)


# -- serialisers -------------------------------------------------------------------------------

_SEP = b": "


def head_bytes(start: bytes, headers: Headers) -> bytes:
    """A start line and fields as one block of bytes, refused if a name or value would break a
    line (CR, LF or NUL: response splitting, a smuggled header). sidecar.http.h1 calls it with
    start lines it has ready (a status line made once per status), a call fewer per message
    than `request_head` and `response_head`."""
    out = b"\r\n".join([start, *map(_SEP.join, headers), b"\r\n"])
    lines = len(headers) + 2
    # `0 in out` looks for a NUL byte: `b"\0" in out` would first try its operand as an integer
    # and make (and drop) a TypeError, ~0.3 µs every time.
    if out.count(b"\n") != lines or out.count(b"\r") != lines or 0 in out:
        raise ProtocolError("CR, LF or NUL in a header to send")
    return out


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    return head_bytes(b"%s %s HTTP/1.1" % (method, target), headers)


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    return head_bytes(b"HTTP/1.1 %d %s" % (status, reason), headers)


def chunk(data: bytes) -> bytes:
    """One chunk; `data` must not be empty (a zero-size chunk is the last one)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    return head_bytes(b"0", trailers)
