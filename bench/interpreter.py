"""The interpreter the sidecars run on, described by itself: `python -m bench.interpreter` prints
its JSON (run with the sidecars' interpreter, `BENCH_PYTHON` or this one).

Why the report needs it: a sidecar's CPU per request is ~90 % the interpreter's, and how that
interpreter was built moves it more than most changes to the code do. On the 2-core machine,
Debian's python3.11 (linked into its executable, built with profile-guided optimisation and LTO)
spent 14-20 % less user time per HTTP/1.1 request than pyenv's default build of 3.11.7 (a shared
libpython, neither), the same code and wheels (bench/README.md, "The interpreter"). So the report
names the build, and times a fixed loop on it so that two runs' interpreters can be compared
without knowing how each was made.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import sysconfig
import time
from importlib import metadata

MODULES = ("uvloop", "h11", "h2", "cryptography", "grpcio", "websockets")
# configure's options that make a faster interpreter, where the build records them (distributions
# such as Debian optimise through their own make targets and record none).
OPTIMISING_OPTIONS = ("--enable-optimizations", "--with-lto")
LOOP_ROUNDS = 200_000


class _Head:
    """A small slotted object, as the request path makes several per request."""

    __slots__ = ("method", "fields")

    def __init__(self, method: bytes, fields: dict[bytes, bytes]) -> None:
        self.method = method
        self.fields = fields

    def host(self) -> bytes:
        return self.fields.get(b"host", b"")


def _loop(rounds: int) -> int:
    """The kind of work a sidecar's request path does, in miniature: objects made and dropped,
    method calls, dict lookups, bytes handled."""
    fields = {b"host": b"backend", b"content-length": b"64"}
    total = 0
    for i in range(rounds):
        head = _Head(b"GET", fields)
        total += len(head.host()) + len(b"%d" % i) + (head.method == b"GET")
    return total


def loop_ms(rounds: int = LOOP_ROUNDS, repeat: int = 5) -> float:
    """The median time of `_loop(rounds)` over `repeat` runs, in ms (one run first, unmeasured,
    to let the interpreter specialise it)."""
    _loop(rounds // 10)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        _loop(rounds)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 1)


def libpython() -> str | None:
    """The shared libpython this process runs from; None where the interpreter is linked into its
    executable (calls within the interpreter then skip the PLT)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit(None, 1)[-1]
                if "/libpython" in name:
                    return name
    except OSError:
        pass
    return None


def module_version(name: str) -> str | None:
    """An installed distribution's version; None where it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    configure = sysconfig.get_config_var("CONFIG_ARGS") or ""
    return {
        "executable": sys.executable,
        "implementation": platform.python_implementation(),
        "version": platform.python_version(),
        "libpython": libpython(),
        "configure_optimisations": [o for o in OPTIMISING_OPTIONS if o in configure],
        "loop_ms": loop_ms(),
        "loop_rounds": LOOP_ROUNDS,
        "modules": {name: module_version(name) for name in MODULES},
    }


if __name__ == "__main__":
    print(json.dumps(describe()))
