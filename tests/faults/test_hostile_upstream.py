"""An upstream that sends what no one should: bodies that are not JSON, nested past any
parser's depth, over the size limit, dripped a byte at a time, under a wrong content type;
and keys shaped to escape the URL template. Each key gets a row or a recorded failure, and
its neighbours are untouched."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import asyncpg
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection
from aiohttp import web

from sluiceway_common.codec import key_url
from tests.conftest import ServiceUrls
from tests.faults.harness import check_table, enqueue, settled
from tests.integration.helpers import http_server, running_fetcher, running_writer

pytestmark = pytest.mark.integration

ESCAPING = ["../admin", "http://other-host/", "%2F", "?x=", "#", "a/b", "..", ".", "%00", " "]
NESTED_DEPTH = 500  # within every parser on the way (and Python's, which checks the row)


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


async def hostile(request: web.Request) -> web.StreamResponse:
    tail = request.raw_path.removeprefix("/users/")
    key = unquote(tail)
    if "/" in tail or "?" in tail or "#" in tail:
        return web.json_response({"escaped": request.raw_path}, status=400)
    if key == "drip":
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for byte in b'{"d": "' + b"x" * 100 + b'"}':
            await response.write(bytes([byte]))
            await asyncio.sleep(0.1)
        return response
    bodies = {
        "not-json": (b"<html>hello</html>", "text/html"),
        "nested-ok": (b"[" * NESTED_DEPTH + b"]" * NESTED_DEPTH, "application/json"),
        "nested-too-deep": (b"[" * 5000 + b"]" * 5000, "application/json"),
        "too-large": (b'{"x": "' + b"y" * (2 << 20) + b'"}', "application/json"),
        "wrong-type": (b'{"ok": true}', "text/plain"),
    }
    body, content_type = bodies.get(key, (None, ""))
    if body is None:
        return web.json_response({"path": request.raw_path})
    return web.Response(body=body, headers={"Content-Type": content_type})


async def test_hostile_bodies_and_escaping_keys(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    neighbours = [f"n{i}" for i in range(20)]
    landing: dict[str, object] = {
        key: {"path": key_url("/users/{key}", key)} for key in ESCAPING + neighbours
    }
    landing |= {"nested-ok": nested(NESTED_DEPTH), "wrong-type": {"ok": True}}
    failing = {
        "not-json": "body is not JSON",
        "nested-too-deep": "body is not JSON",
        "too-large": "body larger than 1048576 bytes",
        "drip": "timeout",
    }
    keys = [*landing, *failing]
    app = web.Application()
    app.router.add_get("/users/{tail:.*}", hostile)
    async with (
        http_server(app) as base,
        running_fetcher(services.amqp, services.redis, pipeline, base + "/users/{key}"),
        running_writer(database_url, services.amqp, pipeline, batch_size=50, batch_timeout=0.1),
    ):
        await enqueue(amqp_connection, pipeline, keys)
        await settled(db, redis_client, amqp_connection, pipeline, len(keys), within=60)
    await check_table(
        "hostile upstream bodies and escaping keys", db, redis_client, amqp_connection,
        pipeline, landing, failing, note=f"{len(ESCAPING)} escaping keys, 6 hostile bodies",
    )  # fmt: skip
