"""Back a running process's heap with huge pages: MADV_COLLAPSE (Linux 6.1) through
process_madvise(2), on each 2 MiB-aligned stretch of its [heap] and anonymous read-write
mappings. Root (or the process's owner with CAP_SYS_NICE).

    python collapse_heap.py PID

Prints what each mapping gave (bytes collapsed, or the error), then AnonHugePages. Thread stacks
refuse (EINVAL: MAP_STACK mappings are not eligible); the interpreter's text cannot be collapsed
either: no whole 2 MiB-aligned stretch fits in its mapping.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

SYS_PIDFD_OPEN, SYS_PROCESS_MADVISE = 434, 440
MADV_COLLAPSE = 25
HUGE = 2 << 20


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def main() -> None:
    pid = int(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        name = fields[5] if len(fields) > 5 else ""
        if not (name == "[heap]" or (not name and fields[1].startswith("rw"))):
            continue
        start, end = -(-low // HUGE) * HUGE, high // HUGE * HUGE
        if end <= start:
            continue
        iov = IoVec(start, end - start)
        got = libc.syscall(SYS_PROCESS_MADVISE, pidfd, ctypes.byref(iov), 1, MADV_COLLAPSE, 0)
        why = os.strerror(ctypes.get_errno()) if got < 0 else ""
        print(f"{name or 'anon'} {start:#x} {(end - start) >> 20} MiB -> {got} {why}")
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages"):
            print(line)


if __name__ == "__main__":
    main()
