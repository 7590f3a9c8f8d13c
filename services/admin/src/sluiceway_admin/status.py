"""``sluiceway status``: queue depths, rows landed and keys failed for one pipeline; with
``--watch``, the live view of :mod:`sluiceway_admin.watch`. What is read, and how, is
:mod:`sluiceway_admin.reading`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from sluiceway_admin import watch as view
from sluiceway_admin.reading import READ_ERRORS, READ_TIMEOUT, Status, StatusReader, collect
from sluiceway_common import logs, settings, sink
from sluiceway_common.cli import Command

# With a sink, rows landed are counted in the sink table.
OPTIONS = (
    settings.DATABASE_URL, settings.AMQP_URL, settings.REDIS_URL, settings.PIPELINE,
    *sink.OPTIONS, settings.LOG_LEVEL,
)  # fmt: skip


def render(status: Status) -> str:
    lines = [f"pipeline {status.pipeline}"]
    for q in status.queues:
        state = f"{q.ready:>10,} ready  {q.consumers} consumers" if q.exists else "  (absent)"
        lines.append(f"  {q.name:<48}{state}")
    if status.rows is None:
        rows = (f"sink table {status.rows_table} missing: create it with your own migrations"
                if status.sink else "table missing: run `sluiceway migrate`")  # fmt: skip
    else:
        rows = f"{status.rows:,}"
        rows += f" in {status.rows_table} (the whole table)" if status.sink else ""
    lines.append(f"  rows landed   {rows}")
    if status.buffered:
        lines.append(f"  rows buffered {status.buffered:,} (waiting for the merger)")
    lines.append(f"  keys failed   {status.failed:,}")
    if status.retrying:
        lines.append(f"  keys waiting  {status.retrying:,} (for their next attempt)")
    lines.append(f"  keys in flight {status.in_flight:,} (queued, waiting or being fetched)")
    return "\n".join(lines)


async def watch(values: dict[str, Any], interval: float, as_json: bool) -> None:
    """Read the status every ``interval`` seconds until interrupted; draw the view (or write
    one JSON document a line). A reading that fails is said in one line, and tried again."""
    screen = view.Screen(sys.stdout)
    history = view.History()
    pipeline = values.pop("pipeline")
    async with StatusReader(**values) as reader:
        while True:
            limit = max(READ_TIMEOUT, interval)
            try:
                async with asyncio.timeout(limit):
                    status = await reader.read(pipeline)
            except READ_ERRORS as exc:
                timed_out = isinstance(exc, TimeoutError) and not str(exc)
                reason = f"no answer within {limit:g}s" if timed_out else logs.error_text(exc)
                print(f"cannot read the status: {reason}", file=sys.stderr)
            else:
                trend = history.add(time.monotonic(), status)
                if as_json:
                    doc = view.document(status, trend, time.time())
                    sys.stdout.write(orjson.dumps(doc).decode() + "\n")
                    sys.stdout.flush()
                else:
                    screen.draw(view.render(status, trend, clock=view.clock_text()))
            await asyncio.sleep(interval)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (with --watch, one a line, with rates and ETA)",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="read again every --interval seconds: queue drains, write rate, ETA, until Ctrl-C",
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS",
        help="seconds between readings with --watch (default 2)",
    )  # fmt: skip
    settings.add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    values = settings.resolve(args, OPTIONS)
    logs.setup(values.pop("log_level"), secrets=settings.secret_values(OPTIONS, values))
    found = sink.configured(values)
    for option in sink.OPTIONS:
        del values[option.dest]
    values["sink"] = None if found is None else found.table
    if not 0.1 <= args.interval <= 3600:
        raise settings.ConfigError(
            f"--interval={args.interval!r} is not allowed: expected seconds from 0.1 to 3600"
        )
    if args.watch:
        asyncio.run(watch(values, args.interval, args.json))
        return 0
    status = asyncio.run(collect(**values))
    if args.json:
        sys.stdout.write(orjson.dumps(view.document(status)).decode() + "\n")
    else:
        print(render(status))
    return 0


COMMAND = Command(
    "status", "show queue depths, rows landed and keys failed (--watch: live)", configure, run
)
