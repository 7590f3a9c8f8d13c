"""Reading a pipeline's state: queue depths, rows landed and buffered, keys failed and
waiting to retry, one :class:`Status` a reading. ``sluiceway status`` shows it, its
``--watch`` and the demo read it again and again through one :class:`StatusReader`. Rows
landed are the pipeline's rows in ``records``, or with a sink every row of the sink table
(which has no pipeline column).

Queue depths come from a passive declare (:func:`sluiceway_common.topology.queue_depths`),
which counts the messages ready for delivery but not those a consumer holds unacknowledged; a
queue that does not exist yet reads as absent. (RabbitMQ's management API would also give the
unacknowledged ones; sluiceway does not need the management plugin, and ``depth_source`` in
the JSON says which it read.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from sluiceway_common import amqp, store, topology
from sluiceway_common.lifecycle import reach
from sluiceway_common.sink import TableName
from sluiceway_common.topology import QueueDepth, queue_depths

READ_ERRORS = (
    *amqp.BROKER_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError,
    aioredis.RedisError, OSError, TimeoutError,
)  # fmt: skip
READ_TIMEOUT = 10.0  # a reading not done by then is said to have failed, and tried again


@dataclass(frozen=True)
class Status:
    pipeline: str
    queues: list[QueueDepth]
    rows: int | None  # None: rows_table does not exist (records: run `sluiceway migrate`)
    failed: int
    buffered: int = 0  # rows in records_buffer, waiting for a buffered-mode merger
    retrying: int = 0  # fetch tasks on the delay queues, waiting for their next attempt
    in_flight: int = 0  # keys marked in flight: queued, waiting to retry or being fetched
    rows_table: str = "records"  # where rows land: records, or the sink table as named

    @property
    def sink(self) -> bool:
        """Rows land in a sink table: ``rows`` counts the whole table."""
        return self.rows_table != "records"

    def depth(self, name: str) -> int:
        return sum(q.ready for q in self.queues if q.name == name)


async def buffered_count(conn: asyncpg.Connection, pipeline: str) -> int:
    if await conn.fetchval("SELECT to_regclass('records_buffer')") is None:
        return 0
    count: int = await conn.fetchval(
        "SELECT count(*) FROM records_buffer WHERE pipeline = $1", pipeline
    )
    return count


async def row_count(
    conn: asyncpg.Connection, pipeline: str, sink: TableName | None = None
) -> int | None:
    """The rows landed: the pipeline's in ``records``, or all of the ``sink`` table's; None
    when the table does not exist."""
    table = "records" if sink is None else sink.quoted
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        return None
    if sink is not None:
        count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return count
    count = await conn.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline)
    return count


class StatusReader:
    """Holds one connection to each service, for reading a pipeline's status repeatedly.

    A service that goes away makes a reading fail (with one of :data:`READ_ERRORS`) until it
    is back: the broker connection and the Redis client reconnect by themselves, and a
    PostgreSQL connection found closed is opened again at the next reading.
    """

    def __init__(
        self, database_url: str, amqp_url: str, redis_url: str, sink: TableName | None = None
    ) -> None:
        self._urls = (database_url, amqp_url, redis_url)
        self._sink = sink
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
        rows = await row_count(db, pipeline, self._sink)
        buffered = await buffered_count(db, pipeline)
        failed = await store.FailedSet(self._redis, pipeline).count()
        in_flight = await store.InFlight(self._redis, pipeline).count()
        table = "records" if self._sink is None else self._sink.written
        return Status(pipeline, depths, rows, failed, buffered, retrying, in_flight, table)


async def collect(
    database_url: str, amqp_url: str, redis_url: str, pipeline: str, sink: TableName | None = None
) -> Status:
    async with StatusReader(database_url, amqp_url, redis_url, sink) as reader:
        return await reader.read(pipeline)
