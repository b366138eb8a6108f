"""OpenSSL's libssl as the ssl module loaded it, for the calls the ssl module does not offer.

Two modules call it through ctypes: `tls_transport` (a one-way close_notify, read-ahead, write
buffers, sessions shared as OpenSSL holds them) and `tls_handoff` (the key log and session
ticket callbacks, the checks before a connection's records become ours). Both reach OpenSSL's
objects through the ssl module's own (`PyObject_HEAD; PyObject *Socket; SSL *ssl;` in CPython
3.8 to 3.13), so both stop where that layout is not known.
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def libssl() -> ctypes.CDLL | None:
    """The library `_ssl` is linked against (libssl is among its dependencies, so its symbols
    resolve through `_ssl`'s own file), with errno kept for the callers that report it; None
    outside CPython 3.8-3.13, or without `_ssl`."""
    if not (3, 8) <= sys.version_info[:2] <= (3, 13):
        return None
    try:
        import _ssl

        return ctypes.CDLL(_ssl.__file__, use_errno=True)
    except (OSError, ImportError):
        return None
