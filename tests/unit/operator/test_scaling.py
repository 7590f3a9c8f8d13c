"""The scaling policies: the writers' formula, the stabilization window, the fetchers'
budget, scale-down steps, sleep and wake; tables and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway_operator.scaling import (
    DISABLED,
    IDLE,
    LATENCY_BOUND,
    LEAST,
    MAX_REPLICAS,
    MOST,
    PERCENT,
    PODS,
    RATE_LIMITED,
    FetcherPlan,
    IdleClock,
    Stabilizer,
    StepLimiter,
    StepLimits,
    StepPolicy,
    asleep_or_awake,
    desired,
    fetchers_wanted,
    mean_latency,
)


@pytest.mark.parametrize(
    ("depth", "target", "low", "high", "expected"),
    [
        (0, 5000, 1, 10, 1),  # empty queue: the minimum
        (0, 5000, 0, 10, 0),  # minReplicas 0: none at all
        (1, 5000, 0, 10, 1),  # scale from zero on the first message
        (5000, 5000, 1, 10, 1),
        (5001, 5000, 1, 10, 2),
        (49_999, 5000, 1, 10, 10),
        (10_000_000, 5000, 1, 10, 10),  # never past the maximum
        (-3, 5000, 2, 10, 2),  # a nonsense reading clamps, never goes below the minimum
    ],
)
def test_desired_is_the_clamped_ceiling(depth: int, target: int, low: int, high: int,
                                        expected: int) -> None:  # fmt: skip
    assert desired(depth, target, low, high) == expected


def test_scale_up_is_immediate_and_scale_down_waits_for_the_window() -> None:
    stabilizer = Stabilizer(window=120)
    stabilizer.seed(0, 1)
    assert stabilizer.recommend(10, 8, current=1) == 8  # a burst: up at once
    assert stabilizer.recommend(20, 2, current=8) == 8  # drained: not yet
    assert stabilizer.recommend(129, 2, current=8) == 8  # 8 was wanted 119 s ago
    assert stabilizer.recommend(131, 2, current=8) == 2  # the 8 left the window
    assert stabilizer.recommend(140, 5, current=2) == 5


def test_scale_down_goes_to_the_highest_wanted_over_the_window() -> None:
    stabilizer = Stabilizer(window=60)
    stabilizer.seed(0, 6)
    for at, wanted in ((10, 6), (30, 4), (50, 3)):
        stabilizer.recommend(at, wanted, current=6)
    # 6 was last wanted at 10 s; by 75 s the highest in the last 60 s is 4.
    assert stabilizer.recommend(75, 1, current=6) == 4


def test_a_restarted_operator_does_not_scale_down_on_its_first_reading() -> None:
    stabilizer = Stabilizer(window=120)
    stabilizer.seed(1000, 7)  # seven writers running when it started
    assert stabilizer.recommend(1000, 1, current=7) == 7


readings = st.lists(st.tuples(st.floats(0, 30), st.integers(0, 2_000_000)), min_size=1, max_size=40)
bounds = st.tuples(st.integers(0, 20), st.integers(0, 30)).map(
    lambda pair: (min(pair), max(pair[1], 1, min(pair)))
)


@given(readings, bounds, st.integers(1, 100_000), st.floats(0, 600))
def test_never_outside_the_bounds_and_never_down_inside_the_window(
    steps: list[tuple[float, int]], low_high: tuple[int, int], target: int, window: float
) -> None:
    low, high = low_high
    stabilizer = Stabilizer(window)
    now, current = 0.0, low
    stabilizer.seed(now, current)
    history: list[tuple[float, int]] = [(now, current)]
    for gap, depth in steps:
        now += gap
        wanted = desired(depth, target, low, high)
        chosen = stabilizer.recommend(now, wanted, current)
        history.append((now, wanted))
        assert low <= chosen <= high
        if chosen < current:
            # Scaling down never goes below what was wanted within the window.
            assert chosen >= max(w for at, w in history if at >= now - window)
        current = chosen


@given(st.integers(0, 10_000_000), st.integers(0, 10_000_000), st.integers(1, 100_000),
       bounds)  # fmt: skip
def test_desired_is_monotone_in_depth(a: int, b: int, target: int,
                                      low_high: tuple[int, int]) -> None:  # fmt: skip
    low, high = low_high
    shallow, deep = sorted((a, b))
    assert desired(shallow, target, low, high) <= desired(deep, target, low, high)


# --- fetchers -----------------------------------------------------------------------------


def plan(backlog: int = 100_000, rate: float = 50, latency: float | None = 0.5,
         concurrency: int = 32, low: int = 1, high: int = 10, current: int = 1
         ) -> FetcherPlan:  # fmt: skip
    return fetchers_wanted(backlog=backlog, rate=rate, latency=latency, concurrency=concurrency,
                           low=low, high=high, current=current)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # 50/s at 0.5 s: 25 requests in flight, one fetcher of 32 spends it.
        ({}, FetcherPlan(1, RATE_LIMITED)),
        # 2,000/s at the same latency: 1,000 in flight → 38 fetchers; 10 at most.
        ({"rate": 2000}, FetcherPlan(10, MAX_REPLICAS)),
        ({"rate": 2000, "high": 100}, FetcherPlan(38, RATE_LIMITED)),
        # 600/s at 0.5 s: 300 in flight, with headroom 360 → 12 fetchers of 32.
        ({"rate": 600, "high": 20}, FetcherPlan(12, RATE_LIMITED)),
        # Only 64 keys wait: two fetchers hold them all; more would idle.
        ({"rate": 2000, "backlog": 64}, FetcherPlan(2, LATENCY_BOUND)),
        # Nothing waits: the minimum, and zero when it is zero.
        ({"backlog": 0}, FetcherPlan(1, IDLE)),
        ({"backlog": 0, "low": 0}, FetcherPlan(0, IDLE)),
        # Keys wait with no fetcher running: one starts, to measure the latency.
        ({"latency": None, "low": 0, "current": 0}, FetcherPlan(1, LATENCY_BOUND)),
        ({"latency": None, "current": 4}, FetcherPlan(4, LATENCY_BOUND)),
        ({"latency": None, "current": 40}, FetcherPlan(10, LATENCY_BOUND)),
        # The minimum holds even where one would do.
        ({"low": 3}, FetcherPlan(3, RATE_LIMITED)),
    ],
)
def test_fetchers_spend_the_budget_with_the_fewest(kwargs: dict[str, float], expected: FetcherPlan
                                                   ) -> None:  # fmt: skip
    assert plan(**kwargs) == expected  # type: ignore[arg-type]


@given(
    backlog=st.integers(0, 10**7),
    rate=st.floats(0.01, 1_000_000),
    latency=st.none() | st.floats(0.0, 600),
    concurrency=st.integers(1, 4096),
    low=st.integers(0, 50),
    span=st.integers(0, 200),
    current=st.integers(0, 300),
)
def test_fetchers_stay_in_bounds_and_never_exceed_what_the_backlog_keeps_busy(
    backlog: int, rate: float, latency: float | None, concurrency: int, low: int, span: int,
    current: int,
) -> None:  # fmt: skip
    high = max(low, 1) + span
    got = plan(backlog, rate, latency, concurrency, low, high, current)
    assert low <= got.replicas <= high
    if backlog == 0:
        assert got.bound == IDLE
    else:
        assert got.replicas >= 1
        if latency is not None and got.replicas > max(low, 1):
            assert got.replicas <= math.ceil(backlog / concurrency)
    # More budget never means fewer fetchers.
    more = plan(backlog, rate * 2, latency, concurrency, low, high, current)
    assert more.replicas >= got.replicas


def test_the_mean_latency_weighs_each_fetcher_by_its_fetches() -> None:
    assert mean_latency([]) is None
    assert mean_latency([{"fetches": 0, "latency": None}]) is None
    reports: list[dict[str, object]] = [
        {"fetches": 30, "latency": 0.1}, {"fetches": 10, "latency": 0.5},
        {"fetches": 0, "latency": None},
    ]  # fmt: skip
    assert mean_latency(reports) == pytest.approx(0.2)


# --- scale-down steps ----------------------------------------------------------------------


def test_without_policies_a_scale_down_takes_one_step() -> None:
    assert StepLimiter().limit(0, current=10, wanted=2) == 2


def test_a_pods_policy_counts_the_steps_taken_within_its_period() -> None:
    limiter = StepLimiter(StepLimits((StepPolicy(PODS, 2, 60),)))
    assert limiter.limit(0, current=10, wanted=1) == 8
    assert limiter.limit(30, current=8, wanted=1) == 8  # 2 gone in this period already
    assert limiter.limit(61, current=8, wanted=1) == 6  # the first step left the period
    assert limiter.limit(70, current=6, wanted=9) == 9  # up: never bounded


def test_a_percent_policy_counts_from_the_pods_at_the_periods_start() -> None:
    limiter = StepLimiter(StepLimits((StepPolicy(PERCENT, 50, 60),)))
    assert limiter.limit(0, current=10, wanted=0) == 5
    assert limiter.limit(10, current=5, wanted=0) == 5  # 10 at the period's start: 5 may go
    assert limiter.limit(61, current=5, wanted=0) == 2  # half of 5, the kept rounded down
    assert limiter.limit(122, current=2, wanted=0) == 1
    assert limiter.limit(183, current=1, wanted=0) == 0  # half of one pod may go


@pytest.mark.parametrize(("select", "expected"), [(MOST, 6), (LEAST, 9), (DISABLED, 10)])
def test_the_select_policy_picks_the_biggest_or_smallest_step(select: str,
                                                              expected: int) -> None:  # fmt: skip
    policies = (StepPolicy(PODS, 1, 60), StepPolicy(PERCENT, 40, 60))
    limiter = StepLimiter(StepLimits(policies, select))
    assert limiter.limit(0, current=10, wanted=1) == expected


@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 40)), min_size=1, max_size=40),
    st.integers(1, 5),
    st.integers(5, 120),
)
def test_no_period_ever_loses_more_pods_than_the_policy_allows(
    steps: list[tuple[int, int]], pods: int, period: int
) -> None:
    limiter = StepLimiter(StepLimits((StepPolicy(PODS, pods, period),)))
    now, current = 0, 40
    removed: list[tuple[int, int]] = []  # (when, pods removed then)
    for gap, wanted in steps:
        now += gap
        new = limiter.limit(now, current, wanted)
        assert new == wanted if wanted >= current else wanted <= new <= current
        removed.append((now, max(current - new, 0)))
        current = new
        assert sum(n for when, n in removed if when > now - period) <= pods


# --- sleep and wake ------------------------------------------------------------------------


def test_the_idle_clock_counts_from_the_first_empty_reading_and_restarts_on_work() -> None:
    clock = IdleClock()
    assert clock.observe(0, True) == 0
    assert clock.observe(30, True) == 30
    assert clock.observe(40, False) == 0  # a key queued
    assert clock.observe(50, True) == 0
    assert clock.observe(80, None) == 0  # a reading missing: not idle
    assert clock.since is None


@pytest.mark.parametrize(
    ("wanted", "low", "current", "idle", "woken", "expected"),
    [
        (1, 1, 3, True, False, 1),  # a minimum above 0 never sleeps: wanted as it is
        (2, 1, 3, True, False, 2),
        (0, 0, 3, True, False, 0),  # idle long enough: to sleep
        (0, 0, 3, False, False, 1),  # the pipeline at work elsewhere: one stays
        (0, 0, 0, False, False, 0),  # asleep, nothing above the threshold: stays asleep
        (1, 0, 0, False, False, 0),  # asleep, a few keys under the threshold
        (1, 0, 0, False, True, 1),  # woken
        (4, 0, 0, False, True, 4),
        (3, 0, 2, False, False, 3),  # awake: the policy's count
    ],
)
def test_a_component_at_minimum_zero_sleeps_only_when_idle_and_wakes_on_its_threshold(
    wanted: int, low: int, current: int, idle: bool, woken: bool, expected: int
) -> None:
    assert asleep_or_awake(wanted, low=low, current=current, idle=idle,
                           woken=woken) == expected  # fmt: skip
