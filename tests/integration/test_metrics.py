"""The fetcher's and the writer's metrics and probes, scraped over HTTP while they work."""

from __future__ import annotations

import json
import time

import asyncpg
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from sluiceway_common import codec, store, topology
from sluiceway_sample_api.data import is_missing
from sluiceway_sample_api.server import Behaviour, make_app
from tests.conftest import ServiceUrls
from tests.integration.helpers import (
    Scrape,
    TcpProxy,
    depth,
    depth_is,
    eventually,
    free_port,
    get,
    http_server,
    publish,
    running_fetcher,
    running_writer,
    scrape,
    until_ready,
)

pytestmark = pytest.mark.integration


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def test_metrics_count_what_the_fetcher_and_the_writer_did(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    queues = topology.Queues(pipeline)
    keys = [f"user-{i}" for i in range(80)]
    missing = {k for k in keys if is_missing(k, 0.2)}
    found = len(keys) - len(missing)
    assert missing
    p = {"pipeline": pipeline}
    fetcher_port, writer_port = free_port(), free_port()
    async with (
        http_server(make_app(Behaviour(not_found_rate=0.2))) as base,
        running_writer(
            database_url, services.amqp, pipeline, batch_size=16, batch_timeout=0.1,
            metrics_port=writer_port,
        ),
        running_fetcher(
            services.amqp, services.redis, pipeline, base + "/users/{key}",
            linger_ms=5, metrics_port=fetcher_port,
        ),
    ):  # fmt: skip
        await until_ready(fetcher_port, writer_port)
        fetcher_before, writer_before = await scrape(fetcher_port), await scrape(writer_port)
        await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task(k) for k in keys])
        await publish(amqp_connection, pipeline, queues.records, [b"not a record"])

        async def all_done() -> bool:
            rows = await db.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline)
            failed = await redis_client.scard(store.failed_set(pipeline))
            return bool(rows == found and failed == len(missing))

        await eventually(all_done, what="every key landed or failed")

        async def counted() -> bool:
            # A row is in the table, and a key in the failed set, a moment before the
            # counters move; the last batch's rows (here, perhaps, only the bad message) are
            # counted once it is flushed, and a task leaves the fetcher's hands once acked.
            fetcher, writer = await scrape(fetcher_port), await scrape(writer_port)
            return (
                moved(writer_before, writer, "sluiceway_records_consumed_total", **p) == found + 1
                and moved(writer_before, writer, "sluiceway_batch_rows_sum", **p) == found + 1
                and moved(fetcher_before, fetcher, "sluiceway_keys_failed_total", **p)
                == len(missing)
                and fetcher.value("sluiceway_fetch_tasks_in_hand", **p) == 0
            )

        await eventually(counted, what="the counts up to date")
        fetcher_after, writer_after = await scrape(fetcher_port), await scrape(writer_port)

    def fetched(name: str, **labels: str) -> float:
        return moved(fetcher_before, fetcher_after, name, **p, **labels)

    def written(name: str, **labels: str) -> float:
        return moved(writer_before, writer_after, name, **p, **labels)

    assert fetched("sluiceway_fetches_total", outcome="ok", status="200") == found
    assert fetched("sluiceway_fetches_total", outcome="http_error", status="404") == len(missing)
    assert fetched("sluiceway_fetch_duration_seconds_count") == len(keys)
    assert fetched("sluiceway_rate_limit_wait_seconds_count") == len(keys)
    assert fetched("sluiceway_records_published_total") == found
    assert fetched("sluiceway_keys_failed_total") == len(missing)
    assert fetched("sluiceway_fetch_retries_total") == 0
    messages = fetched("sluiceway_record_messages_total")
    assert 1 <= messages <= found
    assert fetcher_after.value("sluiceway_fetch_tasks_in_hand", **p) == 0

    assert written("sluiceway_messages_consumed_total") == messages + 1
    assert written("sluiceway_rows_written_total") == found
    assert written("sluiceway_rows_dead_lettered_total", cause="undecodable") == 1
    assert written("sluiceway_rows_dead_lettered_total", cause="refused") == 0
    assert written("sluiceway_batch_rows_sum") == found + 1
    batches = written("sluiceway_batch_rows_count")
    assert batches >= (found + 1) / 16
    assert written("sluiceway_flush_duration_seconds_count") == batches
    assert written("sluiceway_write_retries_total") == 0
    # No label holds a key or a URL.
    for page in (fetcher_after, writer_after):
        assert "user-" not in page.text
        assert "127.0.0.1" not in page.text


async def test_the_fetcher_is_unready_while_redis_or_the_broker_is_away(
    services: ServiceUrls, pipeline: str
) -> None:
    redis_proxy = await TcpProxy(services.redis).start()
    amqp_proxy = await TcpProxy(services.amqp).start()
    port = free_port()

    async def readiness(status: int, broken: str | None) -> bool:
        code, body = await get(port, "/readyz")
        if code != status:
            return False
        checks = json.loads(body)["checks"]
        return {k for k, v in checks.items() if v != "ok"} == ({broken} if broken else set())

    try:
        async with running_fetcher(
            amqp_proxy.url, redis_proxy.url, pipeline, "http://127.0.0.1:9/{key}",
            metrics_port=port,
        ):  # fmt: skip
            await eventually(lambda: readiness(200, None), what="ready")
            assert (await get(port, "/healthz"))[0] == 200
            await redis_proxy.cut()
            await eventually(lambda: readiness(503, "redis"), what="unready without Redis")
            await redis_proxy.restore()
            await eventually(lambda: readiness(200, None), what="ready with Redis back")
            await amqp_proxy.cut()
            await eventually(lambda: readiness(503, "rabbitmq"), what="unready without the broker")
            await amqp_proxy.restore()
            await eventually(lambda: readiness(200, None), what="ready with the broker back")
    finally:
        await redis_proxy.close()
        await amqp_proxy.close()


