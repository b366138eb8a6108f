"""Shared per-request timers (sidecar.http.deadlines): they fire on time, once, and not at all once
taken out; one loop timer serves a whole bucket."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http.deadlines import PRECISION, Deadlines, LoopDeadlines


class Entry:
    def __init__(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None] | None = None):
        self.loop = loop
        self.fired: list[float] = []
        self.done = done

    def expire(self) -> None:
        self.fired.append(self.loop.time())
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


async def test_an_entry_fires_after_its_delay_and_within_a_slice_of_it():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, 0.2)
    entry = Entry(loop, loop.create_future())
    start = loop.time()
    deadlines.add(entry)
    await asyncio.wait_for(entry.done, 5)
    (fired,) = entry.fired
    # uvloop's clock counts whole milliseconds: allow one either side.
    assert 0.2 - 0.001 <= fired - start <= 0.2 * (1 + 1 / PRECISION) + 0.02


async def test_a_discarded_entry_never_fires_and_its_bucket_mates_still_do():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, 0.05)
    kept, dropped = Entry(loop, loop.create_future()), Entry(loop)
    deadlines.add(kept)
    deadlines.add(dropped).discard(dropped)
    await asyncio.wait_for(kept.done, 5)
    # The bucket that held both has fired (its timer ran `kept`): `dropped` was not in it.
    assert len(kept.fired) == 1 and dropped.fired == []
    assert deadlines.buckets == {}


async def test_entries_set_together_share_one_loop_timer(monkeypatch):
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, 30.0)  # a slice is ~0.94 s: these all land in one or two
    timers = []
    original = loop.call_at

    def counting_call_at(*args, **kwargs):
        handle = original(*args, **kwargs)
        timers.append(handle)
        return handle

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    entries = [Entry(loop) for _ in range(1000)]
    for entry in entries:
        deadlines.add(entry)
    assert 1 <= len(timers) <= 2
    assert sum(len(b) for b in deadlines.buckets.values()) == 1000
    for handle in timers:
        handle.cancel()


async def test_an_entry_that_adds_itself_again_fires_again():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, 0.02)
    done = loop.create_future()

    class Again(Entry):
        def expire(self) -> None:
            super().expire()
            if len(self.fired) < 3:
                deadlines.add(self)
            else:
                done.set_result(None)

    entry = Again(loop)
    deadlines.add(entry)
    await asyncio.wait_for(done, 5)
    assert len(entry.fired) == 3 and entry.fired == sorted(entry.fired)


@pytest.mark.parametrize("delay", [0.5, 15.0])
def test_loop_deadlines_keeps_one_per_delay_and_starts_afresh_on_a_new_loop(delay):
    table = LoopDeadlines()
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        a = table.get(first, delay)
        assert table.get(first, delay) is a
        assert table.get(first, delay * 2) is not a
        b = table.get(second, delay)
        assert b is not a and b.loop is second
    finally:
        first.close()
        second.close()
