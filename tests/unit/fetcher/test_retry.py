import random

import pytest

from sluiceway_common.topology import RETRY_DELAYS
from sluiceway_fetcher.retry import delay, retryable


@pytest.mark.parametrize("status", [None, 500, 502, 503, 504, 599, 408, 429])
def test_passing_trouble_is_retried(status: int | None) -> None:
    assert retryable(status)


@pytest.mark.parametrize("status", [200, 301, 400, 401, 403, 404, 410, 422])
def test_the_key_s_own_trouble_is_not(status: int) -> None:
    assert not retryable(status)


def test_delays_grow_with_the_attempt_and_are_jittered_within_the_ceiling() -> None:
    rng = random.Random(5)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 256), (15, 256)]:
        drawn = {delay(attempt, rng) for _ in range(2000)}
        assert drawn <= {d for d in RETRY_DELAYS if d <= ceiling}
        assert max(drawn) == ceiling
        if ceiling >= 4:
            assert len(drawn) >= 3  # spread, not all at the ceiling
