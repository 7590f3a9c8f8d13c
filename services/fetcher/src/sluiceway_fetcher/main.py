"""``sluiceway fetcher``: run one fetcher process until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
from functools import partial

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sluiceway_common import logs, settings, store, topology
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import reach, run_until_signalled
from sluiceway_common.limiter import SharedLimiter
from sluiceway_common.service import Service
from sluiceway_fetcher import metrics
from sluiceway_fetcher.config import FetcherSettings
from sluiceway_fetcher.consumer import TASKS_PER_PLACE, Fetcher, release_landed
from sluiceway_fetcher.packer import Packer
from sluiceway_fetcher.report import Reporter
from sluiceway_fetcher.transport import Upstream

log = logging.getLogger(__name__)


async def serve(config: FetcherSettings, stop: asyncio.Event) -> int:
    """Fetch until ``stop`` is set; serve metrics and probes meanwhile (when a port is set)."""
    queues = topology.Queues(config.pipeline)
    async with Service("fetcher", config.metrics_port) as service:
        await service.connect(config.amqp_url)
        # A command that meets a dead pooled socket (left by an outage) is sent once more on
        # a new connection: redis-py retries only the errors it is told to.
        redis_client = await service.enter(
            aioredis.Redis.from_url(
                config.redis_url,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[redis.exceptions.ConnectionError],
            )
        )
        await reach("Redis", config.redis_url, redis_client.ping())
        upstream = Upstream(
            config.source_headers, config.concurrency, config.request_timeout,
            config.max_body_bytes,
        )  # fmt: skip
        http = await service.enter(upstream)
        channel = await service.channel(prefetch=config.concurrency * TASKS_PER_PLACE)
        fetch_queue, *_ = await topology.declare(channel, queues)
        await topology.declare(channel, queues, *queues.retries())
        limiter = SharedLimiter(redis_client, config.pipeline, config.rate_limit)
        inflight = store.InFlight(redis_client, config.pipeline)
        packer = Packer(
            channel, queues.records, config.pack_policy(), partial(release_landed, inflight)
        )
        registry = service.observer.registry
        fetcher = Fetcher(
            channel, queues, http, redis_client, limiter, packer, config.source_url,
            config.max_attempts, metrics.Timings.create(registry, queues.pipeline),
            config.concurrency,
        )  # fmt: skip
        metrics.export(registry, queues.pipeline, fetcher, limiter, packer)
        override = await limiter.override()
        reporter = Reporter(store.FetcherReports(redis_client, config.pipeline), fetcher,
                            config.concurrency)  # fmt: skip
        reporting = asyncio.create_task(reporter.run())
        async with service.consuming(fetch_queue, fetcher.on_message, redis=redis_client.ping):
            log.info(
                "fetching %s from %s at %g requests/s for the whole pipeline%s",
                queues.fetch,
                settings.mask(config.source_url),
                config.rate_limit if override is None else override,
                "" if override is None else " (set with `sluiceway rate set`)",
            )
            await stop.wait()
        # Tasks still waiting for a slot go back to the queue at once, rather than wait out
        # the limit, a pause or a Redis outage; those given a slot go ahead, and what is in
        # hand finishes (bounded by the request timeout).
        limiter.close()
        if fetcher.inflight:
            await asyncio.wait(fetcher.inflight, timeout=config.request_timeout + 5)
        await packer.close()
        await fetcher.acks.close()
        reporting.cancel()
        await asyncio.gather(reporting, return_exceptions=True)
        await reporter.withdraw()
    outcomes = ", ".join(
        f"{outcome} {status}: {n}" if status != "none" else f"{outcome}: {n}"
        for (outcome, status), n in sorted(fetcher.outcomes.items())
    )
    log.info(
        "fetcher stopped: %d keys fetched, %d failed, %d retries queued; %d record messages; "
        "%d tasks acked in %d frames; %d rate-limit slots given up for a late wake-up; "
        "fetches by outcome: %s",
        fetcher.fetched, fetcher.failed, fetcher.retried, packer.messages, fetcher.acks.tasks,
        fetcher.acks.frames, limiter.late, outcomes or "none",
    )  # fmt: skip
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser, FetcherSettings.options())


def run(args: argparse.Namespace) -> int:
    config = FetcherSettings.from_args(args)
    logs.setup(config.log_level, secrets=config.secrets())
    return run_until_signalled(lambda stop: serve(config, stop))


COMMAND = Command("fetcher", "fetch each key's record from the upstream API", configure, run)
