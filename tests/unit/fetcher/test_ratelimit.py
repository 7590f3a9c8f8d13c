import pytest

from sluiceway_fetcher.ratelimit import Gcra, LocalLimiter


def test_requests_are_spaced_by_the_interval() -> None:
    gcra = Gcra(rate=10)
    tat = 0.0
    starts = []
    for _ in range(5):
        start, tat = gcra.reserve(tat, now=100.0)
        starts.append(start)
    assert starts == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])


def test_burst_goes_at_once_then_spacing_resumes() -> None:
    gcra = Gcra(rate=10, burst=3)
    tat = 0.0
    starts = []
    for _ in range(5):
        start, tat = gcra.reserve(tat, now=50.0)
        starts.append(start)
    assert starts == pytest.approx([50.0, 50.0, 50.0, 50.1, 50.2])


def test_idle_time_does_not_bank_more_than_the_burst() -> None:
    gcra = Gcra(rate=1)
    _, tat = gcra.reserve(0.0, now=0.0)
    start, _ = gcra.reserve(tat, now=1000.0)
    assert start == 1000.0
    start2, _ = gcra.reserve(gcra.reserve(tat, now=1000.0)[1], now=1000.0)
    assert start2 == pytest.approx(1001.0)


async def test_local_limiter_sleeps_until_its_slot() -> None:
    now = [10.0]
    limiter = LocalLimiter(Gcra(rate=1000), clock=lambda: now[0])
    await limiter.acquire()
    await limiter.acquire()  # reserved 1 ms ahead: a real, short sleep
    assert limiter._tat == pytest.approx(10.002)
