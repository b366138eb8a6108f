r"""Seconds per test module from pytest's `--durations=0` output (setup, call and teardown).

    PYSIDECAR_REQUIRE_NETNS=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
        --durations=0 tests > full.log
    python3 bench/results/2026-11-25-2core-session28/durations_by_module.py full.log
"""

import collections
import re
import sys

per_module: collections.Counter[str] = collections.Counter()
for line in open(sys.argv[1]):
    match = re.match(r"([\d.]+)s (setup|call|teardown)\s+(\S+)", line)
    if match:
        per_module[match[3].split("::")[0]] += float(match[1])
for module, seconds in per_module.most_common(20):
    print(f"{seconds:7.1f} {module}")
