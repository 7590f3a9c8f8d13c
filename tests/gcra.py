"""The reference model of the shared rate limiter's arithmetic: GCRA with reservations, as
``sluiceway_common.ratelimit`` describes it and the limiter's Lua script runs it in Redis.

Pure Python, operation for operation the script's: the unit tests check the limiter's
properties on it (spacing, burst, horizon, spare slots), and an integration test runs the
script on a table of cases and requires this model's answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sluiceway_common.ratelimit import AHEAD, BURST, SPARE


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer to one reservation.

    ``granted`` slots start ``wait`` seconds from now and every ``interval`` seconds after;
    with ``granted == 0`` nothing was reserved and the caller asks again in ``wait`` seconds.
    """

    wait: float
    granted: int
    tat: float  # the new theoretical arrival time
    interval: float


@dataclass(frozen=True)
class Gcra:
    rate: float  # requests per second
    burst_seconds: float = BURST
    ahead: float = AHEAD
    spare: float = SPARE

    @property
    def interval(self) -> float:
        return 1 / self.rate

    @property
    def burst(self) -> int:
        return 1 + math.floor(self.rate * self.burst_seconds)

    def reserve(
        self, tat: float, now: float, wanted: int = 1, pause_until: float = 0.0
    ) -> Reservation:
        """Reserve up to ``wanted`` slots at ``now`` given the state ``tat``; nothing starts
        before ``pause_until``. Times are in seconds on one clock (Redis's, in production)."""
        interval = 1 / self.rate
        burst = 1 + math.floor(self.rate * self.burst_seconds)
        start = max(now, pause_until, tat - (burst - 1) * interval)
        # How much of the horizon is left after the first slot; one number decides both
        # whether to grant and how long to wait otherwise, so that rounding cannot answer
        # "not yet" with a wait of 0.
        room = now + self.ahead - start
        if room < 0:
            # Ask again when the free slot is half the horizon away, not as it enters it:
            # then there is room for a run of slots, where fetchers all woken at the edge
            # would take one each, a Redis call per slot per fetcher; and half the horizon
            # is still left for a late wake-up before the slot is due.
            return Reservation(-room + self.ahead / 2, 0, tat, interval)
        if start == now:
            wanted = wanted + math.floor(self.rate * self.spare)
        granted = min(wanted, math.floor(room / interval) + 1)
        return Reservation(start - now, granted, max(tat, start) + granted * interval, interval)
