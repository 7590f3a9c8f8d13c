"""Rate-limit arithmetic (GCRA) and the in-process limiter built on it.

GCRA keeps one number, the *theoretical arrival time* (TAT) of the next request. With an
emission interval ``T = 1/rate`` and a burst of ``b`` requests, a request at ``now`` may go
when ``now >= TAT - (b - 1) * T``, and moves TAT to ``max(TAT, now) + T``. The arithmetic is
pure so that it can be tested without a clock; in this first cut each fetcher process keeps
its own TAT, so the pipeline's rate is this limit times the number of fetcher processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Gcra:
    rate: float  # requests per second
    burst: int = 1

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    def reserve(self, tat: float, now: float) -> tuple[float, float]:
        """Reserve the next slot: return ``(start, new_tat)``; the request may go at ``start``."""
        start = max(now, tat - (self.burst - 1) * self.interval)
        return start, max(tat, start) + self.interval


class LocalLimiter:
    """Spaces this process's requests by a :class:`Gcra`; waiting callers queue fairly."""

    def __init__(self, gcra: Gcra, clock: Callable[[], float] = time.monotonic) -> None:
        self._gcra = gcra
        self._clock = clock
        self._tat = 0.0

    async def acquire(self) -> None:
        # Reserving before sleeping keeps the arithmetic atomic within the event loop.
        now = self._clock()
        start, self._tat = self._gcra.reserve(self._tat, now)
        if start > now:
            await asyncio.sleep(start - now)
