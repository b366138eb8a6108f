#!/usr/bin/env python3
"""Self time per innermost Python function, from `perf record --call-graph dwarf` of a process
run under Python 3.12+ with PYTHONPERFSUPPORT=1 (its frames show as `py::NAME:FILE`).

    python3 perf_python_self.py DATA
"""

from __future__ import annotations

import collections
import subprocess
import sys


def main(data: str) -> None:
    argv = ["perf", "script", "-i", data, "-F", "ip,sym"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    owners: collections.Counter[str] = collections.Counter()
    samples = 0
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        samples += 1
        frames = [line.strip().partition(" ")[2] for line in lines]
        python = next((f for f in frames if f.startswith("py::")), None)
        owners[python or f"(no Python frame) {frames[0]}"] += 1
    print("samples", samples)
    for name, count in owners.most_common(45):
        print(f"{100 * count / samples:5.1f}% {name}")


if __name__ == "__main__":
    main(sys.argv[1])
