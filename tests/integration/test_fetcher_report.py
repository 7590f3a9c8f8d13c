"""The fetcher's load report in Redis (``report.py``, ``store.FetcherReports``): what it says,
that a running fetcher keeps it fresh, that a stopped one takes it back and that a dead one's
report expires by itself."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection
from aiohttp import web

from sluiceway_common import codec, store, topology
from sluiceway_fetcher.report import Load, Reporter
from tests.conftest import ServiceUrls
from tests.integration.helpers import eventually, http_server, publish, running_fetcher

pytestmark = pytest.mark.integration


@dataclass
class Busy:
    """A fetcher's counts, moved by hand."""

    load: Load = field(default_factory=Load)
    requesting: int = 0


async def test_a_report_says_the_period_s_fetches_latency_and_waits_and_expires_unrenewed(
    redis_client: aioredis.Redis, pipeline: str
) -> None:
    reports = store.FetcherReports(redis_client, pipeline)
    busy = Busy()
    reporter = Reporter(reports, busy, concurrency=8, every=0.2)
    running = asyncio.create_task(reporter.run())
    try:
        await asyncio.sleep(0)  # the reporter reads its starting sums
        busy.load = Load(fetches=10, fetch_seconds=2.0, waits=10, wait_seconds=0.5)

        async def reported() -> bool:
            return (await reports.read()).get(reporter.name, {}).get("fetches") == 10

        await eventually(reported, what="a report of the 10 fetches")
        load = (await reports.read())[reporter.name]
        assert load["latency"] == pytest.approx(0.2)
        assert load["rate_wait"] == pytest.approx(0.05)
        assert (load["concurrency"], load["in_hand"]) == (8, 0)

        async def idle() -> bool:
            return (await reports.read()).get(reporter.name, {}).get("fetches") == 0

        await eventually(idle, what="the next period's report: no fetches")
        assert (await reports.read())[reporter.name]["latency"] is None
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    # Not renewed (its fetcher died): gone after its ttl, and its name leaves the index.
    async def expired() -> bool:
        return await reports.read() == {}

    await eventually(expired, within=5, what="the report to expire")
    assert await redis_client.scard(store.fetchers(pipeline)) == 0


async def test_a_running_fetcher_reports_its_upstream_latency_and_withdraws_when_it_stops(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.json_response({"id": request.match_info["key"]})

    app = web.Application()
    app.router.add_get("/users/{key}", slow)
    reports = store.FetcherReports(redis_client, pipeline)
    queues = topology.Queues(pipeline)
    async with (
        http_server(app) as base,
        running_fetcher(
            services.amqp, services.redis, pipeline, base + "/users/{key}", rate_limit=100
        ),  # fmt: skip
    ):
        tasks = [codec.encode_task(f"k{i}") for i in range(2000)]
        await publish(amqp_connection, pipeline, queues.fetch, tasks)

        async def measured() -> bool:
            found = list((await reports.read()).values())
            return bool(found) and found[0]["fetches"] > 0

        await eventually(measured, within=30, what="a report with fetches in it")
        (load,) = (await reports.read()).values()
        assert load["latency"] >= 0.05
        assert 0 < load["in_hand"] <= load["concurrency"] == 8
        assert load["rate_wait"] > 0  # 8 in hand at 100/s: each waits for its slot
    assert await reports.read() == {}
