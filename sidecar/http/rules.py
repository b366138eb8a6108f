"""What a request head must be before the sidecar forwards it, whatever HTTP version it came in.

The HTTP/1.1 codec refuses a bad request line before a head exists; HTTP/2 carries the same
parts as pseudo-headers, which h2 checks for presence and order but not for content. A `:path`
of `nowhere`, `/a b` or `/a#b`, a `:method` with a space, or an `:authority` with a space or
userinfo would otherwise be written into the HTTP/1.1 request line or Host header toward the
app — a request the next hop parses differently (RFC 9113 8.3.1: such a request is malformed).
"""

from __future__ import annotations

from sidecar.http.exchange import RequestHead

# RFC 9110 5.6.2 tchar: what a method may be made of.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# RFC 3986 host (reg-name, IP literal) and port: unreserved, pct-encoded, sub-delims, ':[]'.
_AUTHORITY = frozenset(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-._~%!$&'()*+,;=:[]"
)


def request_problem(head: RequestHead) -> str | None:
    """Why the head must not be forwarded (a 400), or None."""
    if not head.method or not _TCHAR.issuperset(head.method):
        return "invalid method"
    if not _AUTHORITY.issuperset(head.authority):
        return "invalid authority"
    if head.method == b"CONNECT" and head.protocol is None:
        return None  # authority-form: no path
    path = head.path
    if path == b"*":
        return None if head.method == b"OPTIONS" else "asterisk path is only for OPTIONS"
    if path[:1] != b"/":
        return "path must begin with /"
    if b"#" in path or any(byte <= 0x20 or byte == 0x7F for byte in path):
        return "invalid character in path"
    return None