async def test_the_writer_is_unready_while_the_database_is_away_or_behind(
    services: ServiceUrls, database_url: str, pipeline: str, db: asyncpg.Connection
) -> None:
    db_proxy = await TcpProxy(database_url).start()
    port = free_port()

    async def readiness(status: int, broken: str | None) -> str:
        code, body = await get(port, "/readyz")
        if code != status:
            return ""
        checks = json.loads(body)["checks"]
        failing = {k for k, v in checks.items() if v != "ok"}
        assert failing <= {"postgresql"}
        return checks["postgresql"] if failing == (
            {broken} if broken else set()
        ) else ""  # fmt: skip

    async def check(status: int, broken: str | None) -> bool:
        return bool(await readiness(status, broken))

    revision = await db.fetchval("SELECT version_num FROM alembic_version")
    try:
        async with running_writer(
            db_proxy.url, services.amqp, pipeline, batch_size=10, batch_timeout=0.1,
            metrics_port=port,
        ):  # fmt: skip
            await eventually(lambda: check(200, None), what="ready")
            await db_proxy.cut()
            await eventually(lambda: check(503, "postgresql"), what="unready without PostgreSQL")
            await db_proxy.restore()
            await eventually(lambda: check(200, None), what="ready with PostgreSQL back")
            # Another writer's migration moved the schema on: this one is behind it.
            await db.execute("UPDATE alembic_version SET version_num = 'f00d'")
            await eventually(lambda: check(503, "postgresql"), what="unready when behind")
            assert "f00d" in await readiness(503, "postgresql")
            await db.execute("UPDATE alembic_version SET version_num = $1", revision)
            await eventually(lambda: check(200, None), what="ready at head again")
    finally:
        await db.execute("UPDATE alembic_version SET version_num = $1", revision)
        await db_proxy.close()


@pytest.mark.parametrize("role", ["fetcher", "writer"])
async def test_a_stop_while_the_broker_is_away_still_ends_cleanly(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    role: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stopped while its broker connection is lost and not yet back, a fetcher or writer
    stops with status 0 (checked on leaving ``running_*``): the lost channel took its
    consumer with it, and its unacknowledged deliveries go back to the queue. Before, it
    waited for the broker to cancel that consumer, however long the outage. The loss is
    said once, not again at each reconnection attempt that fails meanwhile."""
    proxy = await TcpProxy(services.amqp).start()
    port = free_port()

    async def ready(code: int) -> bool:
        return (await get(port, "/readyz"))[0] == code

    serving = (
        running_fetcher(proxy.url, services.redis, pipeline, "http://127.0.0.1:9/{key}",
                        metrics_port=port)
        if role == "fetcher"
        else running_writer(database_url, proxy.url, pipeline, batch_size=10,
                            batch_timeout=0.1, metrics_port=port)
    )  # fmt: skip
    try:
        async with serving:
            await eventually(lambda: ready(200), what="ready")
            await proxy.cut()
            await eventually(lambda: ready(503), what="unready without the broker")

            async def attempt_failed() -> bool:
                return "Reconnecting after" in caplog.text

            await eventually(attempt_failed, what="a reconnection attempt failing")
    finally:
        await proxy.close()
    assert caplog.text.count("lost the connection to RabbitMQ") == 1, caplog.text
    assert "stopping without the broker" in caplog.text


async def test_a_fetcher_stopped_with_records_unpublished_while_the_broker_is_away_stops(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    """The broker goes away while requests are in flight; their records cannot be published.
    Told to stop, the fetcher gives up on them within its bounds and stops with status 0
    (checked on leaving ``running_fetcher``); their tasks, never acknowledged, are all still
    in the fetch queue afterwards. Before, it waited for the broker however long it took."""
    queues = topology.Queues(pipeline)
    keys = [f"user-{i}" for i in range(8)]
    behaviour = Behaviour(latency=1.0)
    proxy = await TcpProxy(services.amqp).start()
    try:
        async with (
            http_server(make_app(behaviour)) as base,
            running_fetcher(proxy.url, services.redis, pipeline, base + "/users/{key}"),
        ):
            await publish(amqp_connection, pipeline, queues.fetch,
                          [codec.encode_task(k) for k in keys])  # fmt: skip

            async def all_in_flight() -> bool:
                return await depth(amqp_connection, queues.fetch) == 0

            await eventually(all_in_flight, what="every task taken by the fetcher")
            await proxy.cut()
            stopping = time.monotonic()
        took = time.monotonic() - stopping
    finally:
        await proxy.close()
    assert took < 20, took
    await eventually(lambda: depth_is(amqp_connection, queues.fetch, len(keys)),
                     what="every task back in the fetch queue")  # fmt: skip
    assert await depth(amqp_connection, queues.records) == 0
    assert await redis_client.scard(store.failed_set(pipeline)) == 0
