"""A Pipeline timer's schedule: at once the first time, then every interval or as soon as the
Pipeline changes, and out at once when kopf stops the timer, mid-run included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, cast

import kopf
import pytest

from sluiceway_operator.poll import Poll


class Stopped:
    """kopf's ``stopped`` flag, as a handler sees it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    def wait(self) -> asyncio.Future[bool]:
        return asyncio.ensure_future(self.event.wait())


def flag() -> tuple[Stopped, kopf.DaemonStopped]:
    stopped = Stopped()
    return stopped, cast(kopf.DaemonStopped, stopped)


async def stopped_mid_run(poll: Poll, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` on ``poll``'s timer and stop the timer while it runs; return as soon as
    the timer is out, its run cancelled and left to unwind."""
    flagged, stopped = flag()
    run = asyncio.ensure_future(poll.run(work, stopped))
    await asyncio.sleep(0.05)
    flagged.event.set()
    await run


async def took(poll: Poll, seconds: float, stopped: kopf.DaemonStopped) -> tuple[bool, float]:
    start = time.monotonic()
    due = await poll.due(seconds, stopped)
    return due, time.monotonic() - start


async def test_the_first_run_is_at_once_then_one_interval_after_the_last() -> None:
    poll, (_, stopped) = Poll(), flag()
    due, waited = await took(poll, 30, stopped)
    assert due
    assert waited < 0.1
    due, waited = await took(poll, 0.2, stopped)
    assert due
    assert 0.15 < waited < 1


async def test_a_change_runs_it_at_once() -> None:
    poll, (_, stopped) = Poll(), flag()
    await poll.due(30, stopped)
    asyncio.get_running_loop().call_later(0.1, poll.changed.set)
    due, waited = await took(poll, 30, stopped)
    assert due
    assert waited < 1
    poll.changed.set()  # a change while it ran: the next run is at once as well
    due, waited = await took(poll, 30, stopped)
    assert due
    assert waited < 0.1
    assert not poll.changed.is_set()


async def test_a_stopped_timer_does_not_run() -> None:
    poll, (flagged, stopped) = Poll(), flag()
    await poll.due(30, stopped)
    asyncio.get_running_loop().call_later(0.1, flagged.event.set)
    due, waited = await took(poll, 30, stopped)
    assert not due
    assert waited < 1


async def test_a_run_gives_its_result_or_errors() -> None:
    poll, (_, stopped) = Poll(), flag()

    async def work() -> int:
        await asyncio.sleep(0.01)
        return 7

    assert await poll.run(work(), stopped) == 7

    async def fails() -> int:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await poll.run(fails(), stopped)


async def test_a_timer_stopped_mid_run_returns_within_a_few_loop_cycles() -> None:
    poll, (flagged, stopped) = Poll(), flag()
    unwound = asyncio.Event()

    async def work() -> int:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # unwinding takes real time: not waited for
            unwound.set()
        return 7

    run = asyncio.ensure_future(poll.run(work(), stopped))
    await asyncio.sleep(0.05)
    flagged.event.set()
    # kopf waits this many zero-time cycles (instant_exit_zero_time_cycles) before it
    # leaves a stopped timer orphaned.
    for _ in range(10):
        await asyncio.sleep(0)
        if run.done():
            break
    assert run.done()
    assert run.result() is None
    await asyncio.wait_for(unwound.wait(), 5)


async def test_unwound_waits_for_the_runs_a_stop_cancelled() -> None:
    poll = Poll()
    unwound = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.2)  # still using what the controller holds
            unwound.set()

    await stopped_mid_run(poll, work())
    assert not unwound.is_set()
    await poll.unwound(5)
    assert unwound.is_set()
    await poll.unwound(5)  # nothing left: at once


async def test_unwound_gives_up_after_its_time() -> None:
    poll = Poll()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(1)

    await stopped_mid_run(poll, work())
    start = time.monotonic()
    await poll.unwound(0.1)
    assert time.monotonic() - start < 0.9
    await poll.unwound(5)
