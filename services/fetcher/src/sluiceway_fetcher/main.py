"""``sluiceway fetcher``: run one fetcher process until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

import httpx
import redis.asyncio as aioredis

from sluiceway_common import amqp, logs, settings, topology
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import reach, run_until_signalled
from sluiceway_common.observe import Observer
from sluiceway_fetcher import metrics
from sluiceway_fetcher.config import OPTIONS, FetcherSettings
from sluiceway_fetcher.consumer import Fetcher
from sluiceway_fetcher.limiter import SharedLimiter
from sluiceway_fetcher.packer import Packer
from sluiceway_fetcher.transport import AiohttpTransport

log = logging.getLogger(__name__)


async def serve(config: FetcherSettings, stop: asyncio.Event) -> int:
    """Fetch until ``stop`` is set; serve metrics and probes meanwhile (when a port is set)."""
    async with Observer(config.metrics_port) as observer:
        return await _serve(config, stop, observer)


async def _serve(config: FetcherSettings, stop: asyncio.Event, observer: Observer) -> int:
    queues = topology.Queues(config.pipeline)
    connection = await reach("RabbitMQ", config.amqp_url, amqp.connect(config.amqp_url, "fetcher"))
    try:
        redis_client = aioredis.Redis.from_url(config.redis_url)
        try:
            await reach("Redis", config.redis_url, redis_client.ping())
            async with httpx.AsyncClient(
                headers=config.source_headers,
                timeout=config.request_timeout,
                transport=AiohttpTransport(
                    config.concurrency, config.max_body_bytes, config.request_timeout
                ),
            ) as http:
                channel = await amqp.publishing_channel(connection)
                await channel.set_qos(prefetch_count=config.concurrency)
                fetch_queue, *_ = await topology.declare(channel, queues)
                await topology.declare(channel, queues, *queues.retries())
                limiter = SharedLimiter(redis_client, config.pipeline, config.rate_limit)
                packer = Packer(channel, queues.records, config.pack_policy())
                fetcher = Fetcher(
                    channel, queues, http, redis_client, limiter, packer, config.source_url,
                    config.max_attempts, metrics.Timings.create(observer.registry, queues.pipeline),
                )  # fmt: skip
                metrics.export(observer.registry, queues.pipeline, fetcher, limiter, packer)
                observer.add_check("rabbitmq", lambda: amqp.check_connected(connection))
                observer.add_check("redis", redis_client.ping)
                override = await limiter.override()
                tag = await fetch_queue.consume(fetcher.on_message)
                log.info(
                    "fetching %s from %s at %g requests/s for the whole pipeline%s",
                    queues.fetch,
                    settings.mask(config.source_url),
                    config.rate_limit if override is None else override,
                    "" if override is None else " (set with `sluiceway rate set`)",
                )
                await stop.wait()
                await amqp.stop_consuming(connection, fetch_queue, tag)
                # Tasks still waiting for a slot go back to the queue at once, rather than
                # wait out the limit, a pause or a Redis outage; those given a slot go
                # ahead, and what is in hand finishes (bounded by the request timeout).
                limiter.close()
                if fetcher.inflight:
                    await asyncio.wait(fetcher.inflight, timeout=config.request_timeout + 5)
                await packer.close()
                await channel.close()
        finally:
            await redis_client.aclose()
    finally:
        await connection.close()
    outcomes = ", ".join(
        f"{outcome} {status}: {n}" if status != "none" else f"{outcome}: {n}"
        for (outcome, status), n in sorted(fetcher.outcomes.items())
    )
    log.info(
        "fetcher stopped: %d keys fetched, %d failed, %d retries queued; %d record messages; "
        "%d rate-limit slots given up for a late wake-up; fetches by outcome: %s",
        fetcher.fetched, fetcher.failed, fetcher.retried, packer.messages, limiter.late,
        outcomes or "none",
    )  # fmt: skip
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    config = FetcherSettings.from_args(args)
    logs.setup(config.log_level, secrets=settings.secret_values(OPTIONS, vars(config)))
    return run_until_signalled(lambda stop: serve(config, stop))


COMMAND = Command("fetcher", "fetch each key's record from the upstream API", configure, run)
