"""``sluiceway failed list|retry|clear``: the keys whose fetch failed for good.

The failed set holds the keys; a hash beside it holds each key's reason as JSON. ``retry``
publishes a fetch task per key (all of them, or those whose reason holds ``--reason``), marked
with the header ``x-sluiceway-retry``; a key leaves the set only when a fetcher has landed its
record. Removing keys at re-enqueue time instead would race a fetcher that fails the key again
at once and puts it back, and would lose keys whose retry task was lost. Like ``enqueue``, it
queues only keys not in flight already, and marks those it queues.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson
import redis.asyncio as aioredis

from sluiceway_common import amqp, codec, logs, settings, store, topology
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import reach
from sluiceway_common.publisher import ConfirmedPublisher

OPTIONS = (
    settings.AMQP_URL, settings.REDIS_URL, settings.PIPELINE, settings.INFLIGHT_TIMEOUT,
    settings.LOG_LEVEL,
)  # fmt: skip


async def list_failed(redis_url: str, pipeline: str) -> list[tuple[str, dict[str, Any]]]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        failed = store.FailedSet(client, pipeline)
        found: list[tuple[str, dict[str, Any]]] = []
        async for keys in failed.chunks():
            found.extend(zip(keys, await failed.infos(keys), strict=True))
        return sorted(found)
    finally:
        await client.aclose()


async def retry_failed(
    amqp_url: str,
    redis_url: str,
    pipeline: str,
    reason: str | None = None,
    *,
    lifetime: float,
) -> tuple[int, int]:
    """Re-enqueue the failed keys (those whose reason holds ``reason``, when given) that are
    not in flight, marking each in flight for ``lifetime`` seconds; return how many were
    queued and how many were in flight already."""
    queues = topology.Queues(pipeline)
    client = aioredis.Redis.from_url(redis_url)
    failed = store.FailedSet(client, pipeline)
    inflight = store.InFlight(client, pipeline)
    # Not reconnecting: a cut fails the run (the keys stay in the failed set) instead of
    # waiting on a broker that may not come back.
    connection = await reach("RabbitMQ", amqp_url, amqp.connect_plain(amqp_url, "failed-retry"))
    retried = skipped = 0
    try:
        channel = await amqp.publishing_channel(connection)
        await topology.declare(channel, queues)
        retry_task = topology.persistent(b"", headers={codec.RETRY_HEADER: 1}).properties
        publisher = ConfirmedPublisher(channel, queues.fetch, properties=retry_task)
        async for keys in failed.chunks():
            if reason is not None:
                infos = await failed.infos(keys)
                keys = [
                    key
                    for key, info in zip(keys, infos, strict=True)
                    if reason in str(info.get("reason", ""))
                ]
            claimed = await inflight.claim(keys, lifetime)
            for key in claimed:
                await publisher.publish(codec.encode_task(key))
            await publisher.flush()
            retried += len(claimed)
            skipped += len(keys) - len(claimed)
        await publisher.drain()
        return retried, skipped
    finally:
        await connection.close()
        await client.aclose()


async def clear_failed(redis_url: str, pipeline: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await store.FailedSet(client, pipeline).clear()
    finally:
        await client.aclose()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "retry", "clear"))
    parser.add_argument("--json", action="store_true", help="list: one JSON object per line")
    parser.add_argument(
        "--reason", metavar="TEXT", help="retry: only the keys whose reason holds TEXT"
    )
    settings.add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    values = settings.resolve(args, OPTIONS)
    logs.setup(values["log_level"], secrets=settings.secret_values(OPTIONS, values))
    pipeline = values["pipeline"]
    if args.action == "list":
        for key, info in asyncio.run(list_failed(values["redis_url"], pipeline)):
            if args.json:
                sys.stdout.write(orjson.dumps({"key": key, **info}).decode() + "\n")
            else:
                print(f"{key}\t{info.get('status', '-')}\t{info.get('reason', '')}")
    elif args.action == "retry":
        count, in_flight = asyncio.run(
            retry_failed(
                values["amqp_url"], values["redis_url"], pipeline, args.reason,
                lifetime=values["inflight_timeout"],
            )
        )  # fmt: skip
        print(
            f"re-enqueued {count:,} failed keys of pipeline {pipeline}, already in flight "
            f"{in_flight:,}; each leaves the failed set once its record lands"
        )
    else:
        count = asyncio.run(clear_failed(values["redis_url"], pipeline))
        print(f"cleared {count:,} failed keys of pipeline {pipeline}")
    return 0


COMMAND = Command("failed", "list, retry or clear the keys whose fetch failed", configure, run)
