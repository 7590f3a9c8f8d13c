"""``sluiceway failed list|retry|clear``: the keys whose fetch failed for good.

The failed set holds the keys; a hash beside it holds each key's reason as JSON. ``retry``
publishes a fetch task per key and removes a key from the set only after the broker confirmed
its task, so a crash mid-retry leaves the rest in the set.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator

import orjson
import redis.asyncio as aioredis

from sluiceway_common import amqp, codec, redis_keys, settings, topology
from sluiceway_common.cli import Command

OPTIONS = (settings.AMQP_URL, settings.REDIS_URL, settings.PIPELINE)
CHUNK = 500


async def failed_keys(client: aioredis.Redis, pipeline: str) -> AsyncIterator[list[str]]:
    keys: list[str] = []
    async for raw in client.sscan_iter(redis_keys.failed_set(pipeline), count=CHUNK):
        keys.append(raw.decode())
        if len(keys) == CHUNK:
            yield keys
            keys = []
    if keys:
        yield keys


async def list_failed(redis_url: str, pipeline: str) -> list[tuple[str, dict[str, object]]]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        found = []
        async for keys in failed_keys(client, pipeline):
            infos = await client.hmget(redis_keys.failed_info(pipeline), keys)
            for key, info in zip(keys, infos, strict=True):
                found.append((key, orjson.loads(info) if info else {}))
        return sorted(found)
    finally:
        await client.aclose()


async def retry_failed(amqp_url: str, redis_url: str, pipeline: str) -> int:
    queues = topology.Queues(pipeline)
    client = aioredis.Redis.from_url(redis_url)
    connection = await amqp.connect(amqp_url, "failed-retry")
    retried = 0
    try:
        channel = await amqp.publishing_channel(connection)
        await topology.declare(channel, queues)
        # SSCAN over a set that shrinks as we go may repeat or skip members, so take one
        # snapshot of the keys first and work through it.
        snapshot = [keys async for keys in failed_keys(client, pipeline)]
        for keys in snapshot:
            publisher = amqp.ConfirmedPublisher(channel, queues.fetch)
            for key in keys:
                await publisher.publish(topology.persistent(codec.encode_task(key)))
            await publisher.drain()
            async with client.pipeline(transaction=True) as tx:
                tx.srem(redis_keys.failed_set(pipeline), *keys)
                tx.hdel(redis_keys.failed_info(pipeline), *keys)
                await tx.execute()
            retried += len(keys)
        return retried
    finally:
        await connection.close()
        await client.aclose()


async def clear_failed(redis_url: str, pipeline: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with client.pipeline(transaction=True) as tx:
            tx.scard(redis_keys.failed_set(pipeline))
            tx.delete(redis_keys.failed_set(pipeline), redis_keys.failed_info(pipeline))
            count, _ = await tx.execute()
        return int(count)
    finally:
        await client.aclose()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "retry", "clear"))
    parser.add_argument("--json", action="store_true", help="list: one JSON object per line")
    settings.add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    values = settings.resolve(args, OPTIONS)
    pipeline = values["pipeline"]
    if args.action == "list":
        for key, info in asyncio.run(list_failed(values["redis_url"], pipeline)):
            if args.json:
                sys.stdout.write(orjson.dumps({"key": key, **info}).decode() + "\n")
            else:
                print(f"{key}\t{info.get('status', '-')}\t{info.get('reason', '')}")
    elif args.action == "retry":
        count = asyncio.run(retry_failed(values["amqp_url"], values["redis_url"], pipeline))
        print(f"re-enqueued {count:,} failed keys of pipeline {pipeline}")
    else:
        count = asyncio.run(clear_failed(values["redis_url"], pipeline))
        print(f"cleared {count:,} failed keys of pipeline {pipeline}")
    return 0


COMMAND = Command("failed", "list, retry or clear the keys whose fetch failed", configure, run)
