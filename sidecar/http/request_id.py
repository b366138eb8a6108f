"""`x-request-id` values: random UUID-4 strings, drawn from the kernel in blocks.

Envoy gives every request without an `x-request-id` a random UUID-4; `uuid.uuid4()` does the
same but costs a getrandom(2) system call and a UUID object per request (1.4–1.8 % of a
sidecar's CPU, bench/README.md). Here one `os.urandom` call yields the random bits of 256 ids;
each id is 122 of those bits in UUID-4 form (version nibble 4, variant 10xx), so ids stay as
unique and as unpredictable as uuid4's — every bit comes from the kernel's CSPRNG, none from a
counter — at one system call per 256 requests. A forked child starts with no ids of its own
in hand, so two processes never hand out the same ids.

The whole block is put in UUID form at once, by C-level calls over its hex (the version and
variant nibbles set by slice, the dashes put in by a `struct` split and a join): a request
takes a finished id off a list rather than slicing and formatting one of its own (a few
bytecodes a request instead of ~70).
"""

from __future__ import annotations

import os
import struct

_IDS_PER_BLOCK = 256
_HEX_PER_ID = 32
# The variant nibble: two random bits under the fixed `10` (RFC 9562 4.1).
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
# An id's 32 hex digits as the five groups of the UUID form (8-4-4-4-12).
_GROUPS = struct.Struct("8s4s4s4s12s")

# Ids drawn and not handed out yet.
_ids: list[bytes] = []


def _forget() -> None:
    _ids.clear()


os.register_at_fork(after_in_child=_forget)


def _draw() -> None:
    """A block of fresh ids into `_ids`."""
    digits = bytearray(os.urandom(_IDS_PER_BLOCK * _HEX_PER_ID // 2).hex().encode())
    digits[12::_HEX_PER_ID] = b"4" * _IDS_PER_BLOCK  # the version
    digits[16::_HEX_PER_ID] = digits[16::_HEX_PER_ID].translate(_VARIANT)
    _ids.extend(map(b"-".join, _GROUPS.iter_unpack(digits)))


def new_request_id() -> bytes:
    """A fresh UUID-4 as 36 ASCII bytes (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`)."""
    if not _ids:
        _draw()
    return _ids.pop()
