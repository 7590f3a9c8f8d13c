"""The live view of a pipeline (``sluiceway status --watch`` and ``make run``): rates and an
ETA worked out from successive status readings, and the view drawn from them.

Rates are differences between two readings over the time between them, so they are net:
the *fetch drain* is how many fewer fetch tasks wait (on the fetch queue and the delay queues)
each second, negative while keys are enqueued faster than they are fetched; the *records
drain* likewise for record messages; the *write rate* is rows landed per second (in
``records``, plus ``records_buffer`` in buffered mode). Queue depths count ready messages
only (see :mod:`sluiceway_admin.reading`). Everything here is pure except :class:`Screen`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from sluiceway_admin.reading import Status
from sluiceway_common.topology import Queues

# Where the queue depths come from, said with every view and JSON document: the operator's
# issue brings RabbitMQ's management API, which also counts unacknowledged messages.
DEPTH_SOURCE = "passive declare: ready messages, unacknowledged ones not counted"

# Rates are taken over about this many seconds of readings, so that batches landing in steps
# do not make them jump.
WINDOW = 10.0


@dataclass(frozen=True)
class Trend:
    seconds: float  # between the two readings compared
    fetch_drain: float  # fetch tasks per second (fetch and delay queues), net of new ones
    records_drain: float  # record messages per second, net of new ones
    write_rate: float  # rows landed per second
    failed_rate: float  # keys failed per second
    eta: float | None  # seconds until the queues are empty at these rates; None: not draining


def fetch_backlog(status: Status) -> int:
    return status.depth(Queues(status.pipeline).fetch) + status.retrying


def landed(status: Status) -> int:
    return (status.rows or 0) + status.buffered


def trend(earlier: Status, later: Status, seconds: float) -> Trend:
    """The rates between two readings ``seconds`` apart, and the ETA they give ``later``.

    The ETA is the time until the fetch and delay queues are empty at their drain; once they
    are, until the records queue is at its own. 0 when both are empty already."""
    span = max(seconds, 1e-9)
    records = Queues(later.pipeline).records
    fetch_drain = (fetch_backlog(earlier) - fetch_backlog(later)) / span
    records_drain = (earlier.depth(records) - later.depth(records)) / span
    if fetch_backlog(later):
        eta = fetch_backlog(later) / fetch_drain if fetch_drain > 0 else None
    elif later.depth(records):
        eta = later.depth(records) / records_drain if records_drain > 0 else None
    else:
        eta = 0.0
    return Trend(
        seconds=seconds,
        fetch_drain=fetch_drain,
        records_drain=records_drain,
        write_rate=(landed(later) - landed(earlier)) / span,
        failed_rate=(later.failed - earlier.failed) / span,
        eta=eta,
    )


class History:
    """The readings of the last :data:`WINDOW` seconds; :meth:`add` returns the trend from
    the oldest of them to the newest (``None`` for the first reading)."""

    def __init__(self, window: float = WINDOW) -> None:
        self._window = window
        self._readings: deque[tuple[float, Status]] = deque()

    def add(self, at: float, status: Status) -> Trend | None:
        self._readings.append((at, status))
        while len(self._readings) > 2 and at - self._readings[1][0] >= self._window:
            self._readings.popleft()
        first_at, first = self._readings[0]
        return None if first_at == at else trend(first, status, at - first_at)


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``—`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    whole = math.ceil(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def _rate(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+,.0f}/s" if signed else f"{value:,.0f}/s"


def _row(label: str, value: str, rate: str = "", note: str = "") -> str:
    return f"  {label:<16}{value:>12}  {rate:>10}  {note}".rstrip()


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _rows_note(status: Status) -> str:
    if status.sink:
        missing = " missing: create it" if status.rows is None else ", the whole table"
        return f"in {status.rows_table}{missing}"
    return "run `sluiceway migrate`" if status.rows is None else ""


def render(
    status: Status, trend: Trend | None, *, clock: str = "", expected: int | None = None
) -> str:
    """The view: one line a queue with its depth, drain and consumers, then rows, failed keys
    and the ETA. ``expected``: how many keys were sent, to show how many are done."""
    fetch, records, dead = Queues(status.pipeline).all()
    consumers = {q.name: q.consumers for q in status.queues}
    t = trend
    rows = "no table" if status.rows is None else f"{status.rows:,}"
    lines = [
        f"pipeline {status.pipeline}" + (f"  {clock}" if clock else ""),
        _row("", "depth", "drain", "consumers"),
        _row(
            "fetch queue", f"{status.depth(fetch):,}",
            _rate(t.fetch_drain if t else None, signed=True),
            _plural(consumers.get(fetch, 0), "fetcher"),
        ),
        _row("delay queues", f"{status.retrying:,}", "", "keys waiting to retry"),
        _row(
            "records queue", f"{status.depth(records):,}",
            _rate(t.records_drain if t else None, signed=True),
            _plural(consumers.get(records, 0), "writer"),
        ),
        _row("dead letters", f"{status.depth(dead):,}"),
        _row("rows landed", rows, _rate(t.write_rate if t else None), _rows_note(status)),
    ]  # fmt: skip
    if status.buffered:
        lines.append(_row("rows buffered", f"{status.buffered:,}", "", "waiting for the merger"))
    lines.append(_row("keys failed", f"{status.failed:,}", _rate(t.failed_rate if t else None)))
    lines.append(_row("keys in flight", f"{status.in_flight:,}", "", "not queued again"))
    if expected is not None:
        done = landed(status) + status.failed
        lines.append(_row("keys done", f"{done:,}", "", f"of {expected:,}"))
    lines.append(_row("ETA to drain", duration(t.eta if t else None)))
    lines.append(f"  (depths: {DEPTH_SOURCE})")
    return "\n".join(lines)


def document(status: Status, trend: Trend | None = None, at: float | None = None) -> dict[str, Any]:
    """The JSON form: the status, the names of its counts' sources, and with a trend the
    rates (per second) and the ETA (seconds, null when not draining)."""
    fetch, records, dead = Queues(status.pipeline).all()
    doc = asdict(status)
    doc |= {
        "depth_source": DEPTH_SOURCE,
        "dead": status.depth(dead),
        "fetchers": sum(q.consumers for q in status.queues if q.name == fetch),
        "writers": sum(q.consumers for q in status.queues if q.name == records),
    }
    if at is not None:
        doc["at"] = at
    if trend is not None:
        doc["rates"] = {
            "seconds": trend.seconds,
            "fetch_drain": trend.fetch_drain,
            "records_drain": trend.records_drain,
            "write": trend.write_rate,
            "failed": trend.failed_rate,
        }
        doc["eta_seconds"] = trend.eta
    return doc


class Screen:
    """Draws successive views on ``stream``: redrawn in place on a terminal; on anything
    else each view is printed in turn, a blank line between, with no escape codes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.tty = stream.isatty()

    def draw(self, view: str) -> None:
        if self.tty:
            self._stream.write("\x1b[H\x1b[2J" + view + "\n")
        else:
            self._stream.write(view + "\n\n")
        self._stream.flush()


def clock_text() -> str:
    return time.strftime("%H:%M:%S")
