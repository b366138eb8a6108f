#!/usr/bin/env python3
"""Self time per innermost Python function from `perf record --call-graph dwarf` of a process
run under Python 3.12+ with PYTHONPERFSUPPORT=1 (perf script -F ip,sym): python3 perf_python_self.py DATA."""
import subprocess, sys, collections
data = sys.argv[1]
out = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"], capture_output=True, text=True).stdout
selfc = collections.Counter(); incl = collections.Counter(); n = 0
for block in out.split("\n\n"):
    frames = [l.strip().split(" ", 1)[1] if " " in l.strip() else "?" for l in block.strip().splitlines()]
    if not frames: continue
    n += 1
    py = [f for f in frames if f.startswith("py::")]
    leaf = frames[0]
    if py:
        selfc[py[0]] += 1
    else:
        selfc["(no python) " + leaf] += 1
    for f in set(py): incl[f] += 1
print("samples", n)
for k, v in selfc.most_common(45): print(f"{100*v/n:5.1f}% {k}")
print("--- inclusive")
for k, v in incl.most_common(30): print(f"{100*v/n:5.1f}% {k}")
