"""How many writers and fetchers a pipeline wants: the scaling policy, pure.

The writers' *desired* count follows the records queue's depth (ready and unacked messages:
a message a busy writer holds is still work) at ``target`` messages a writer, within
``[low, high]``; the fetchers' spends the rate limit (:func:`fetchers_wanted`). Scaling up
happens at once. Scaling down waits: the count goes down only to the highest desired value
seen over the stabilization window, so a queue that drains between two bursts does not send
pods away only to bring them back (the flapping KEDA users report), and a dip in one reading
never halves them; and it goes down in bounded steps (:class:`StepLimiter`, as an HPA's
scale-down policies).

With ``minReplicas: 0`` a component sleeps: it goes to zero only once every queue of the
pipeline has been empty for ``idleSeconds`` (:class:`IdleClock`), stays at one or more while
the pipeline has work anywhere, and once asleep wakes only when its own queue holds more than
its activation threshold (:func:`asleep_or_awake`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
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


# --- scale-down steps, as an HPA's behaviour policies ---------------------------------------

PODS, PERCENT = "Pods", "Percent"
MOST, LEAST, DISABLED = "Max", "Min", "Disabled"  # scaleDownSelectPolicy
SELECT_POLICIES = (MOST, LEAST, DISABLED)


@dataclass(frozen=True)
class StepPolicy:
    """At most ``value`` pods (``Pods``) or ``value`` percent of the pods (``Percent``) fewer
    per ``period`` seconds, counted from the pods running at the period's start."""

    kind: str
    value: int
    period: float

    def lowest(self, at_start: int) -> int:
        """The fewest pods this policy allows from ``at_start`` at the period's start (a
        percentage rounds the pods kept down, so 50% of 1 may go)."""
        if self.kind == PODS:
            return max(at_start - self.value, 0)
        return math.floor(at_start * (100 - self.value) / 100)


@dataclass(frozen=True)
class StepLimits:
    """A component's scale-down policies: with ``select`` ``Max`` (the default, as an HPA's)
    the policy that allows the biggest step holds, with ``Min`` the one that allows the
    smallest, with ``Disabled`` nothing scales down. No policy: no bound."""

    policies: Sequence[StepPolicy] = ()
    select: str = MOST


NO_STEP_LIMITS = StepLimits()


@dataclass
class StepLimiter:
    """Applies :class:`StepLimits` to each scale-down, remembering the steps taken."""

    limits: StepLimits = NO_STEP_LIMITS
    _downs: deque[tuple[float, int]] = field(default_factory=deque)  # (when, pods removed)

    def limit(self, now: float, current: int, wanted: int) -> int:
        """The count to run: ``wanted``, or as close to it as the policies allow; a step
        down taken is remembered for the periods it falls in."""
        if wanted >= current:
            return wanted
        policies, select = self.limits.policies, self.limits.select
        if select == DISABLED:
            return current
        longest = max((policy.period for policy in policies), default=0.0)
        while self._downs and self._downs[0][0] <= now - longest:
            self._downs.popleft()
        allowed = wanted
        if policies:
            floors = [policy.lowest(current + self._removed_since(now - policy.period))
                      for policy in policies]  # fmt: skip
            floor = min(floors) if select == MOST else max(floors)
            allowed = min(max(wanted, floor), current)
        if allowed < current:
            self._downs.append((now, current - allowed))
        return allowed

    def _removed_since(self, start: float) -> int:
        return sum(removed for when, removed in self._downs if when > start)


# --- sleep and wake ------------------------------------------------------------------------


@dataclass
class IdleClock:
    """How long every queue of a pipeline has been empty, from its readings. A reading that
    is unknown (a queue that could not be read) or shows work starts the count again: a
    missing metric never puts a pipeline to sleep."""

    since: float | None = None

    def observe(self, now: float, empty: bool | None) -> float:
        """Note a reading (``empty``: every queue empty; None: unknown); return the seconds
        the pipeline has been idle."""
        if not empty:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = now
        return now - self.since


def asleep_or_awake(wanted: int, *, low: int, current: int, idle: bool, woken: bool) -> int:
    """The count a component with ``low`` as its minimum may run, given what its policy
    ``wanted``: with ``low`` above 0, ``wanted`` as it is. With ``low`` 0, zero when the
    pipeline is ``idle`` (every queue empty for ``idleSeconds``); zero while it sleeps
    (``current`` 0) until ``woken`` (its queue above the activation threshold); and at least
    one while it runs and the pipeline is not idle, so that it is not sent away between
    bursts of a pipeline still at work."""
    if low > 0:
        return wanted
    if idle:
        return 0
    if current == 0 and not woken:
        return 0
    return max(wanted, 1)


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
