import asyncio
import logging
from itertools import islice

import pytest

from sluiceway_common.backoff import Backoff, Delays, pause
from sluiceway_common.limiter import REDIS_DELAYS
from sluiceway_writer.consumer import RETRY_DELAYS


def first(delays: Delays, n: int) -> list[float]:
    return list(islice(delays, n))


def test_each_delay_is_factor_times_the_one_before_up_to_the_cap() -> None:
    assert first(Delays(1, 5, factor=3), 4) == [1, 3, 5, 5]


def test_the_writers_and_the_limiters_delays_are_those_they_had() -> None:
    assert first(RETRY_DELAYS, 9) == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert first(REDIS_DELAYS, 8) == [0.1, 0.2, 0.4, 0.8, 1.6, 3, 3, 3]


def test_first_equal_to_cap_is_a_steady_interval() -> None:
    assert first(Delays(0.5, 0.5), 4) == [0.5] * 4


def test_the_delays_stay_at_the_cap_however_long_the_outage() -> None:
    # A day of 3 s waits is 28,800 of them; 2.0 ** 28800 would overflow a float.
    assert first(Delays(0.1, 3.0), 30_000)[-1] == 3.0


@pytest.mark.parametrize(("first_", "cap", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_delays_that_could_not_be_waited_out_are_refused(
    first_: float, cap: float, factor: float
) -> None:
    with pytest.raises(ValueError, match="first <= cap"):
        Delays(first_, cap, factor)


class Slept:
    """A ``sleep`` for :class:`Backoff` that records what it was asked and returns at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, asyncio.Event | None]] = []

    async def __call__(self, seconds: float, stop: asyncio.Event | None) -> None:
        self.calls.append((seconds, stop))


LOGGER = "tests.backoff"


def backoff(slept: Slept) -> Backoff:
    return Backoff(
        Delays(1.0, 4.0), logging.getLogger(LOGGER), "store unreachable", "store back",
        sleep=slept,
    )  # fmt: skip


def said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


async def test_an_outage_is_said_once_when_it_begins_and_once_when_it_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    slept = Slept()
    store = backoff(slept)
    store.succeeded()  # no outage: nothing to say
    for n in range(4):
        await store.failed(ConnectionRefusedError(f"refused {n}"))
    assert store.failing
    store.succeeded()
    store.succeeded()
    assert not store.failing
    assert said(caplog) == [
        (logging.WARNING, "store unreachable (ConnectionRefusedError: refused 0)"),
        (logging.INFO, "store back"),
    ]
    assert [seconds for seconds, _ in slept.calls] == [1, 2, 4, 4]
    assert store.retries == 4


async def test_the_next_outage_starts_from_the_first_delay_and_is_said_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    slept = Slept()
    store = backoff(slept)
    await store.failed(OSError("a"))
    await store.failed(OSError("b"))
    store.succeeded()
    await store.failed(OSError("c"))
    assert [seconds for seconds, _ in slept.calls] == [1, 2, 1]
    assert [msg for _, msg in said(caplog)] == [
        "store unreachable (OSError: a)", "store back", "store unreachable (OSError: c)",
    ]  # fmt: skip
    assert store.retries == 3


async def test_each_failed_try_shows_at_debug_level_with_its_delay_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    store = Backoff(
        Delays(0.5, 0.5), logging.getLogger(LOGGER), "lost", "back",
        describe=lambda exc: f"said {exc}", sleep=Slept(),
    )  # fmt: skip
    await store.failed(OSError("x"))
    await store.failed(OSError("y"))
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert [r.getMessage() for r in debug] == [
        "lost (said x); next try in 0.5s", "lost (said y); next try in 0.5s",
    ]  # fmt: skip
    assert all(r.exc_info is not None for r in debug)


async def test_the_stop_event_is_passed_to_the_wait() -> None:
    slept = Slept()
    stop = asyncio.Event()
    await backoff(slept).failed(OSError(), stop)
    assert slept.calls == [(1.0, stop)]


async def test_pause_ends_when_stop_is_set() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, stop.set)
    started = loop.time()
    await pause(30, stop)
    assert loop.time() - started < 5
    await pause(0.001)  # no stop event: a plain sleep
