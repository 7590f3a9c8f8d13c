"""The fetcher's Prometheus metrics (listed in the README's *Observe* section).

Counts the fetcher already keeps for its stop line (on :class:`~sluiceway_fetcher.consumer.
Fetcher`, the limiter and the packer) are read at each scrape; the two timings are histograms
observed as requests go. Labels: ``pipeline``, and for fetches ``outcome`` and ``status``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram

from sluiceway_common.observe import Readings, histogram


class FetcherCounts(Protocol):
    """What the fetcher counts (``consumer.Fetcher``), read at each scrape."""

    fetched: int
    failed: int
    retried: int
    dropped: int
    inflight: set[asyncio.Task[object]]
    outcomes: Counter[tuple[str, str]]


class Late(Protocol):
    """The limiter: slots given up for a late wake-up."""

    late: int


class Sent(Protocol):
    """The packer: record messages published."""

    messages: int


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300)


@dataclass(frozen=True)
class Timings:
    """What the fetcher observes per task."""

    fetch: Histogram  # one upstream GET, whatever its outcome
    rate_wait: Histogram  # from asking the rate limiter for a slot to the slot's start

    @classmethod
    def create(cls, registry: CollectorRegistry, pipeline: str) -> Timings:
        return cls(
            histogram(
                registry, pipeline, "sluiceway_fetch_duration_seconds",
                "Time one upstream GET took, to its outcome", LATENCY_BUCKETS,
            ),
            histogram(
                registry, pipeline, "sluiceway_rate_limit_wait_seconds",
                "Time a fetch task waited for its rate-limit slot", WAIT_BUCKETS,
            ),
        )  # fmt: skip


def export(
    registry: CollectorRegistry,
    pipeline: str,
    fetcher: FetcherCounts,
    limiter: Late,
    packer: Sent,
) -> None:
    """Expose the counts the fetcher, its limiter and its packer keep."""
    readings = Readings(registry, pipeline)
    readings.counters(
        "sluiceway_fetches",
        "Upstream GETs by outcome (ok, http_error, bad_body, too_large, timeout, "
        "connection_error) and HTTP status (none without a response)",
        ("outcome", "status"),
        lambda: {key: float(n) for key, n in fetcher.outcomes.items()},
    )
    readings.counter(
        "sluiceway_records_published",
        "Records the broker confirmed (the fetch task was then acked)",
        lambda: fetcher.fetched,
    )
    readings.counter(
        "sluiceway_fetch_retries",
        "Fetch tasks queued on a delay queue for another attempt",
        lambda: fetcher.retried,
    )
    readings.counter(
        "sluiceway_keys_failed",
        "Keys put in the failed set (an error not worth retrying, or the last attempt)",
        lambda: fetcher.failed,
    )
    readings.counter(
        "sluiceway_fetch_tasks_dropped",
        "Fetch tasks rejected as not a task (not JSON, no key)",
        lambda: fetcher.dropped,
    )
    readings.gauge(
        "sluiceway_fetch_tasks_in_hand",
        "Fetch tasks this fetcher holds: waiting for a place or a slot, fetching or publishing",
        lambda: len(fetcher.inflight),
    )
    readings.counter(
        "sluiceway_record_messages",
        "Record messages published (a message packs the records that finished together)",
        lambda: packer.messages,
    )
    readings.counter(
        "sluiceway_rate_limit_slots_late",
        "Rate-limit slots given up because their task woke more than 5 ms late",
        lambda: limiter.late,
    )
