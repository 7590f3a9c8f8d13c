"""The upstream in trouble for a while: every answer a 503, a 429 with Retry-After to every
fetcher, answers that never come. Keys are retried on the delay queues and land once the
upstream recovers; a key that never gets an answer fails with its reason."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from tests.e2e.conftest import Processes
from tests.faults.harness import (
    Pipeline,
    Upstream,
    check_table,
    enqueue,
    expected,
    sample_keys,
    settled,
)
from tests.integration.helpers import eventually

pytestmark = pytest.mark.e2e


async def test_all_503_for_a_while_then_recovery(
    processes: Processes,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    keys = sample_keys("u", 600)
    landing, failing = expected(keys)
    upstream = Upstream()
    async with upstream.serving() as source:
        pipe = Pipeline(processes, source)
        writer = pipe.writer()
        upstream.set_mode("503")
        fetchers = [pipe.fetcher(SLUICEWAY_MAX_ATTEMPTS="12") for _ in range(2)]
        await enqueue(amqp_connection, pipeline, keys)

        async def every_key_refused() -> bool:
            return len(upstream.attempts) == len(keys)

        # The storm lasts until every key met it, and 2 s at least (retries meet it too).
        await eventually(every_key_refused, within=60, what="a 503 for every key")
        await asyncio.sleep(max(0.0, 2 - (time.monotonic() - upstream.arrivals[0][0])))
        upstream.set_mode("ok")
        await settled(db, redis_client, amqp_connection, pipeline, len(keys), within=180,
                      alive=(writer, *fetchers))  # fmt: skip
    storm = sum(status == 503 for _, _, status in upstream.arrivals)
    assert storm >= len(keys)
    await check_table(
        "upstream all 503 for 2 s", db, redis_client, amqp_connection, pipeline,
        landing, failing, note=f"2 fetchers; {storm} answers were 503",
    )  # fmt: skip


async def test_429_with_retry_after_pauses_every_replica(
    processes: Processes,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    """Three fetchers; the upstream answers 429 with Retry-After: 2 for a moment. No
    request arrives from any of them until the pause is over (bar those already in flight)."""
    keys = sample_keys("q", 600)
    landing, failing = expected(keys)
    upstream = Upstream(retry_after=2)
    async with upstream.serving() as source:
        pipe = Pipeline(processes, source)
        writer = pipe.writer()
        fetchers = [pipe.fetcher(SLUICEWAY_RATE_LIMIT="200") for _ in range(3)]
        await enqueue(amqp_connection, pipeline, keys)

        async def fetching() -> bool:
            return len(upstream.arrivals) > 100

        await eventually(fetching, what="fetching under way")
        upstream.set_mode("429")
        await asyncio.sleep(0.3)
        upstream.set_mode("ok")
        await settled(db, redis_client, amqp_connection, pipeline, len(keys),
                      alive=(writer, *fetchers))  # fmt: skip
    first = min(t for t, _, status in upstream.arrivals if status == 429)
    # Requests already given their slot may still arrive just after the first 429.
    inside = [t for t, _, _ in upstream.arrivals if first + 0.3 < t < first + 1.9]
    assert inside == []
    await check_table(
        "upstream 429 Retry-After to 3 fetchers", db, redis_client, amqp_connection,
        pipeline, landing, failing, note="no request inside the 2 s pause",
    )  # fmt: skip


async def test_answers_that_never_come_time_out_and_are_retried(
    processes: Processes,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    """For 2 s no answer comes at all; each request times out after 1 s and its key is
    retried. Keys whose every attempt hangs fail with reason "timeout"."""
    keys = sample_keys("h", 300)
    hanging = sample_keys("forever", 5)
    landing, failing = expected(keys)
    failing |= dict.fromkeys(hanging, "timeout")
    upstream = Upstream()
    upstream.hang_keys = set(hanging)
    async with upstream.serving() as source:
        pipe = Pipeline(processes, source)
        writer = pipe.writer()
        upstream.set_mode("hang")
        fetcher = pipe.fetcher(SLUICEWAY_REQUEST_TIMEOUT="1", SLUICEWAY_MAX_ATTEMPTS="4",
                               SLUICEWAY_CONCURRENCY="400")  # fmt: skip
        await enqueue(amqp_connection, pipeline, keys + hanging)
        await asyncio.sleep(2)
        upstream.set_mode("ok")
        await settled(db, redis_client, amqp_connection, pipeline, len(keys) + len(hanging),
                      within=120, alive=(writer, fetcher))  # fmt: skip
    await check_table(
        "upstream answers never come", db, redis_client, amqp_connection, pipeline,
        landing, failing, note="2 s of hangs, 1 s timeout; 5 keys hang forever",
    )  # fmt: skip
