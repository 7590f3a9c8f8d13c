"""The sink's write path on real PostgreSQL: concurrent writers and lock order."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from sluiceway_common.codec import Record
from sluiceway_writer.sink import Sink, prepare_connection

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
