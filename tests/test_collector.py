"""The collector settings a serving sidecar runs with (sidecar/collector.py), checked in a
process of their own (freezing would change the test runner's collector), and the request path's
bodies, which must not leave reference cycles for the collector."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Callable

from sidecar.http.exchange import Body, StreamReset

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


def test_settle_freezes_start_up_objects() -> None:
    done, frozen, thresholds = _probe(PYSIDECAR_GC="tuned")
    assert done
    assert frozen > 1000  # the modules' objects at least
    assert thresholds == [700, 10, 10]


def test_settle_can_be_turned_off() -> None:
    done, frozen, thresholds = _probe(PYSIDECAR_GC="default")
    assert not done
    assert frozen == 0
    assert thresholds == [700, 10, 10]


class _Owner:
    """A codec's stream in miniature: it owns a body whose callback is one of its methods."""

    def __init__(self) -> None:
        self.body = Body(self.consumed)
        self.credit = 0

    def consumed(self, n: int) -> None:
        self.credit += n


def _freed_by_reference_counting(make: Callable[[], _Owner]) -> bool:
    gc.disable()
    try:
        owner = make()
        alive = weakref.ref(owner)
        del owner
        return alive() is None
    finally:
        gc.enable()


def test_a_body_read_to_its_end_leaves_no_cycle() -> None:
    async def read_all(owner: _Owner) -> None:
        owner.body.feed(b"abc")
        owner.body.feed(b"de")
        owner.body.end()
        while await owner.body.read() is not None:
            pass
        assert owner.credit == 5

    def make() -> _Owner:
        owner = _Owner()
        asyncio.run(read_all(owner))
        return owner

    assert _freed_by_reference_counting(make)


def test_an_empty_ended_body_and_an_aborted_one_leave_no_cycle() -> None:
    def ended() -> _Owner:
        owner = _Owner()
        owner.body.end()  # a GET: the router never reads it
        return owner

    def aborted() -> _Owner:
        owner = _Owner()
        owner.body.feed(b"abc")
        owner.body.abort(StreamReset("cut"))
        return owner

    assert _freed_by_reference_counting(ended)
    assert _freed_by_reference_counting(aborted)


def test_the_cycle_is_there_while_the_body_can_still_be_read() -> None:
    """The check above can fail: a body still open keeps its owner in a cycle."""

    def open_body() -> _Owner:
        owner = _Owner()
        owner.body.feed(b"abc")
        return owner

    assert not _freed_by_reference_counting(open_body)
    gc.collect()
