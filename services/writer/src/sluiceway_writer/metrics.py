"""The writer's Prometheus metrics (listed in the README's *Observe* section).

Counts the writer already keeps for its stop line (on :class:`~sluiceway_writer.consumer.
Writer` and the merger) are read at each scrape; batch sizes and flush times are histograms
observed at each flush. Labels: ``pipeline``, and for dead letters ``cause``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram

from sluiceway_common.observe import Readings, histogram


class WriterCounts(Protocol):
    """What the writer counts (``consumer.Writer``), read at each scrape."""

    @property
    def messages(self) -> int: ...
    @property
    def records(self) -> int: ...
    @property
    def written(self) -> int: ...
    @property
    def write_retries(self) -> int: ...
    @property
    def dead_letters(self) -> Mapping[str, int]: ...


class Held(Protocol):
    """The batcher: how many records it holds for the next batch."""

    @property
    def rows(self) -> int: ...


class Moved(Protocol):
    """The merger: how many buffered rows it moved."""

    moved: int


ROWS_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000)
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True)
class Timings:
    """What the writer observes per batch."""

    batch_rows: Histogram  # records a flushed batch held (undecodable messages count one)
    flush: Histogram  # from taking the batch to acking it, database retries included

    @classmethod
    def create(cls, registry: CollectorRegistry, pipeline: str) -> Timings:
        return cls(
            histogram(
                registry, pipeline, "sluiceway_batch_rows",
                "Records in a flushed batch", ROWS_BUCKETS,
            ),
            histogram(
                registry, pipeline, "sluiceway_flush_duration_seconds",
                "Time from taking a batch to acking it, database retries included",
                FLUSH_BUCKETS,
            ),
        )  # fmt: skip


def export(
    registry: CollectorRegistry,
    pipeline: str,
    writer: WriterCounts,
    batcher: Held,
    merger: Moved | None,
) -> None:
    """Expose the counts the writer, its batcher and its merger keep."""
    readings = Readings(registry, pipeline)
    readings.counter(
        "sluiceway_messages_consumed",
        "Record messages delivered to this writer, redeliveries included",
        lambda: writer.messages,
    )
    readings.counter(
        "sluiceway_records_consumed",
        "Records in those messages (an undecodable message counts one)",
        lambda: writer.records,
    )
    readings.counter(
        "sluiceway_rows_written",
        "Records landed (direct mode: upserted into records; buffered: appended to the buffer)",
        lambda: writer.written,
    )
    readings.counters(
        "sluiceway_rows_dead_lettered",
        "Records sent to the dead-letter queue, by cause: undecodable (not a record) or "
        "refused (by PostgreSQL)",
        ("cause",),
        lambda: {(cause,): float(n) for cause, n in writer.dead_letters.items()},
    )
    readings.counter(
        "sluiceway_write_retries",
        "Batch writes that failed for the database's sake (connection, restart, …) and were "
        "tried again",
        lambda: writer.write_retries,
    )
    readings.gauge(
        "sluiceway_batch_held_rows",
        "Records held for the next batch",
        lambda: batcher.rows,
    )
    if merger is not None:
        readings.counter(
            "sluiceway_rows_merged",
            "Buffered rows moved into records by this writer's merger (buffered mode)",
            lambda: merger.moved,
        )
