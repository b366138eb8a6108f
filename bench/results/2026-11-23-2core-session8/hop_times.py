"""Per process and socket, the median time from a read to the process's next write, from a
`perf trace` log: `python hop_times.py TRACE A=PID B=PID APP=PID` (see hop_times.sh)."""

from __future__ import annotations

import collections
import re
import statistics
import sys

LINE = re.compile(r"\s*([\d.]+) \(\s*[\d.]*\s*(?:ms)?\): \S+/(\d+) (read|write)\(fd: (\d+)")


def main() -> None:
    names = {pid: name for name, pid in (arg.split("=") for arg in sys.argv[2:])}
    events: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
    for line in open(sys.argv[1]):
        m = LINE.match(line)
        if m and m.group(2) in names:
            events[m.group(2)].append((float(m.group(1)), m.group(3), m.group(4)))
    for pid, seen in sorted(events.items(), key=lambda kv: names[kv[0]]):
        seen.sort()
        gaps: dict[str, list[float]] = collections.defaultdict(list)
        for i, (at, kind, fd) in enumerate(seen):
            if kind != "read":
                continue
            reply = next((e for e in seen[i + 1 :] if e[1] == "write"), None)
            if reply is not None and reply[0] - at < 5:  # ms: the same request
                gaps[fd].append((reply[0] - at) * 1000)
        for fd, g in gaps.items():
            if len(g) > 50:
                q1, _, q3 = statistics.quantiles(g, n=4)
                print(f"{names[pid]} read fd {fd} -> write: n={len(g)} median "
                      f"{statistics.median(g):.0f} us (p25 {q1:.0f}, p75 {q3:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
