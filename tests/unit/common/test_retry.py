import random
from datetime import UTC, datetime

import pytest

from sluiceway_common.retry import delay, retry_after, retryable
from sluiceway_common.topology import RETRY_DELAYS


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


NOW = datetime(2026, 11, 29, 18, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("99999999", 99999999.0),  # capped where it is applied, not here
        ("Sun, 29 Nov 2026 18:00:30 GMT", 30.0),  # IMF-fixdate
        ("Sunday, 29-Nov-26 18:01:00 GMT", 60.0),  # RFC 850
        ("Sun Nov 29 18:00:05 2026", 5.0),  # asctime, which has no zone: GMT
        ("Sun, 29 Nov 2026 17:00:00 GMT", 0.0),  # already past
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1e3", None),
        ("12 s", None),
        ("Sun, 31 Feb 2026 18:00:00 GMT", None),
        ("Sun, 29 Nov 99999 18:00:00 GMT", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert retry_after(value, NOW) == seconds
