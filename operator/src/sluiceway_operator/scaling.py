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
