"""glibc malloc settings for a process that moves large buffers all day.

The TLS layer (asyncio's and uvloop's SSL protocols over `ssl.MemoryBIO`) allocates a buffer of
up to 256 KiB for every read and write it encrypts or decrypts. Above glibc's mmap threshold
(128 KiB until its dynamic adjustment kicks in) and with the default trim threshold, such
buffers go back to the kernel when freed and come back as fresh zeroed pages: page faults and
page clearing took a third of an mTLS sidecar's CPU in `perf`. Keeping them in the heap (an mmap
threshold of 4 MiB, a trim threshold of 16 MiB) costs at most a few MiB of resident memory and
roughly doubled bulk throughput through an mTLS pair on the bench machine
(bench/README.md). Other C libraries: nothing is done.

Idle connections do not pay for it: with 3,000 idle mTLS connections through a pair
(`python -m bench.memprobe --mtls`), each sidecar's resident memory per connection was the
same with these settings and with glibc's defaults (within 0.5 KB of 24-29 KB), and so was
the free memory malloc kept (under 1 KB per connection either way): what an idle connection
holds is small objects in the heap, which neither threshold touches.

Once the sidecar serves, `release()` returns the pages that start-up freed inside the heap.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("sidecar.malloc")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024


def tune() -> bool:
    """Apply the settings above; False where the C library is not glibc (or refuses).

    `mallopt` is looked up among the symbols the process has loaded (`CDLL(None)`: the C library
    is one of them) rather than through `ctypes.util.find_library("c")`, which imports
    `tempfile`, `shutil` (and with it `bz2`, `lzma`, `zlib`) and runs `ldconfig`: ~0.7 MB of
    resident memory that the sidecar kept for a lookup made once.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug("event=malloc_tuned applied=%s", done)
    return done


def release() -> bool:
    """Give the free pages inside glibc's heap back to the kernel, once start-up is over.

    Start-up leaves holes in the heap: read buffers of every imported module's byte code, the
    parsed YAML, certificates, freed once used. The trim threshold above only ever returns the
    top of the heap, so ~1.2 MB of free pages stayed resident in every sidecar (measured with
    `mallinfo2` and `smaps`, bench/README.md); `malloc_trim(0)` returns every whole free page
    (MADV_DONTNEED) and keeps what is in use where it is. The high-water mark of start-up stays
    what it was, but what traffic allocates afterwards reuses those pages before it grows the
    process past it. False where the C library is not glibc.
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    released = bool(malloc_trim(0))
    log.debug("event=malloc_trimmed released=%s", released)
    return True
