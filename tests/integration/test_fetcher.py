"""The fetcher against real RabbitMQ and Redis and a real HTTP upstream, run in-process."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection
from aiohttp import web

from sluiceway_admin.failed import retry_failed
from sluiceway_admin.reading import collect
from sluiceway_common import codec, store, topology
from sluiceway_sample_api.data import is_missing, user
from sluiceway_sample_api.server import Behaviour, make_app
from tests.conftest import ServiceUrls
from tests.integration.helpers import (
    depth,
    depth_is,
    drain,
    eventually,
    failed_info,
    failed_infos,
    failed_keys,
    http_server,
    publish,
    running_fetcher,
)

pytestmark = pytest.mark.integration


async def test_fetches_each_key_into_a_record_and_failures_into_the_failed_set(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    queues = topology.Queues(pipeline)
    keys = [f"user-{i}" for i in range(60)] + ["team 7/Zoë", "../admin", "a?b#c"]
    missing = {k for k in keys if is_missing(k, 0.2)}
    assert missing  # the rate gives some 404s among these keys
    before = datetime.now(UTC)
    async with http_server(make_app(Behaviour(not_found_rate=0.2))) as base:
        await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task(k) for k in keys])
        async with running_fetcher(services.amqp, services.redis, pipeline, base + "/users/{key}"):
            await eventually(
                lambda: _records_and_failed(amqp_connection, redis_client, pipeline, len(keys)),
                what="every key handled",
            )
    assert await depth(amqp_connection, queues.fetch) == 0
    records = [codec.decode_record(m.body) for m in await drain(amqp_connection, queues.records)]
    assert sorted(r.key for r in records) == sorted(set(keys) - missing)
    for r in records:
        # The upstream saw each key whole: it served the user of exactly that key.
        assert json.loads(r.payload) == user(r.key)
        assert before - timedelta(seconds=1) <= r.fetched_at <= datetime.now(UTC)
    failed = await failed_keys(redis_client, pipeline)
    assert failed == missing
    info = await failed_info(redis_client, pipeline, min(missing))
    assert info["status"] == 404
    assert info["reason"] == "HTTP 404 Not Found"
    assert datetime.fromisoformat(info["at"]) >= before - timedelta(seconds=1)


async def _records_and_failed(
    connection: AbstractConnection, client: aioredis.Redis, pipeline: str, n: int
) -> bool:
    records = await depth(connection, topology.Queues(pipeline).records)
    failed = await client.scard(store.failed_set(pipeline))
    return records + int(failed) >= n


async def test_a_task_waiting_for_its_pack_leaves_its_place_to_the_next_task(
    services: ServiceUrls, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    # One place, and packs that wait the longest linger for a second record: the first
    # key's record waits in its pack while the second key is fetched into the same pack.
    # Holding its place (and the one delivery it had) to the confirm, the first task kept
    # the second from starting until the linger had sent its record alone.
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task(k) for k in "ab"])
    async with (
        http_server(make_app(Behaviour())) as base,
        running_fetcher(
            services.amqp,
            services.redis,
            pipeline,
            base + "/users/{key}",
            concurrency=1,
            linger_ms=10_000,
            pack_max_records=2,
        ),  # fmt: skip
    ):
        await eventually(lambda: depth_is(amqp_connection, queues.records, 1), what="a pack")
        messages = await drain(amqp_connection, queues.records)
    (message,) = messages
    decoded = codec.decode_message(message.body, message.content_encoding, 1 << 20)
    assert sorted(r.key for r in decoded.records) == ["a", "b"]


async def test_a_200_that_is_not_json_and_a_server_error_are_failures(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.match_info["key"] == "html":
            return web.Response(text="<html>hello</html>", content_type="text/html")
        if request.match_info["key"] == "boom":
            return web.Response(status=500, text="boom")
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x/{key}", handler)
    queues = topology.Queues(pipeline)
    async with http_server(app) as base:
        await publish(
            amqp_connection,
            pipeline,
            queues.fetch,
            [codec.encode_task(k) for k in ("html", "fine", "boom")],
        )
        async with running_fetcher(services.amqp, services.redis, pipeline, base + "/x/{key}"):
            await eventually(
                lambda: _records_and_failed(amqp_connection, redis_client, pipeline, 3)
            )
    infos = await failed_infos(redis_client, pipeline)
    assert set(infos) == {"html", "boom"}
    assert infos["html"]["reason"].startswith("body is not JSON")
    assert infos["boom"]["status"] == 500
    assert await depth(amqp_connection, queues.records) == 1


async def test_unreachable_upstream_is_recorded_as_a_connection_failure(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    # Nothing listens on port 9 of loopback (the discard port is not served here).
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task("k")])
    async with running_fetcher(services.amqp, services.redis, pipeline, "http://127.0.0.1:9/{key}"):
        await eventually(lambda: _records_and_failed(amqp_connection, redis_client, pipeline, 1))
    info = await failed_info(redis_client, pipeline, "k")
    assert info["reason"].startswith("connection error")
    assert info["status"] is None


async def test_records_finished_together_are_packed_into_fewer_messages(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    queues = topology.Queues(pipeline)
    keys = [f"user-{i}" for i in range(200)]
    async with http_server(make_app(Behaviour())) as base:
        await publish(amqp_connection, pipeline, queues.fetch,
                      [codec.encode_task(k) for k in keys])  # fmt: skip
        async with running_fetcher(
            services.amqp, services.redis, pipeline, base + "/users/{key}", linger_ms=50
        ):

            async def all_fetched() -> bool:
                return await depth(amqp_connection, queues.fetch) == 0

            await eventually(all_fetched, what="every task taken")
    # Stopped: every task was acked only after its record's message was confirmed.
    messages = await drain(amqp_connection, queues.records)
    records = [
        record
        for message in messages
        for record in codec.decode_message(message.body, message.content_encoding, 1 << 24).records
    ]
    assert sorted(r.key for r in records) == sorted(keys)
    assert len(messages) < len(keys) / 2  # packed: 8 in flight finish close together
    assert any(m.content_encoding == "zstd" for m in messages)  # packs past 1 KiB


async def test_a_body_over_the_limit_fails_its_key_alone(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        size = 3000 if request.match_info["key"] == "big" else 10
        return web.json_response({"pad": "x" * size})

    app = web.Application()
    app.router.add_get("/x/{key}", handler)
    queues = topology.Queues(pipeline)
    async with http_server(app) as base:
        await publish(amqp_connection, pipeline, queues.fetch,
                      [codec.encode_task(k) for k in ("big", "small")])  # fmt: skip
        async with running_fetcher(services.amqp, services.redis, pipeline, base + "/x/{key}",
                                   max_body_bytes=2048):  # fmt: skip
            await eventually(
                lambda: _records_and_failed(amqp_connection, redis_client, pipeline, 2)
            )
    info = await failed_info(redis_client, pipeline, "big")
    assert info == {
        "reason": "body larger than 2048 bytes", "status": 200, "attempts": 1, "at": info["at"]
    }  # fmt: skip
    assert await redis_client.scard(store.failed_set(pipeline)) == 1
    assert await depth(amqp_connection, queues.records) == 1


async def test_source_headers_go_with_every_request(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_get("/x/{key}", handler)
    queues = topology.Queues(pipeline)
    async with http_server(app) as base:
        await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task("k")])
        async with running_fetcher(
            services.amqp, services.redis, pipeline, base + "/x/{key}",
            source_headers={"Authorization": "Bearer t0ken"},
        ):  # fmt: skip
            await eventually(
                lambda: _records_and_failed(amqp_connection, redis_client, pipeline, 1)
            )
    (message,) = await drain(amqp_connection, queues.records)
    assert json.loads(codec.decode_record(message.body).payload) == {"auth": "Bearer t0ken"}


async def test_a_retried_key_leaves_the_failed_set_when_it_lands(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    failed, info = store.failed_set(pipeline), store.failed_info(pipeline)
    await redis_client.sadd(failed, "flaky", "gone")
    await redis_client.hset(info, mapping={
        "flaky": orjson.dumps({"reason": "HTTP 503 Service Unavailable", "status": 503}),
        "gone": orjson.dumps({"reason": "HTTP 404 Not Found", "status": 404}),
    })  # fmt: skip
    retried = await retry_failed(services.amqp, services.redis, pipeline, "503", lifetime=60)
    assert retried == (1, 0)
    queues = topology.Queues(pipeline)
    async with (
        http_server(make_app(Behaviour())) as base,
        running_fetcher(services.amqp, services.redis, pipeline, base + "/users/{key}"),
    ):
        await eventually(lambda: _landed(amqp_connection, queues.records, 1))

        async def forgotten() -> bool:
            return not await redis_client.sismember(failed, "flaky")

        await eventually(forgotten, what="the landed key to leave the failed set")
    assert await redis_client.smembers(failed) == {b"gone"}
    assert await redis_client.hkeys(info) == [b"gone"]


async def _landed(connection: AbstractConnection, queue: str, n: int) -> bool:
    return await depth(connection, queue) >= n


async def test_passing_failures_are_retried_later_without_holding_up_other_keys(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    answers = {"flaky": [503, 500, 200], "down": [503, 503, 503, 503]}
    landed_at: dict[str, float] = {}

    async def handler(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        queue = answers.get(key)
        status = queue.pop(0) if queue else 200
        if status == 200:
            landed_at.setdefault(key, asyncio.get_running_loop().time())
        return web.json_response({"key": key}, status=status)

    app = web.Application()
    app.router.add_get("/x/{key}", handler)
    queues = topology.Queues(pipeline)
    keys = ["flaky", "down", *(f"k{i}" for i in range(20))]
    async with http_server(app) as base:
        await publish(amqp_connection, pipeline, queues.fetch,
                      [codec.encode_task(k) for k in keys])  # fmt: skip
        async with running_fetcher(services.amqp, services.redis, pipeline, base + "/x/{key}",
                                   max_attempts=3):  # fmt: skip

            async def waiting() -> bool:
                status = await collect(database_url, services.amqp, services.redis, pipeline)
                return status.retrying > 0

            await eventually(waiting, what="a key waiting on a delay queue, shown by status")
            await eventually(
                lambda: _records_and_failed(amqp_connection, redis_client, pipeline, len(keys)),
                within=30, what="every key landed or failed after its retries",
            )  # fmt: skip
    records = [codec.decode_record(m.body) for m in await drain(amqp_connection, queues.records)]
    assert sorted(r.key for r in records) == sorted(set(keys) - {"down"})
    assert answers["flaky"] == []  # three attempts: 503, 500, then 200
    assert answers["down"] == [503]  # three attempts, then given up
    info = await failed_info(redis_client, pipeline, "down")
    assert (info["status"], info["attempts"]) == (503, 3)
    assert info["reason"] == "HTTP 503 Service Unavailable"
    # The other keys did not wait for the flaky one's retries.
    assert max(landed_at[f"k{i}"] for i in range(20)) < landed_at["flaky"]
    for name in queues.retries():
        assert await depth(amqp_connection, name) == 0
