"""The writer against real RabbitMQ and PostgreSQL, run in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aio_pika.abc import AbstractConnection

from sluiceway_common import topology
from sluiceway_writer.config import WriterSettings
from sluiceway_writer.main import serve
from tests.conftest import ServiceUrls
from tests.integration.helpers import depth, drain, eventually, publish, record

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@asynccontextmanager
async def writer(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    *,
    batch_size: int,
    batch_timeout: float,
) -> AsyncIterator[asyncio.Task[int]]:
    config = WriterSettings(
        database_url, services.amqp, pipeline, batch_size, batch_timeout, "INFO"
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop))
    try:
        yield task
    finally:
        stop.set()
        assert await asyncio.wait_for(task, timeout=30) == 0


async def rows(db: asyncpg.Connection, pipeline: str) -> dict[str, tuple[object, datetime]]:
    found = await db.fetch(
        "SELECT key, payload, fetched_at FROM records WHERE pipeline = $1", pipeline
    )
    return {r["key"]: (json.loads(r["payload"]), r["fetched_at"]) for r in found}


async def count(db: asyncpg.Connection, pipeline: str) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline)
    return n


async def test_lands_every_record_and_acks_only_what_committed(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    bodies = [record(f"k{i}", b'{"n": %d}' % i, T0) for i in range(25)]
    await publish(amqp_connection, pipeline, queues.records, bodies)
    async with writer(services, database_url, pipeline, batch_size=4, batch_timeout=0.2):
        await eventually(lambda: _has(db, pipeline, 25), what="25 rows")
    assert await rows(db, pipeline) == {f"k{i}": ({"n": i}, T0) for i in range(25)}
    assert await depth(amqp_connection, queues.records) == 0  # all acked, none returned


async def _has(db: asyncpg.Connection, pipeline: str, n: int) -> bool:
    return await count(db, pipeline) >= n


async def test_flushes_at_batch_size_without_waiting_for_the_timeout_and_on_stop(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    async with writer(services, database_url, pipeline, batch_size=5, batch_timeout=3600):
        await publish(
            amqp_connection, pipeline, queues.records, [record(f"k{i}", b"1", T0) for i in range(8)]
        )
        # Five make a batch long before the hour-long timeout; three wait for more.
        await eventually(lambda: _has(db, pipeline, 5), what="a full batch")
        await asyncio.sleep(0.5)
        assert await count(db, pipeline) == 5
    # Stopping flushes what was held.
    assert await count(db, pipeline) == 8
    assert await depth(amqp_connection, queues.records) == 0


async def test_flushes_when_the_oldest_record_has_waited_the_timeout(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    async with writer(services, database_url, pipeline, batch_size=10_000, batch_timeout=0.3):
        await publish(amqp_connection, pipeline, queues.records, [record("only", b"1", T0)])
        await eventually(lambda: _has(db, pipeline, 1), what="a timed flush")


async def test_redelivery_changes_nothing_and_the_newest_fetch_wins(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    newer, older = T0 + timedelta(hours=1), T0
    async with writer(services, database_url, pipeline, batch_size=100, batch_timeout=0.1):
        # Same batch: duplicates collapse to the newest.
        await publish(
            amqp_connection,
            pipeline,
            queues.records,
            [
                record("k", b'"old"', older),
                record("k", b'"new"', newer),
                record("k", b'"old"', older),
            ],
        )
        await eventually(lambda: _has(db, pipeline, 1))
        await asyncio.sleep(0.3)
        # Later batches: an older fetch and a redelivery of the same one change nothing.
        await publish(amqp_connection, pipeline, queues.records, [record("k", b'"old"', older)])
        await publish(amqp_connection, pipeline, queues.records, [record("k", b'"new"', newer)])
        await publish(amqp_connection, pipeline, queues.records, [record("z", b"0", older)])
        await eventually(lambda: _has(db, pipeline, 2))
    assert (await rows(db, pipeline))["k"] == ("new", newer)
    written_at = await db.fetchval(
        "SELECT written_at FROM records WHERE pipeline = $1 AND key = 'k'", pipeline
    )
    assert written_at is not None


async def test_bad_messages_and_refused_rows_are_dead_lettered_and_neighbours_land(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    good = [record(f"good{i}", b"{}", T0) for i in range(6)]
    await publish(
        amqp_connection,
        pipeline,
        queues.records,
        [
            good[0],
            b"this is not json",
            good[1],
            # jsonb cannot hold a NUL character: PostgreSQL refuses this row alone.
            record("nul", b'{"s": "a\\u0000b"}', T0),
            good[2],
            record("", b"{}", T0),
            good[3],
        ],
    )
    await publish(amqp_connection, pipeline, queues.records, [good[4]], content_encoding="br")
    await publish(amqp_connection, pipeline, queues.records, [good[5]])
    async with writer(services, database_url, pipeline, batch_size=50, batch_timeout=0.2):
        await eventually(lambda: _has(db, pipeline, 5), what="the good rows")
        await eventually(lambda: _dead(amqp_connection, queues.dead, 4), what="4 dead letters")
    assert set(await rows(db, pipeline)) == {"good0", "good1", "good2", "good3", "good5"}
    dead = await drain(amqp_connection, queues.dead)
    reasons = sorted(str((m.headers or {})["x-sluiceway-reason"]) for m in dead)
    assert len(reasons) == 4
    assert reasons[0].startswith("22P05")  # untranslatable character, from PostgreSQL
    assert any("not JSON" in r for r in reasons)
    assert any('no "key"' in r for r in reasons)
    assert any("content_encoding 'br'" in r for r in reasons)
    assert await depth(amqp_connection, queues.records) == 0


async def _dead(connection: AbstractConnection, queue: str, n: int) -> bool:
    return await depth(connection, queue) >= n
