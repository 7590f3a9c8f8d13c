"""The sink's write path on real PostgreSQL: concurrent writers and lock order, and a write
the server cuts off."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from sluiceway_common.codec import Record
from sluiceway_writer.sink import DATABASE_ERRORS, Sink, describe, prepare_connection
from tests.integration.helpers import eventually

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)


async def test_concurrent_batches_on_the_same_keys_never_deadlock_nor_lose_the_newest(
    database_url: str, pipeline: str, db: asyncpg.Connection
) -> None:
    keys = [f"k{i:03d}" for i in range(300)]
    rng = random.Random(11)
    pool = await asyncpg.create_pool(database_url, min_size=6, max_size=6, init=prepare_connection)
    sink = Sink(pool, pipeline)
    newest: dict[str, int] = {}

    async def hammer(worker: int) -> None:
        for round_ in range(25):
            # Large batches of the same keys, each in its own random order: without one lock
            # order these transactions wait on each other in cycles.
            batch = rng.sample(keys, 250)
            version = round_ * 10 + worker
            for key in batch:
                newest[key] = max(newest.get(key, -1), version)
            refused = await sink.write(
                [Record(k, json.dumps({"v": version}), T0 + timedelta(seconds=version))
                 for k in batch]
            )  # fmt: skip
            assert refused == []

    try:
        await asyncio.gather(*(hammer(w) for w in range(6)))
    finally:
        await pool.close()
    found = await db.fetch("SELECT key, payload FROM records WHERE pipeline = $1", pipeline)
    assert {r["key"]: json.loads(r["payload"])["v"] for r in found} == newest


async def test_a_write_cut_off_by_the_server_is_described_by_the_servers_reason(
    database_url: str, pipeline: str, db: asyncpg.Connection
) -> None:
    """The writer's backend is terminated while its upsert waits on a lock: asyncpg's failed
    rollback raises over the lost connection, and ``describe`` names the server's reason."""
    name = f"victim-{pipeline}"
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=1, init=prepare_connection,
        server_settings={"application_name": name},
    )  # fmt: skip
    sink = Sink(pool, pipeline)
    blocker = await asyncpg.connect(database_url)
    try:
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("LOCK TABLE records IN ACCESS EXCLUSIVE MODE")
        writing = asyncio.create_task(sink.write([Record("k", "{}", T0)]))

        async def waiting_on_the_lock() -> bool:
            n: int = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                " AND wait_event_type = 'Lock'",
                name,
            )
            return n > 0

        await eventually(waiting_on_the_lock, what="the upsert waiting on the lock")
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            name,
        )
        with pytest.raises(DATABASE_ERRORS) as raised:
            await writing
        await locked.rollback()
    finally:
        await blocker.close()
        await pool.close()
    said = describe(raised.value)
    assert "terminating connection due to administrator command" in said, said
    assert await db.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline) == 0
