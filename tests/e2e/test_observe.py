"""The real processes' metrics, probes and logs: nothing secret shows in any of them."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection
from aiohttp import web

from sluiceway_common import codec, store, topology
from tests.e2e.conftest import Processes
from tests.integration.helpers import (
    eventually,
    free_port,
    get,
    http_server,
    publish,
    scrape,
    until_ready,
)

pytestmark = pytest.mark.e2e

HEADER_SECRET = "Bearer hdr-S3cret-4242"
DB_PASSWORD = "pg-S3cret-4343"  # PostgreSQL here trusts loopback: any password is let in


async def test_no_secret_in_logs_probes_or_metrics(
    processes: Processes,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    async def echo(request: web.Request) -> web.Response:
        # An upstream that quotes the token it was sent back in its refusal.
        return web.Response(status=403, reason=f"Forbidden {request.headers['Authorization']}")

    app = web.Application()
    app.router.add_get("/users/{key}", echo)
    parts = urlsplit(database_url)
    secret_db_url = urlunsplit(
        parts._replace(netloc=f"{parts.username}:{DB_PASSWORD}@{parts.hostname}:{parts.port}")
    )
    fetcher_port, writer_port = free_port(), free_port()
    async with http_server(app) as base:
        processes.start(
            "writer", "writer",
            SLUICEWAY_DATABASE_URL=secret_db_url, SLUICEWAY_METRICS_PORT=str(writer_port),
            SLUICEWAY_LOG_LEVEL="DEBUG",
        )  # fmt: skip
        processes.start(
            "fetcher", "fetcher",
            SLUICEWAY_SOURCE_URL=base + "/users/{key}",
            SLUICEWAY_SOURCE_HEADERS=f'{{"Authorization": "{HEADER_SECRET}"}}',
            SLUICEWAY_METRICS_PORT=str(fetcher_port), SLUICEWAY_LOG_LEVEL="DEBUG",
        )  # fmt: skip
        await until_ready(fetcher_port, writer_port)
        queues = topology.Queues(pipeline)
        await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task("k1")])

        async def failed() -> bool:
            return bool(await redis_client.scard(store.failed_set(pipeline)))

        await eventually(failed, what="the key failed")
        pages = [
            (await scrape(fetcher_port)).text,
            (await scrape(writer_port)).text,
            (await get(fetcher_port, "/readyz"))[1],
            (await get(writer_port, "/readyz"))[1],
            (await get(fetcher_port, "/healthz"))[1],
        ]
    for process in list(processes.started):
        assert processes.terminate(process) == 0
    fetcher_log, writer_log = processes.log("fetcher"), processes.log("writer")
    assert "Forbidden ***" in fetcher_log  # the line was there, with the token masked
    info = await redis_client.hget(store.failed_info(pipeline), "k1")
    assert isinstance(info, bytes)
    assert b"Forbidden ***" in info
    assert 'sluiceway_fetches_total{outcome="http_error",pipeline="' in pages[0]
    for text in (*pages, fetcher_log, writer_log, info.decode()):
        assert "hdr-S3cret" not in text
        assert DB_PASSWORD not in text
