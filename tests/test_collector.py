"""The collector settings a serving sidecar runs with (sidecar/collector.py), checked in a
process of their own: freezing would change the test runner's collector."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sidecar import defaults

PROBE = (
    "import gc, json; gc.set_threshold(700, 10, 10); from sidecar import collector; "
    "done = collector.settle(); "
    "print(json.dumps([done, gc.get_freeze_count(), list(gc.get_threshold())]))"
)


def _probe(**env: str) -> list:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(out.stdout)


def test_settle_freezes_start_up_objects_and_spaces_collections() -> None:
    done, frozen, thresholds = _probe(PYSIDECAR_GC="tuned")
    assert done
    assert frozen > 1000  # the modules' objects at least
    assert thresholds == list(defaults.GC_THRESHOLDS)


def test_settle_can_be_turned_off() -> None:
    done, frozen, thresholds = _probe(PYSIDECAR_GC="default")
    assert not done
    assert frozen == 0
    assert thresholds == [700, 10, 10]
