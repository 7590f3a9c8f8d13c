"""When a key is tried again: exponential backoff with full jitter, on fixed delay queues.

Attempt ``n`` (the first is 1) that failed for a reason worth retrying waits a delay drawn
evenly from ``[0, 2**(n-1)]`` seconds (full jitter, so keys failing together do not come back
together), rounded up to the next of ``topology.RETRY_DELAYS``, since each delay is one queue.
The wait happens in the broker, not in the fetcher: the task is acked once its retry is
queued, so a key waiting for its retry never holds a prefetch slot the keys behind it need.
"""

from __future__ import annotations

import random

from sluiceway_common.topology import RETRY_DELAYS

# Which failures are the upstream's passing trouble rather than the key's.
RETRY_STATUSES = frozenset({408, 429})


def retryable(status: int | None) -> bool:
    """Worth another attempt: no answer at all (timeout, connection), a 5xx, a 408 or a 429."""
    return status is None or status >= 500 or status in RETRY_STATUSES


def delay(attempt: int, rng: random.Random) -> int:
    """The delay queue, in seconds, for the retry after failed attempt ``attempt``."""
    ceiling = min(2 ** (attempt - 1), RETRY_DELAYS[-1])
    drawn = rng.uniform(0, ceiling)
    return next(seconds for seconds in RETRY_DELAYS if seconds >= drawn)
