"""Connections cut under a running pipeline: the broker's mid-publish and mid-batch (a TCP
proxy between the services and RabbitMQ), PostgreSQL's mid-transaction
(``pg_terminate_backend``), Redis's for a while. Nothing is lost or doubled, nothing is
dead-lettered because a service was away."""

from __future__ import annotations

import asyncio
import bisect
import json
import random
import time

import asyncpg
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from tests.conftest import ServiceUrls
from tests.e2e.conftest import Processes
from tests.faults.harness import (
    Pipeline,
    Upstream,
    check_table,
    enqueue,
    expected,
    rows_grow,
    sample_keys,
    settled,
)
from tests.integration.helpers import TcpProxy, eventually

pytestmark = pytest.mark.e2e


async def test_broker_connections_cut_mid_publish_and_mid_batch(
    processes: Processes,
    services: ServiceUrls,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    """The fetcher and the writer reach RabbitMQ through a proxy that is cut twice while
    records stream, each time for a second (the robust connections come back by themselves)."""
    rng = random.Random(11)
    keys = sample_keys("b", 1500)
    landing, failing = expected(keys)
    upstream = Upstream()
    proxy = await TcpProxy(services.amqp).start()
    try:
        async with upstream.serving() as source:
            pipe = Pipeline(processes, source)
            writer = pipe.writer(SLUICEWAY_AMQP_URL=proxy.url)
            fetcher = pipe.fetcher(SLUICEWAY_AMQP_URL=proxy.url, SLUICEWAY_RATE_LIMIT="200")
            await enqueue(amqp_connection, pipeline, keys)
            for cut in range(2):
                await rows_grow(db, pipeline, f"rows before cut {cut}")
                await asyncio.sleep(rng.uniform(0, 0.5))
                await proxy.cut()
                await asyncio.sleep(1)
                await proxy.restore()
            await settled(db, redis_client, amqp_connection, pipeline, len(keys),
                          alive=(fetcher, writer))  # fmt: skip
            await _said_the_cuts(pipe, proxy)  # before the proxy's close cuts them once more
    finally:
        await proxy.close()
    await check_table(
        "broker connections cut", db, redis_client, amqp_connection, pipeline,
        landing, failing, note="2 cuts of 1 s, fetcher and writer both",
    )  # fmt: skip


async def _said_the_cuts(pipe: Pipeline, proxy: TcpProxy) -> None:
    """Each process said it lost the broker (the password masked) and, once it is back, that
    it reconnected; aio-pika's errors about its internals are kept out."""
    for role in ("fetcher", "writer"):

        async def back(role: str = role) -> bool:
            said = [json.loads(line) for line in pipe.logs(role).splitlines() if line[:1] == "{"]
            warned = [line["msg"] for line in said if line["level"] in ("warning", "error")]
            assert not [msg for msg in warned if "RobustChannel" in msg], warned
            events: list[str] = [line["msg"] for line in said if "RabbitMQ at" in line["msg"]]
            assert events, said
            for msg in events:
                assert f":***@127.0.0.1:{proxy.port}/" in msg
            assert events[0].startswith("lost the connection to RabbitMQ"), events
            return events[-1].startswith("reconnected to RabbitMQ")

        await eventually(back, what=f"the {role} saying it reconnected")


async def test_postgresql_connections_terminated_mid_transaction(
    processes: Processes,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    """Five times while the writer writes, its connection (through a proxy) is held while
    a batch's transaction is open, and that backend is terminated; it retries, and nothing is
    dead-lettered."""
    rng = random.Random(5)
    keys = sample_keys("p", 1500)
    landing, failing = expected(keys)
    name = f"fault-{pipeline}"
    upstream = Upstream()
    proxy = await TcpProxy(database_url).start()
    try:
        async with upstream.serving() as source:
            pipe = Pipeline(processes, source)
            writer = pipe.writer(SLUICEWAY_DATABASE_URL=f"{proxy.url}?application_name={name}")
            fetcher = pipe.fetcher(SLUICEWAY_RATE_LIMIT="150")
            await enqueue(amqp_connection, pipeline, keys)
            for _ in range(5):
                await rows_grow(db, pipeline, "rows between terminations")
                await asyncio.sleep(rng.uniform(0, 0.3))
                await _terminate_mid_transaction(db, proxy, name)
            await settled(db, redis_client, amqp_connection, pipeline, len(keys),
                          alive=(fetcher, writer))  # fmt: skip
    finally:
        await proxy.close()
    assert "database write failed, retrying" in pipe.logs("writer")
    await check_table(
        "PostgreSQL connections terminated", db, redis_client, amqp_connection, pipeline,
        landing, failing, note="5 backends terminated mid-transaction",
    )  # fmt: skip


async def _terminate_mid_transaction(db: asyncpg.Connection, proxy: TcpProxy, name: str) -> None:
    """Hold the answers to the writer's statements and terminate its backend once it is
    running a statement or inside a transaction (an idle one the pool would quietly
    replace). A hold that lands while the backend is idle (the answer to a COMMIT or to the
    pool's reset on its way back) leaves it idle, so it is released and tried again."""
    for _ in range(20):
        proxy.hold("client")
        try:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                n: int = await db.fetchval(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid)"
                    " FROM pg_stat_activity WHERE application_name = $1"
                    " AND state IN ('active', 'idle in transaction')) AS t",
                    name,
                )
                if n > 0:
                    return
                await asyncio.sleep(0.05)
        finally:
            proxy.release()
        await asyncio.sleep(0.1)
    raise AssertionError("the writer's backend was never caught mid-transaction in 20 holds")


async def test_redis_away_for_a_while_pauses_fetching_then_resumes(
    processes: Processes,
    services: ServiceUrls,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    """Redis is cut off from the fetchers for 3 s mid-stream: no request reaches the
    upstream while the limit cannot be known (bar those already given their slot), then
    fetching resumes within the limit."""
    keys = sample_keys("d", 900)
    landing, failing = expected(keys)
    upstream = Upstream()
    proxy = await TcpProxy(services.redis).start()
    try:
        async with upstream.serving() as source:
            pipe = Pipeline(processes, source)
            writer = pipe.writer()
            fetchers = [
                pipe.fetcher(SLUICEWAY_REDIS_URL=proxy.url, SLUICEWAY_RATE_LIMIT="150")
                for _ in range(2)
            ]
            await enqueue(amqp_connection, pipeline, keys)

            async def fetching() -> bool:
                return len(upstream.arrivals) > 150

            await eventually(fetching, within=30, what="fetching under way")
            await proxy.cut()
            cut_at = asyncio.get_running_loop().time()
            await asyncio.sleep(3)
            during = [t for t, _, _ in upstream.arrivals if t > cut_at + 0.2]
            await proxy.restore()
            await settled(db, redis_client, amqp_connection, pipeline, len(keys),
                          alive=(writer, *fetchers))  # fmt: skip
    finally:
        await proxy.close()
    assert during == []
    times = sorted(t for t, _, _ in upstream.arrivals)
    assert max(_most_in_one_second(times)) <= 150 * 1.05 + 1
    await check_table(
        "Redis away 3 s", db, redis_client, amqp_connection, pipeline, landing, failing,
        note="2 fetchers; 0 requests while away",
    )  # fmt: skip


def _most_in_one_second(times: list[float]) -> list[int]:
    return [bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times)]
