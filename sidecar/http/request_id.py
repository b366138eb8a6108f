"""`x-request-id` values: random UUID-4 strings, drawn from the kernel in blocks.

Envoy gives every request without an `x-request-id` a random UUID-4; `uuid.uuid4()` does the
same but costs a getrandom(2) system call and a UUID object per request (1.4–1.8 % of a
sidecar's CPU, bench/README.md). Here one `os.urandom` call yields the random bits of 256 ids;
each id is 122 of those bits in UUID-4 form (version nibble 4, variant 10xx), so ids stay as
unique and as unpredictable as uuid4's — every bit comes from the kernel's CSPRNG, none from a
counter — at one system call per 256 requests. A forked child starts with an empty block of its
own, so two processes never hand out the same ids.
"""

from __future__ import annotations

import os

_IDS_PER_BLOCK = 256
_HEX_PER_ID = 32
# The variant nibble: two random bits under the fixed `10` (RFC 9562 4.1).
_VARIANT = {ord(c): b"89ab"[int(c, 16) & 3 : (int(c, 16) & 3) + 1] for c in "0123456789abcdef"}

_block = b""
_at = 0


def _forget() -> None:
    global _block, _at
    _block, _at = b"", 0


os.register_at_fork(after_in_child=_forget)


def new_request_id() -> bytes:
    """A fresh UUID-4 as 36 ASCII bytes (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`)."""
    global _block, _at
    at = _at
    if at >= len(_block):
        _block = os.urandom(_IDS_PER_BLOCK * _HEX_PER_ID // 2).hex().encode()
        at = 0
    _at = at + _HEX_PER_ID
    h = _block
    return b"%s-%s-4%s-%s%s-%s" % (
        h[at : at + 8],
        h[at + 8 : at + 12],
        h[at + 13 : at + 16],
        _VARIANT[h[at + 16]],
        h[at + 17 : at + 20],
        h[at + 20 : at + 32],
    )
