"""Run a sidecar counting the bytecodes each function executes: from SIGUSR1 to SIGUSR2, when
the counts are written to argv[1] as JSON rows (file, first line, name, bytecodes, calls).

Exact and deterministic where time on a shared 2-core machine is not: `ops.sh` divides by the
requests to give bytecodes per request per function (tracing makes the sidecar ~50x slower, so
time-driven work, such as the mesh directory's polling, weighs more here than in a real run).
"""

import collections
import json
import os
import runpy
import signal
import sys

out = sys.argv.pop(1)
counts: collections.Counter = collections.Counter()
calls: collections.Counter = collections.Counter()
# $OPWRAP_LINES: file name endings whose bytecodes are also counted per line (written to
# argv[1] + ".lines").
lines_of = (
    tuple(os.environ.get("OPWRAP_LINES", "").split(",")) if "OPWRAP_LINES" in os.environ else ()
)
per_line: collections.Counter = collections.Counter()


def local(frame, event, arg):  # noqa: ANN001, ANN201 - a trace function
    if event == "opcode":
        code = frame.f_code
        counts[code] += 1
        if lines_of and code.co_filename.endswith(lines_of):
            per_line[code.co_filename, frame.f_lineno] += 1
    return local


def called(frame, event, arg):  # noqa: ANN001, ANN201 - a trace function (resumes count too)
    frame.f_trace_opcodes = True
    calls[frame.f_code] += 1
    return local


def start(*_: object) -> None:
    sys.settrace(called)


def stop(*_: object) -> None:
    sys.settrace(None)
    rows = [
        (c.co_filename, c.co_firstlineno, c.co_qualname, n, calls[c]) for c, n in counts.items()
    ]
    with open(out, "w") as fh:
        json.dump(rows, fh)
    if lines_of:
        with open(out + ".lines", "w") as fh:
            json.dump([(f, line, n) for (f, line), n in per_line.items()], fh)


signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv[0] = "sidecar"
runpy.run_module("sidecar", run_name="__main__", alter_sys=True)
