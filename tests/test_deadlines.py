"""A route's per-request timers (sidecar.http.deadlines): a head times out on time and not once it
is taken out; a silent exchange is given up after the stream idle timeout and a flowing one is
not; one loop timer serves all entries, and runs only while there are some."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http.deadlines import CHECKS, PRECISION, HeadTimeouts, StreamIdleChecks


class Side:
    """One side of an exchange as the idle checks see it: a body with a read count."""

    class Body:
        def __init__(self) -> None:
            self.reads = 0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.body = Side.Body()
        self.response_head = loop.create_future()


async def test_a_head_times_out_after_the_timeout_and_within_a_look_of_it():
    loop = asyncio.get_running_loop()
    heads = HeadTimeouts(0.2)
    head = loop.create_future()
    start = loop.time()
    heads.add(head)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(head, 5)
    elapsed = loop.time() - start
    # uvloop's clock counts whole milliseconds: allow one early; late by a busy machine's worth.
    assert 0.2 - 0.001 <= elapsed <= 0.2 * (1 + 1 / PRECISION) + 0.15
    assert heads.entries == {} and heads.handle is None  # nothing left: the timer stopped


async def test_a_head_taken_out_never_times_out_and_its_neighbours_still_do():
    loop = asyncio.get_running_loop()
    heads = HeadTimeouts(0.05)
    kept, taken = loop.create_future(), loop.create_future()
    heads.add(kept)
    heads.add(taken)
    heads.entries.pop(taken, None)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(kept, 5)
    assert kept.done() and isinstance(kept.exception(), TimeoutError)
    assert not taken.done()


async def test_a_head_that_came_is_left_alone():
    loop = asyncio.get_running_loop()
    heads = HeadTimeouts(0.02)
    head = loop.create_future()
    heads.add(head)
    head.set_result("answer")
    other = loop.create_future()
    heads.add(other)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(other, 5)
    assert head.result() == "answer"


async def test_many_heads_share_one_loop_timer(monkeypatch):
    loop = asyncio.get_running_loop()
    heads = HeadTimeouts(30.0)
    timers = []
    original = loop.call_later

    def counting_call_later(*args, **kwargs):
        handle = original(*args, **kwargs)
        timers.append(handle)
        return handle

    monkeypatch.setattr(loop, "call_later", counting_call_later)
    futures = [loop.create_future() for _ in range(1000)]
    for future in futures:
        heads.add(future)
    assert len(timers) == 1 and len(heads.entries) == 1000
    timers[0].cancel()


def test_the_tables_start_afresh_on_a_new_loop():
    heads = HeadTimeouts(15.0)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        heads.add(first.create_future())
        old_timer = heads.handle
        assert heads.loop is first and len(heads.entries) == 1
        heads.add(second.create_future())
        assert heads.loop is second and len(heads.entries) == 1
        assert old_timer is not None and old_timer.cancelled()
    finally:
        heads.handle.cancel()
        first.close()
        second.close()


async def test_a_silent_exchange_is_given_up_between_one_and_one_and_a_quarter_timeouts():
    loop = asyncio.get_running_loop()
    given_up = loop.create_future()
    checks = StreamIdleChecks(0.2, lambda ex, up: given_up.set_result((ex, up, loop.time())))
    upstream, exchange = Side(loop), Side(loop)
    start = loop.time()
    checks.add(upstream, exchange)
    ex, up, when = await asyncio.wait_for(given_up, 5)
    assert (ex, up) == (exchange, upstream)
    assert 0.2 - 0.001 <= when - start <= 0.2 * (1 + 1 / CHECKS) + 0.15
    assert checks.entries == {} and checks.looks == {}


async def test_a_flowing_exchange_is_not_given_up_and_one_taken_out_is_forgotten():
    loop = asyncio.get_running_loop()
    given_up = []
    checks = StreamIdleChecks(0.2, lambda ex, up: given_up.append(up))
    flowing, flowing_ex = Side(loop), Side(loop)
    checks.add(flowing, flowing_ex)
    done, done_ex = Side(loop), Side(loop)
    checks.add(done, done_ex)
    deadline = loop.time() + 0.6  # three timeouts: a silent stream would have gone twice
    while loop.time() < deadline:
        flowing.body.reads += 1  # a chunk every 10 ms, alternating sides
        flowing_ex.body.reads += flowing.body.reads % 2
        if loop.time() > deadline - 0.45:
            checks.entries.pop(done, None)  # finished after two or three looks
        await asyncio.sleep(0.01)
    assert given_up == []
    assert done not in checks.looks  # its state went with the next look
    checks.entries.pop(flowing, None)
    checks.handle.cancel()


async def test_a_failing_give_up_does_not_stop_the_looks_at_the_others():
    loop = asyncio.get_running_loop()
    first, second = Side(loop), Side(loop)
    given_up = loop.create_future()

    def on_idle(exchange: Side, upstream: Side) -> None:
        if upstream is first:
            raise RuntimeError("reset failed")
        given_up.set_result(upstream)

    errors = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, context: errors.append(context.get("exception")))
    checks = StreamIdleChecks(0.1, on_idle)
    try:
        checks.add(first, Side(loop))
        checks.add(second, Side(loop))  # idle in the same look, given up after `first`
        assert await asyncio.wait_for(given_up, 5) is second
        assert [type(e) for e in errors] == [RuntimeError]
        assert checks.entries == {}
    finally:
        loop.set_exception_handler(handler)
        if checks.handle is not None:
            checks.handle.cancel()
