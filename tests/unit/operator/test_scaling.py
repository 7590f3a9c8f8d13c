"""The writers' scaling policy: the formula, the stabilization window, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway_operator.scaling import Stabilizer, desired


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
