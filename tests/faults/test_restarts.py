"""RabbitMQ and PostgreSQL restarted under a running pipeline (`make test-faults` only: a
restart breaks every other test run sharing the service, so these never run in `make
test`). Each restart is undone in a ``finally`` should the test fail midway."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import aio_pika
import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import ServiceUrls
from tests.e2e.conftest import Processes
from tests.faults.harness import (
    Pipeline,
    Upstream,
    check_table,
    count_rows,
    enqueue,
    expected,
    sample_keys,
    settled,
)
from tests.integration.helpers import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.restarts]
PG_CLUSTER = os.environ.get("SLUICEWAY_TEST_PG_CLUSTER", "15 main").split()


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def _needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not found: the service is not local")


async def test_rabbitmq_restarted_mid_stream(
    processes: Processes,
    services: ServiceUrls,
    pipeline: str,
    database_url: str,
    redis_client: aioredis.Redis,
) -> None:
    """Durable quorum queues and persistent messages survive the broker's restart; the
    services' robust connections come back by themselves."""
    _needs("rabbitmqctl")
    keys = sample_keys("m", 1500)
    landing, failing = expected(keys)
    upstream = Upstream()
    db = await asyncpg.connect(database_url)
    try:
        async with upstream.serving() as source:
            pipe = Pipeline(processes, source)
            writer = pipe.writer()
            fetcher = pipe.fetcher(SLUICEWAY_RATE_LIMIT="150")
            amqp = await aio_pika.connect(services.amqp)
            await enqueue(amqp, pipeline, keys)
            await amqp.close()

            async def streaming() -> bool:
                return await count_rows(db, pipeline) > 300

            await eventually(streaming, within=60, what="rows before the restart")
            try:
                _run("rabbitmqctl", "stop_app")
                await asyncio.sleep(2)
            finally:
                _run("rabbitmqctl", "start_app")
                _run("rabbitmqctl", "await_startup")
            amqp = await aio_pika.connect(services.amqp)
            try:
                await settled(db, redis_client, amqp, pipeline, len(keys), within=120,
                              alive=(writer, fetcher))  # fmt: skip
                await check_table(
                    "RabbitMQ restarted", db, redis_client, amqp, pipeline, landing, failing,
                    note="stop_app, 2 s, start_app, mid-stream",
                )  # fmt: skip
            finally:
                await amqp.close()
    finally:
        await db.close()


async def test_postgresql_restarted_mid_stream(
    processes: Processes,
    services: ServiceUrls,
    pipeline: str,
    database_url: str,
    redis_client: aioredis.Redis,
) -> None:
    """The writer retries through the restart and dead-letters nothing."""
    _needs("pg_ctlcluster")
    keys = sample_keys("g", 1500)
    landing, failing = expected(keys)
    upstream = Upstream()
    amqp = await aio_pika.connect(services.amqp)
    try:
        async with upstream.serving() as source:
            pipe = Pipeline(processes, source)
            writer = pipe.writer()
            fetcher = pipe.fetcher(SLUICEWAY_RATE_LIMIT="150")
            await enqueue(amqp, pipeline, keys)
            db = await asyncpg.connect(database_url)
            try:

                async def streaming() -> bool:
                    return await count_rows(db, pipeline) > 300

                await eventually(streaming, within=60, what="rows before the restart")
            finally:
                await db.close()
            try:
                _run("pg_ctlcluster", *PG_CLUSTER, "stop", "-m", "fast")
                await asyncio.sleep(2)
            finally:
                _run("pg_ctlcluster", *PG_CLUSTER, "start")
            db = await asyncpg.connect(database_url)
            try:
                await settled(db, redis_client, amqp, pipeline, len(keys), within=120,
                              alive=(writer, fetcher))  # fmt: skip
                assert "database write failed, retrying" in pipe.logs("writer")
                await check_table(
                    "PostgreSQL restarted", db, redis_client, amqp, pipeline, landing, failing,
                    note="stopped (fast) for 2 s mid-stream, then started",
                )  # fmt: skip
            finally:
                await db.close()
    finally:
        await amqp.close()
