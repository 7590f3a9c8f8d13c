"""The whole pipeline as separate processes on real services, checked row by row."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from sluiceway_admin.demo import demo_keys
from sluiceway_common import codec, store, topology
from sluiceway_sample_api.data import is_missing, user
from tests.e2e.conftest import Processes, sample_api
from tests.integration.helpers import depth, drain, eventually, failed_keys, publish

pytestmark = pytest.mark.e2e


async def landed(db: asyncpg.Connection, client: aioredis.Redis, pipeline: str) -> int:
    rows: int = await db.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline)
    return rows + int(await client.scard(store.failed_set(pipeline)))


async def test_keys_in_rows_out(
    processes: Processes,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    keys = [f"user-{i}" for i in range(600)] + ["team 1/Zoë", "50% off", "../admin", "a?b=c#d"]
    missing = {k for k in keys if is_missing(k, 0.05)}
    api, base = sample_api(processes, "--sample-not-found-rate", "0.05")
    writer = processes.start(
        "writer", "writer", SLUICEWAY_BATCH_SIZE="64", SLUICEWAY_BATCH_TIMEOUT="0.2"
    )
    fetcher = processes.start(
        "fetcher",
        "fetcher",
        SLUICEWAY_SOURCE_URL=base + "/users/{key}",
        SLUICEWAY_RATE_LIMIT="2000",
    )
    enqueued = processes.run("enqueue", "-", stdin="\n".join(keys).encode())
    assert enqueued.returncode == 0, enqueued.stderr

    async def all_landed() -> bool:
        for name, process in (("writer", writer), ("fetcher", fetcher)):
            assert process.poll() is None, processes.log(name)
        return await landed(db, redis_client, pipeline) >= len(keys)

    await eventually(all_landed, within=90, what="every key landed or failed")
    for process in (fetcher, writer, api):
        assert processes.terminate(process) == 0
    assert "fetcher stopped: " in processes.log("fetcher")
    assert "writer stopped: " in processes.log("writer")

    rows = {
        r["key"]: json.loads(r["payload"])
        for r in await db.fetch("SELECT key, payload FROM records WHERE pipeline = $1", pipeline)
    }
    assert set(rows) == set(keys) - missing
    for key, payload in rows.items():
        assert payload == user(key), key
    failed = await failed_keys(redis_client, pipeline)
    assert failed == missing

    status = json.loads(processes.run("status", "--json").stdout)
    assert status["rows"] == len(keys) - len(missing)
    assert status["failed"] == len(missing)
    assert all(q["ready"] == 0 for q in status["queues"])


async def test_writer_flushes_what_it_holds_on_sigterm(
    processes: Processes,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    at = datetime.now(UTC)
    writer = processes.start(
        "writer", "writer", SLUICEWAY_BATCH_SIZE="1000", SLUICEWAY_BATCH_TIMEOUT="600"
    )
    await publish(
        amqp_connection,
        pipeline,
        queues.records,
        [codec.encode_record(f"k{i}", b"{}", at) for i in range(30)],
    )

    async def held_by_writer() -> bool:
        assert writer.poll() is None, processes.log("writer")
        return await depth(amqp_connection, queues.records) == 0

    await eventually(held_by_writer, what="the writer to hold every record")
    assert await db.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline) == 0
    assert processes.terminate(writer) == 0
    assert await db.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline) == 30
    assert await depth(amqp_connection, queues.records) == 0  # acked after the commit
    assert "30 rows written in 1 batches" in processes.log("writer")


async def test_fetcher_on_sigterm_finishes_what_it_holds_and_loses_nothing(
    processes: Processes,
    pipeline: str,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    api, base = sample_api(processes, "--sample-latency-ms", "200")
    keys = [f"k{i}" for i in range(300)]
    await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task(k) for k in keys])
    fetcher = processes.start(
        "fetcher",
        "fetcher",
        SLUICEWAY_SOURCE_URL=base + "/users/{key}",
        SLUICEWAY_RATE_LIMIT="1000",
        SLUICEWAY_CONCURRENCY="16",
    )

    async def some_fetched() -> bool:
        assert fetcher.poll() is None, processes.log("fetcher")
        return await depth(amqp_connection, queues.records) >= 2

    await eventually(some_fetched, what="the first records")
    assert processes.terminate(fetcher) == 0
    remaining = await depth(amqp_connection, queues.fetch)
    records = sum(
        len(codec.decode_message(m.body, m.content_encoding, 1 << 24).records)
        for m in await drain(amqp_connection, queues.records)
    )
    assert 2 <= records < 300
    # Every task was either turned into a record and acked, or went back to the queue.
    assert records + remaining == 300
    assert processes.terminate(api) == 0


def test_make_run_demo_checks_the_table(processes: Processes, tmp_path: Path) -> None:
    result = processes.run(
        "demo",
        "--demo-keys",
        "400",
        "--demo-log-dir",
        str(tmp_path),
        "--pipeline",
        processes.env["SLUICEWAY_PIPELINE"],
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified: every row matches" in result.stdout
    # The live view of `sluiceway status --watch`, printed plainly since stdout is a pipe.
    assert "keys done" in result.stdout
    assert "ETA to drain" in result.stdout
    assert "\x1b" not in result.stdout
    missing = sum(is_missing(key, 0.01) for key in demo_keys(400))
    assert f"landed {400 - missing:,} rows, {missing:,} keys failed" in result.stdout
