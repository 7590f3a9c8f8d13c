"""When an upstream request is tried again: which failures are worth it, exponential backoff
with full jitter, and how long an upstream's ``Retry-After`` asks everyone to wait.

The rules are the fetcher's for a key and ``enqueue --http``'s for a page of a listing.

Attempt ``n`` (the first is 1) that failed for a reason worth retrying waits a delay drawn
evenly from ``[0, 2**(n-1)]`` seconds (full jitter, so keys failing together do not come back
together), rounded up to the next of ``topology.RETRY_DELAYS``, since each delay is one queue.
The fetcher's wait happens in the broker, not in the fetcher: the task is acked once its
retry is queued, so a key waiting for its retry never holds a prefetch slot the keys behind it
need. A listing sleeps that long before asking for its page again.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

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


DELAY_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")
# Retry-After is only a request to back off on these: on other statuses it is not about load.
PAUSING_STATUSES = frozenset({429, 503})


def http_date(text: str) -> datetime | None:
    """An HTTP date (IMF-fixdate, RFC 850 or asctime; always UTC), or None."""
    try:
        when = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds asked for by a ``Retry-After`` header, ``value``: delay-seconds or an HTTP date
    (counted from ``now``, and 0 when already past); None when absent or not understood."""
    if value is None:
        return None
    text = value.strip()
    if DELAY_SECONDS.fullmatch(text):
        return float(text)
    when = http_date(text)
    if when is None:
        return None
    return max((when - now).total_seconds(), 0.0)


def pause_asked(
    status: int, headers: Mapping[str, str], now: datetime | None = None
) -> float | None:
    """The seconds an answer of ``status`` with ``headers`` asks every request to wait: its
    Retry-After on a 429 or 503, else None. ``now`` (default: the clock) counts a Retry-After
    date when the answer has no ``Date`` of its own."""
    if status not in PAUSING_STATUSES:
        return None
    # The upstream's own Date first: its Retry-After date is on its clock, not ours.
    date = headers.get("Date")
    reference = (http_date(date) if date else None) or now or datetime.now(UTC)
    return retry_after(headers.get("Retry-After"), reference)
