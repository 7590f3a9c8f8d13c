"""Buffered write mode: writers append to records_buffer, one merger at a time moves rows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aio_pika.abc import AbstractConnection

from sluiceway_admin.reading import collect
from sluiceway_common import topology
from sluiceway_writer.merger import LOCK, Merger
from tests.conftest import ServiceUrls
from tests.integration.helpers import TcpProxy, depth, eventually, publish, record
from tests.integration.test_writer import packed, rows, writer

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)


async def buffered(db: asyncpg.Connection, pipeline: str) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM records_buffer WHERE pipeline = $1", pipeline)
    return n


async def buffer(db: asyncpg.Connection, pipeline: str, *rows_: tuple[str, int]) -> None:
    await db.copy_records_to_table(
        "records_buffer",
        records=[(pipeline, key, json.dumps({"v": v}), T0 + timedelta(seconds=v))
                 for key, v in rows_],
        columns=("pipeline", "key", "payload", "fetched_at"),
    )  # fmt: skip


async def test_merge_moves_the_newest_of_each_key_and_empties_the_buffer(
    database_url: str, pipeline: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO records (pipeline, key, payload, fetched_at) VALUES ($1, 'old', '1', $2), "
        "($1, 'kept', '{\"v\": 9}', $3)",
        pipeline, T0, T0 + timedelta(seconds=9),
    )  # fmt: skip
    await buffer(db, pipeline, ("a", 1), ("a", 3), ("a", 2), ("old", 5), ("kept", 4))
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        merger = Merger(pool, pipeline, interval=1, limit=2)
        await merger.drain()  # in steps of 2: the limit is honoured and the loop drains
        assert merger.moved == 5
    finally:
        await pool.close()
    assert await buffered(db, pipeline) == 0
    landed = await rows(db, pipeline)
    assert landed["a"] == ({"v": 3}, T0 + timedelta(seconds=3))
    assert landed["old"] == ({"v": 5}, T0 + timedelta(seconds=5))
    assert landed["kept"] == ({"v": 9}, T0 + timedelta(seconds=9))  # older buffered row lost


async def test_only_one_merger_at_a_time(
    services: ServiceUrls, database_url: str, pipeline: str, db: asyncpg.Connection
) -> None:
    await buffer(db, pipeline, ("a", 1))
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        merger = Merger(pool, pipeline, interval=1)
        async with db.transaction():
            assert await db.fetchval(LOCK, pipeline)  # another merger is at work
            assert await merger.merge_once() is None
            assert await buffered(db, pipeline) == 1
        status = await collect(database_url, services.amqp, services.redis, pipeline)
        assert status.buffered == 1
        assert await merger.merge_once() == 1
    finally:
        await pool.close()


async def test_buffered_writers_on_overlapping_keys_land_the_newest(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    keys = [f"k{i:03d}" for i in range(150)]
    bodies = [
        record(k, b'{"v": %d}' % v, T0 + timedelta(seconds=v)) for v in range(5) for k in keys
    ]
    random.Random(3).shuffle(bodies)
    await publish(amqp_connection, pipeline, queues.records,
                  [packed(*bodies[i : i + 5]) for i in range(0, len(bodies), 5)])  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):
            await stack.enter_async_context(writer(
                services, database_url, pipeline, batch_size=40, batch_timeout=0.05,
                write_mode="buffered",
            ))  # fmt: skip

        async def merged() -> bool:
            landed = await rows(db, pipeline)
            return len(landed) == len(keys) and all(p == {"v": 4} for p, _ in landed.values())

        await eventually(merged, within=60, what="every key merged at its newest")
    # The last writers merge what they buffered before they exit.
    assert await buffered(db, pipeline) == 0
    assert await depth(amqp_connection, queues.records) == 0
    assert await depth(amqp_connection, queues.dead) == 0


async def test_a_buffered_row_reaches_records_within_the_merge_interval(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    async with writer(services, database_url, pipeline, batch_size=100, batch_timeout=0.05,
                      write_mode="buffered"):  # fmt: skip
        await publish(amqp_connection, pipeline, queues.records, [record("k", b"1", T0)])

        async def visible() -> bool:
            return "k" in await rows(db, pipeline)

        # Batch timeout 0.05 s + merge interval 0.1 s: well inside this hang guard.
        await eventually(visible, within=5)


async def test_a_database_outage_is_said_once_and_merging_resumes_when_it_is_over(
    database_url: str, pipeline: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sluiceway_writer")
    await buffer(db, pipeline, ("a", 1))
    proxy = await TcpProxy(database_url).start()
    pool = await asyncpg.create_pool(proxy.url, min_size=1, max_size=1)
    stop = asyncio.Event()
    merging = None
    try:
        await proxy.cut()
        merging = asyncio.create_task(Merger(pool, pipeline, interval=0.05).run(stop))
        await asyncio.sleep(0.5)  # some ten merges tried and failed
        assert await buffered(db, pipeline) == 1
        await proxy.restore()

        async def merged() -> bool:
            return await buffered(db, pipeline) == 0

        await eventually(merged, what="the buffer merged once the database is back")
    finally:
        stop.set()
        if merging is not None:
            await merging
        await pool.close()
        await proxy.close()
    said = [r.getMessage() for r in caplog.records if r.name == "sluiceway_writer.merger"]
    assert sum(m.startswith("merging the buffer failed, will retry (") for m in said) == 1, said
    assert said.count("merging the buffer again") == 1, said
