import bisect
import math

import pytest

from sluiceway_common.ratelimit import AHEAD, MAX_PAUSE, pause_seconds
from tests.gcra import Gcra


def slots(gcra: Gcra, count: int, now: float, tat: float = 0.0) -> list[float]:
    """The start times of ``count`` single-slot reservations all made at ``now``, asking
    again whenever told to (at the time they were told)."""
    starts: list[float] = []
    while len(starts) < count:
        r = gcra.reserve(tat, now)
        if r.granted:
            starts += [now + r.wait + i * r.interval for i in range(r.granted)]
            tat = r.tat
        else:
            now += r.wait
    return starts[:count]


def test_requests_are_spaced_by_the_interval() -> None:
    gcra = Gcra(rate=10)
    assert math.floor(gcra.rate * gcra.spare) == 0  # no spare slots at this rate
    assert gcra.burst == 1
    assert slots(gcra, 5, now=100.0) == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])


def test_burst_goes_at_once_then_spacing_resumes() -> None:
    gcra = Gcra(rate=100, burst_seconds=0.02, spare=0)  # a burst of 1 + 2
    assert gcra.burst == 3
    assert slots(gcra, 5, now=50.0) == pytest.approx([50.0, 50.0, 50.0, 50.01, 50.02])


def test_the_burst_is_a_small_share_of_a_second() -> None:
    assert [Gcra(rate).burst for rate in (0.5, 10, 49, 50, 500, 5000)] == [1, 1, 1, 2, 11, 101]


def test_idle_time_does_not_bank_more_than_the_burst() -> None:
    gcra = Gcra(rate=1)
    first = gcra.reserve(0.0, now=0.0)
    assert (first.wait, first.granted) == (0.0, 1)
    assert slots(gcra, 2, now=1000.0, tat=first.tat) == [1000.0, 1001.0]


def test_a_slot_further_ahead_than_allowed_is_not_reserved() -> None:
    gcra = Gcra(rate=1)
    r = gcra.reserve(tat=10.0, now=9.0)  # the next slot is 1 s away, beyond AHEAD
    assert (r.granted, r.tat, r.interval) == (0, 10.0, 1.0)  # nothing reserved
    assert r.wait == pytest.approx(1 - AHEAD / 2)  # ask again when it is half AHEAD away
    r = gcra.reserve(tat=10.0, now=10.0 - AHEAD / 2)  # asked again when told: reserved
    assert (r.granted, r.tat) == (1, 11.0)
    assert r.wait == pytest.approx(AHEAD / 2)
    # The edge of the horizon: reserved.
    assert gcra.reserve(tat=10.0, now=10.0 - AHEAD).granted == 1


def test_one_call_reserves_the_slots_that_start_within_the_horizon() -> None:
    gcra = Gcra(rate=1000, burst_seconds=0, spare=0)
    r = gcra.reserve(tat=0.0, now=5.0, wanted=200)
    # Slots at 5.000, 5.001, …: as many as start within AHEAD, not all 200.
    assert r.wait == 0.0
    assert r.granted in (50, 51)  # 5.050 itself is in or out, as the rounding goes
    assert r.wait + (r.granted - 1) * r.interval <= AHEAD
    assert r.tat == pytest.approx(5.0 + r.granted / 1000)
    assert gcra.reserve(tat=0.0, now=5.0, wanted=3).granted == 3


@pytest.mark.parametrize("burst_seconds", [0, 0.02])
def test_a_batch_is_spaced_like_single_reservations_or_later(burst_seconds: float) -> None:
    gcra = Gcra(rate=200, burst_seconds=burst_seconds, spare=0)
    batch = gcra.reserve(tat=0.0, now=7.0, wanted=4)
    assert batch.granted == 4
    batch_starts = [7.0 + batch.wait + i * batch.interval for i in range(4)]
    singles = slots(gcra, 4, now=7.0)
    if gcra.burst == 1:
        assert batch_starts == pytest.approx(singles)
    else:  # singles may go at once within the burst; a batch is always spaced
        assert singles == [7.0] * 4
    assert batch.tat == pytest.approx(7.0 + 4 * batch.interval)


def test_spare_slots_only_while_the_limit_is_not_reached() -> None:
    gcra = Gcra(rate=5000, burst_seconds=0, spare=0.01)
    idle = gcra.reserve(tat=0.0, now=5.0, wanted=3)
    assert (idle.wait, idle.granted) == (0.0, 3 + 50)
    # The next caller finds the limit reached (its first slot is not now): no spare.
    busy = gcra.reserve(tat=idle.tat, now=5.0, wanted=3)
    assert busy.wait > 0
    assert busy.granted == 3
    # After a pause neither: the first slot is when the pause ends.
    assert gcra.reserve(tat=0.0, now=5.0, wanted=3, pause_until=5.01).granted == 3
    # And never beyond the horizon.
    assert Gcra(rate=5000, spare=1.0).reserve(0.0, 5.0, wanted=1).granted <= AHEAD * 5000 + 1


def test_asking_for_no_slots_reserves_spare_ones_or_nothing() -> None:
    # How a fetcher far from the limit keeps a run in hand (limiter.KEEP): spare slots
    # only, and while the limit is reached nothing at all, the state untouched.
    gcra = Gcra(rate=5000, burst_seconds=0, spare=0.01)
    idle = gcra.reserve(tat=0.0, now=5.0, wanted=0)
    assert (idle.wait, idle.granted) == (0.0, 50)
    busy = gcra.reserve(tat=idle.tat, now=5.0, wanted=0)
    assert busy.granted == 0
    assert busy.tat == idle.tat


def test_nothing_starts_before_a_pause_ends() -> None:
    gcra = Gcra(rate=10)
    r = gcra.reserve(tat=0.0, now=100.0, pause_until=130.0)
    assert r.granted == 0
    assert r.wait == pytest.approx(30 - AHEAD / 2)
    r = gcra.reserve(tat=0.0, now=130.0 - AHEAD, pause_until=130.0)
    assert r.granted == 1
    assert [r.wait, r.tat] == pytest.approx([AHEAD, 130.1])
    # A pause that is over changes nothing.
    assert gcra.reserve(tat=0.0, now=100.0, pause_until=99.0) == gcra.reserve(0.0, 100.0)


@pytest.mark.parametrize("rate", [0.5, 7, 40, 333, 5000])
def test_no_one_second_window_holds_more_than_the_limit_and_a_small_burst(rate: float) -> None:
    gcra = Gcra(rate)
    starts = slots(gcra, int(rate * 5) + 3, now=1.0)
    most = max(bisect.bisect_right(starts, s + 1.0) - i for i, s in enumerate(starts))
    assert most <= rate * 1.02 + 1  # windows closed at both ends
    assert most >= math.floor(rate)  # and the limit is used


def test_pause_is_capped_and_never_negative() -> None:
    assert pause_seconds(30) == 30
    assert pause_seconds(10 * 86_400) == MAX_PAUSE == 3600
    assert pause_seconds(math.inf) == MAX_PAUSE
    assert pause_seconds(-5) == 0
