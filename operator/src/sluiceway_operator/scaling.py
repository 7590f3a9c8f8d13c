"""How many writers a pipeline wants: the scaling policy, pure.

The *desired* count follows the records queue's depth (ready and unacked messages: a
message a busy writer holds is still work) at ``target`` messages a writer, within
``[low, high]``. Scaling up happens at once. Scaling down waits: the count goes down only
to the highest desired value seen over the stabilization window, so a queue that drains
between two bursts does not send writers away only to bring them back (the flapping KEDA
users report), and a dip in one reading never halves the writers.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


def desired(depth: int, target: int, low: int, high: int) -> int:
    """ceil(depth / target), clamped to [low, high]."""
    return min(max(math.ceil(max(depth, 0) / target), low), high)


@dataclass
class Stabilizer:
    """Remembers desired counts over the last ``window`` seconds and recommends one.

    Start it with the writers running now (:meth:`seed`), so that an operator restarted
    mid-window does not scale down on its first reading.
    """

    window: float
    _seen: deque[tuple[float, int]] = field(default_factory=deque)

    def seed(self, now: float, replicas: int) -> None:
        self._seen.append((now, replicas))

    def recommend(self, now: float, wanted: int, current: int) -> int:
        """The count to run now, given the policy's ``wanted`` and the ``current`` count."""
        self._seen.append((now, wanted))
        while self._seen and self._seen[0][0] < now - self.window:
            self._seen.popleft()
        if wanted >= current:
            return wanted
        return min(current, max(count for _, count in self._seen))


# --- fetchers: the fewest that can spend the rate budget ----------------------------------

# Fetchers for a fifth more than the budget needs: the latency read is a mean over a few
# seconds, and a fetcher short of slots wastes the limit while one too many only waits.
HEADROOM = 1.2
IDLE, RATE_LIMITED, LATENCY_BOUND, MAX_REPLICAS = (
    "idle", "rate-limited", "latency-bound", "max-replicas",
)  # fmt: skip


@dataclass(frozen=True)
class FetcherPlan:
    """How many fetchers to run, and which bound holds (for the status):

    * ``idle``: nothing in the fetch or delay queues;
    * ``rate-limited``: enough fetchers to spend the whole limit: only a higher limit fetches
      faster;
    * ``latency-bound``: fewer keys wait than the fetchers could hold in flight, so each
      key's time is the upstream's latency: neither more fetchers nor a higher limit help;
    * ``max-replicas``: the limit needs more fetchers than ``maxReplicas`` allows: raise it
      (or the concurrency) to spend the whole limit.
    """

    replicas: int
    bound: str


def fetchers_wanted(
    *,
    backlog: int,
    rate: float,
    latency: float | None,
    concurrency: int,
    low: int,
    high: int,
    current: int,
    headroom: float = HEADROOM,
) -> FetcherPlan:
    """The fewest fetchers that spend ``rate`` requests a second when each request takes
    ``latency`` seconds and a fetcher holds ``concurrency`` at once:
    ``ceil(rate * latency * headroom / concurrency)``, no more than the ``backlog`` (keys in
    the fetch and delay queues) can keep busy, within ``[low, high]``.

    With keys waiting and no latency measured yet (nothing fetched since the fetchers
    started, or none running), the count stays as it is, and at least one starts.
    """
    if backlog <= 0:
        return FetcherPlan(max(low, 0), IDLE)
    floor = max(low, 1)
    need = math.ceil(backlog / concurrency)  # more would hold nothing
    if latency is None:
        return FetcherPlan(min(max(current, floor), high), LATENCY_BOUND)
    budget = math.ceil(rate * latency * headroom / concurrency)
    wanted = min(budget, need)
    if wanted > high:
        return FetcherPlan(high, MAX_REPLICAS)
    bound = LATENCY_BOUND if need < budget else RATE_LIMITED
    return FetcherPlan(max(wanted, floor), bound)


def mean_latency(reports: list[dict[str, object]]) -> float | None:
    """The fetchers' mean upstream latency over their last reports, each weighted by its
    fetches; None when none fetched."""
    fetches = latency_sum = 0.0
    for load in reports:
        count, latency = load.get("fetches"), load.get("latency")
        if isinstance(count, int | float) and count > 0 and isinstance(latency, int | float):
            fetches += count
            latency_sum += count * latency
    return latency_sum / fetches if fetches else None
