"""``sluiceway status``: queue depths, rows landed and keys failed for one pipeline; with
``--watch``, the live view of :mod:`sluiceway_common.watch`.

Queue depths come from a passive declare, which counts the messages ready for delivery but
not those a consumer holds unacknowledged; a queue that does not exist yet reads as absent.
(RabbitMQ's management API would also give the unacknowledged ones; sluiceway does not need
the management plugin, and ``depth_source`` in the JSON says which it read.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.exceptions
import asyncpg
import orjson
import redis.asyncio as aioredis

from sluiceway_common import amqp, logs, redis_keys, settings, topology
from sluiceway_common import watch as view
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import reach

OPTIONS = (
    settings.DATABASE_URL, settings.AMQP_URL, settings.REDIS_URL, settings.PIPELINE,
    settings.LOG_LEVEL,
)  # fmt: skip
READ_ERRORS = (
    *amqp.BROKER_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError,
    aioredis.RedisError, OSError, TimeoutError,
)  # fmt: skip
READ_TIMEOUT = 10.0  # a reading not done by then is said to have failed, and tried again


@dataclass(frozen=True)
class QueueDepth:
    name: str
    exists: bool
    ready: int
    consumers: int


@dataclass(frozen=True)
class Status:
    pipeline: str
    queues: list[QueueDepth]
    rows: int | None  # None: the records table does not exist (run `sluiceway migrate`)
    failed: int
    buffered: int = 0  # rows in records_buffer, waiting for a buffered-mode merger
    retrying: int = 0  # fetch tasks on the delay queues, waiting for their next attempt

    def depth(self, name: str) -> int:
        return sum(q.ready for q in self.queues if q.name == name)


async def queue_depths(
    connection: aio_pika.abc.AbstractConnection, names: tuple[str, ...]
) -> list[QueueDepth]:
    depths = []
    for name in names:
        # A passive declare of a missing queue closes its channel, so each gets its own.
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            result = queue.declaration_result
            depths.append(
                QueueDepth(name, True, result.message_count or 0, result.consumer_count or 0)
            )
        except aio_pika.exceptions.ChannelNotFoundEntity:
            depths.append(QueueDepth(name, False, 0, 0))
        finally:
            if not channel.is_closed:
                await channel.close()
    return depths


async def buffered_count(conn: asyncpg.Connection, pipeline: str) -> int:
    if await conn.fetchval("SELECT to_regclass('records_buffer')") is None:
        return 0
    count: int = await conn.fetchval(
        "SELECT count(*) FROM records_buffer WHERE pipeline = $1", pipeline
    )
    return count


async def row_count(conn: asyncpg.Connection, pipeline: str) -> int | None:
    if await conn.fetchval("SELECT to_regclass('records')") is None:
        return None
    count: int = await conn.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline)
    return count


class StatusReader:
    """Holds one connection to each service, for reading a pipeline's status repeatedly.

    A service that goes away makes a reading fail (with one of :data:`READ_ERRORS`) until it
    is back: the broker connection and the Redis client reconnect by themselves, and a
    PostgreSQL connection found closed is opened again at the next reading.
    """

    def __init__(self, database_url: str, amqp_url: str, redis_url: str) -> None:
        self._urls = (database_url, amqp_url, redis_url)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> StatusReader:
        database_url, amqp_url, redis_url = self._urls
        async with contextlib.AsyncExitStack() as stack:
            self._amqp = await reach("RabbitMQ", amqp_url, amqp.connect(amqp_url, "status"))
            stack.push_async_callback(self._amqp.close)
            self._redis = aioredis.Redis.from_url(redis_url)
            stack.push_async_callback(self._redis.aclose)
            await reach("Redis", redis_url, self._redis.ping())
            self._db = await reach("PostgreSQL", database_url, asyncpg.connect(database_url))
            stack.push_async_callback(self._close_database)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._stack.aclose()

    async def _close_database(self) -> None:
        await self._db.close()

    async def _database(self) -> asyncpg.Connection:
        if self._db.is_closed():
            self._db = await asyncpg.connect(self._urls[0])
        return self._db

    async def read(self, pipeline: str) -> Status:
        queues = topology.Queues(pipeline)
        # While the robust connection reconnects it has no channel to give (aio-pika would
        # raise a bare RuntimeError): say so as the broker being away.
        await amqp.check_connected(self._amqp)
        depths = await queue_depths(self._amqp, queues.all())
        retrying = sum(q.ready for q in await queue_depths(self._amqp, queues.retries()))
        db = await self._database()
        rows = await row_count(db, pipeline)
        buffered = await buffered_count(db, pipeline)
        failed = await self._redis.scard(redis_keys.failed_set(pipeline))
        return Status(pipeline, depths, rows, int(failed), buffered, retrying)


async def collect(database_url: str, amqp_url: str, redis_url: str, pipeline: str) -> Status:
    async with StatusReader(database_url, amqp_url, redis_url) as reader:
        return await reader.read(pipeline)


def render(status: Status) -> str:
    lines = [f"pipeline {status.pipeline}"]
    for q in status.queues:
        state = f"{q.ready:>10,} ready  {q.consumers} consumers" if q.exists else "  (absent)"
        lines.append(f"  {q.name:<48}{state}")
    rows = "table missing: run `sluiceway migrate`" if status.rows is None else f"{status.rows:,}"
    lines.append(f"  rows landed   {rows}")
    if status.buffered:
        lines.append(f"  rows buffered {status.buffered:,} (waiting for the merger)")
    lines.append(f"  keys failed   {status.failed:,}")
    if status.retrying:
        lines.append(f"  keys waiting  {status.retrying:,} (for their next attempt)")
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
