r"""What dataclass creation costs a sidecar's start: one dataclass of each kind made 50 times,
then every dataclass the sidecar's imports create, timed in `dataclasses._process_class`, with
the exec() calls of their generated methods counted.

    PYTHONPYCACHEPREFIX=/tmp/pyc-probe .venv/bin/python \
        bench/results/2026-11-25-2core-session29/dataclass_cost.py
"""

import builtins
import collections
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def per_class(make) -> float:
    started = time.perf_counter()
    for _ in range(50):
        make()
    return (time.perf_counter() - started) / 50 * 1000


def frozen():
    @dataclasses.dataclass(frozen=True)
    class A:
        a: int
        b: str = ""
        c: int = 0
        d: tuple = ()
        e: int = 1
        f: int = 2


def unequal():
    @dataclasses.dataclass(eq=False)
    class B:
        a: int = 0
        b: int = 0
        c: int = 0
        d: int = 0


def plain():
    class C:
        def __init__(self, a=0):
            self.a = a


print(f"frozen dataclass {per_class(frozen):.2f} ms, eq=False {per_class(unequal):.2f} ms, "
      f"plain class {per_class(plain):.3f} ms")  # fmt: skip

process, real_exec = dataclasses._process_class, builtins.exec
by_module: collections.Counter[str] = collections.Counter()
count: collections.Counter[str] = collections.Counter()
execs = [0]


def counted_exec(*args, **kwargs):
    execs[0] += 1
    return real_exec(*args, **kwargs)


def timed(cls, *args, **kwargs):
    started = time.perf_counter()
    dataclasses.exec = counted_exec  # the module's own global: only its calls are counted
    try:
        return process(cls, *args, **kwargs)
    finally:
        del dataclasses.exec
        by_module[cls.__module__] += time.perf_counter() - started
        count[cls.__module__] += 1


dataclasses._process_class = timed
started = time.perf_counter()
import sidecar.cli  # noqa: E402, F401
import sidecar.identity.mesh  # noqa: E402, F401
import sidecar.listener  # noqa: E402, F401
import sidecar.observe.admin  # noqa: E402, F401
import sidecar.runtime  # noqa: E402, F401
import sidecar.workers  # noqa: E402, F401

imports = (time.perf_counter() - started) * 1000
print(f"imports {imports:.0f} ms; {sum(count.values())} dataclasses "
      f"({sum(n for m, n in count.items() if m.startswith('sidecar'))} ours) in "
      f"{sum(by_module.values()) * 1000:.0f} ms, {execs[0]} exec() calls")  # fmt: skip
for module, seconds in by_module.most_common(8):
    print(f"  {seconds * 1000:5.1f} ms {count[module]:2d}  {module}")
