"""What a request head must be before the sidecar forwards it, whatever HTTP version it came in.

The HTTP/1.1 codec refuses a bad request line before a head exists; HTTP/2 carries the same
parts as pseudo-headers, which h2 checks for presence and order but not for content. A `:path`
of `nowhere`, `/a b` or `/a#b`, a `:method` with a space, or an `:authority` with a space or
userinfo would otherwise be written into the HTTP/1.1 request line or Host header toward the
app — a request the next hop parses differently (RFC 9113 8.3.1: such a request is malformed).
"""

from __future__ import annotations

import re

from sidecar.http.exchange import RequestHead

# The repeats are possessive (`++`, `*+`): nothing that may follow one (a space, the end) is a
# byte it takes, so giving back could never make a match, and sre keeps no places to go back to.
# RFC 9110 5.6.2 token: what a method is made of.
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++")
# RFC 3986 host (reg-name, IP literal) and port: unreserved, pct-encoded, sub-delims, ':[]'.
_AUTHORITY = re.compile(rb"[0-9A-Za-z\-._~%!$&'()*+,;=:\[\]]*+")
# An origin-form path: no whitespace, control character, DEL or fragment. The class is written
# as the bytes it takes (not `[^\x00-\x20\x7f#]`, the same bytes): sre tests a negated class
# one step more per byte.
_PATH = re.compile(rb"/[\x21\x22\x24-\x7e\x80-\xff]*+")
# The three above in one pass over `method authority path`: none of them takes a space, so the
# spaces can only be the separators, and a match is each part matching its own pattern.
_USUAL = re.compile(b" ".join((_METHOD.pattern, _AUTHORITY.pattern, _PATH.pattern)))


def request_problem(head: RequestHead) -> str | None:
    """Why the head must not be forwarded (a 400), or None. It runs for every request: the
    usual head (an origin-form path, not CONNECT's authority form) is passed by one match of
    `_USUAL` (over the parts joined by `bytes.join`, ~500 instructions less than `%`
    formatting); any other is checked part by part, which also says what is wrong."""
    if (
        _USUAL.fullmatch(b" ".join((head.method, head.authority, head.path))) is not None
        and head.method != b"CONNECT"
    ):
        return None
    if _METHOD.fullmatch(head.method) is None:
        return "invalid method"
    if _AUTHORITY.fullmatch(head.authority) is None:
        return "invalid authority"
    if head.method == b"CONNECT" and head.protocol is None:
        # Authority form, no path (RFC 9113 8.5): the authority is the whole target.
        return None if head.authority else "CONNECT without an authority"
    path = head.path
    if path == b"*":
        return None if head.method == b"OPTIONS" else "asterisk path is only for OPTIONS"
    if path[:1] != b"/":
        return "path must begin with /"
    if _PATH.fullmatch(path) is None:
        return "invalid character in path"
    return None
