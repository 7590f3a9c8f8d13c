"""Processes killed without warning (SIGKILL) at random points, and restarted; a fetcher
stopped (SIGTERM) while its keys wait out a retry backoff. Nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import os
import random
from subprocess import Popen

import asyncpg
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from sluiceway_common import topology
from tests.conftest import ServiceUrls
from tests.e2e.conftest import Processes
from tests.faults.harness import (
    Pipeline,
    SinkTable,
    Upstream,
    check_table,
    count_rows,
    enqueue,
    expected,
    kill,
    sample_keys,
    settled,
)
from tests.integration.helpers import TcpProxy, depth, eventually

pytestmark = pytest.mark.e2e

# `make test` runs a few seeded runs; `make test-faults` runs SLUICEWAY_FAULT_RUNS of them.
RUNS = int(os.environ.get("SLUICEWAY_FAULT_RUNS", "3"))
KEYS = 1200


# The seeded runs land in records; two more (one direct, one buffered) in a sink table.
@pytest.mark.parametrize(
    ("seed", "sink"), [(seed, False) for seed in range(RUNS)] + [(0, True), (1, True)]
)
async def test_writer_sigkilled_at_random_points_of_a_batch(
    processes: Processes,
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
    seed: int,
    sink: bool,
) -> None:
    """Each run kills the writer three times: twice at a random moment after it landed its
    first batch, once while its database connection holds back a transaction's statements
    (even seeds) or their answers, the commit included (odd seeds). Odd seeds write in
    buffered mode, so a merger dies too. With ``sink`` the rows land in a typed table of
    the user's own (harness.SinkTable)."""
    rng = random.Random(seed)
    mode = ("direct", "buffered")[seed % 2]
    keys = sample_keys(f"s{seed}", KEYS)
    landing, failing = expected(keys)
    upstream = Upstream()
    table = SinkTable(f"Faults {pipeline}") if sink else None
    settings = {"SLUICEWAY_WRITE_MODE": mode, **(table.settings() if table else {})}
    if table is not None:
        await table.create(db)
    proxy = await TcpProxy(database_url).start()
    try:
        async with upstream.serving() as source:
            pipe = Pipeline(processes, source)
            fetcher = pipe.fetcher(SLUICEWAY_RATE_LIMIT="150")
            for kill_number in range(3):
                # A third of the keys for each life, queued as it starts: records the lives
                # before it cannot have written, so each has a first batch to land however
                # slowly the writers start (the fetcher alone takes 8 s for all of them).
                await enqueue(amqp_connection, pipeline, keys[kill_number::3])
                held = kill_number == 2
                writer = pipe.writer(
                    **settings, SLUICEWAY_DATABASE_URL=proxy.url if held else database_url
                )
                before = await _landed(db, pipeline, table)

                async def wrote(before: int = before, writer: Popen[bytes] = writer) -> bool:
                    assert writer.poll() is None, pipe.logs("writer")
                    return await _landed(db, pipeline, table) > before

                await eventually(
                    wrote, within=60, what=f"life {kill_number}: the writer's first batch"
                )
                if held:
                    proxy.hold("service" if seed % 2 == 0 else "client")
                    await asyncio.sleep(0.3 + rng.uniform(0, 0.3))
                else:
                    await asyncio.sleep(rng.uniform(0, 0.6))
                kill(writer)
                proxy.release()
                await proxy.cut()
                await proxy.restore()
            last = pipe.writer(**settings)
            await settled(db, redis_client, amqp_connection, pipeline, len(keys),
                          alive=(fetcher, last), sink=table)  # fmt: skip
        await check_table(
            f"writer SIGKILL ({mode}{', sink table' if sink else ''})", db, redis_client,
            amqp_connection, pipeline, landing, failing, note=f"seed {seed}, 3 kills",
            sink=table,
        )  # fmt: skip
    finally:
        await proxy.close()
        if table is not None:
            await table.drop(db)


async def _landed(db: asyncpg.Connection, pipeline: str, sink: SinkTable | None = None) -> int:
    buffered: int = await db.fetchval(
        "SELECT count(*) FROM records_buffer WHERE pipeline = $1", pipeline
    )
    return await count_rows(db, pipeline, sink) + buffered


async def test_fetcher_sigkilled_mid_request_and_mid_publish(
    processes: Processes,
    services: ServiceUrls,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    """First killed while the upstream holds 20 of its requests unanswered; then killed
    while its broker connection holds back the confirms of records it published."""
    keys = sample_keys("f", 800)
    landing, failing = expected(keys)
    upstream = Upstream(latency=0.3)
    proxy = await TcpProxy(services.amqp).start()
    try:
        async with upstream.serving() as source:
            pipe = Pipeline(processes, source)
            writer = pipe.writer()
            await enqueue(amqp_connection, pipeline, keys)
            fetcher = pipe.fetcher()

            async def requests_in_flight() -> bool:
                return upstream.in_flight >= 20

            await eventually(requests_in_flight, what="requests in flight")
            kill(fetcher)
            fetcher = pipe.fetcher(SLUICEWAY_AMQP_URL=proxy.url)
            queues = topology.Queues(pipeline)
            published = await depth(amqp_connection, queues.records)

            async def publishing() -> bool:
                return (
                    await _landed(db, pipeline) + await depth(amqp_connection, queues.records)
                    > published
                )

            await eventually(publishing, within=30, what="records published")
            proxy.hold("client")  # the confirms stay away: publishes are in mid-air
            await asyncio.sleep(1.0)
            kill(fetcher)
            proxy.release()
            fetcher = pipe.fetcher()
            await settled(db, redis_client, amqp_connection, pipeline, len(keys),
                          alive=(fetcher, writer))  # fmt: skip
    finally:
        await proxy.close()
    await check_table(
        "fetcher SIGKILL", db, redis_client, amqp_connection, pipeline, landing, failing,
        note="mid-request (20 in flight) and mid-publish (confirms held)",
    )  # fmt: skip


async def test_fetcher_sigterm_during_a_retry_backoff(
    processes: Processes,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    """Every first attempt gets a 503; the fetcher is stopped while the retries wait on the
    delay queues. It exits 0 at once, and a new fetcher lands every key."""
    # Few enough that every first attempt comes within the 1 s the first retries wait.
    keys = sample_keys("r", 100)
    landing, failing = expected(keys)
    upstream = Upstream()
    queues = topology.Queues(pipeline)
    async with upstream.serving() as source:
        pipe = Pipeline(processes, source)
        writer = pipe.writer()
        upstream.set_mode("503")
        fetcher = pipe.fetcher()
        await enqueue(amqp_connection, pipeline, keys)

        async def all_tried() -> bool:
            return len(upstream.attempts) == len(keys)

        await eventually(all_tried, what="a first attempt at every key")
        assert await depth(amqp_connection, queues.fetch) == 0
        started = asyncio.get_running_loop().time()
        assert processes.terminate(fetcher, timeout=10) == 0
        assert asyncio.get_running_loop().time() - started < 5
        upstream.set_mode("ok")
        fetcher = pipe.fetcher()
        await settled(db, redis_client, amqp_connection, pipeline, len(keys),
                      alive=(fetcher, writer))  # fmt: skip
    assert "retries queued" in pipe.logs("fetcher")
    await check_table(
        "fetcher SIGTERM in retry backoff", db, redis_client, amqp_connection, pipeline,
        landing, failing, note="every key's first attempt 503",
    )  # fmt: skip
