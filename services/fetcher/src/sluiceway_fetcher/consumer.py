"""The fetcher's subscription: one fetch task in; one record, one retry or one failed key out;
then ack (in runs, see ``acks.py``).

A task is acked only after its outcome is safe: the record confirmed by the broker, its next
attempt confirmed on a delay queue (see ``retry.py``), or the key written to the failed set.
A key whose record is confirmed, or that enters the failed set, stops being in flight
(:class:`sluiceway_common.store.InFlight`) before its task is acked; a retry keeps the mark.
A crash before that leaves the task unacked, and the broker delivers it again; every outcome
is idempotent or harmless twice, so a redelivery changes nothing that matters. A task waiting
for the rate limit when the fetcher stops goes back to the queue.

A task holds one of the fetcher's *places* (``SLUICEWAY_CONCURRENCY`` of them) from asking for
its rate-limit slot to its answer, and no longer: waiting for its record's pack to be
confirmed (the linger, then the broker) it holds only its delivery. So the fetcher takes up to
:data:`TASKS_PER_PLACE` times as many deliveries as it has places, and keeps its places busy
while records wait for their confirms.

An upstream that answers 429 or 503 with Retry-After pauses the whole pipeline (every
fetcher, through the shared limiter) before the key is retried or recorded as failed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from datetime import UTC, datetime

import redis.asyncio as aioredis
import redis.exceptions
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from sluiceway_common import amqp, codec, logs, store, topology
from sluiceway_common.limiter import LimiterClosed, SharedLimiter
from sluiceway_common.ratelimit import MAX_PAUSE, pause_seconds
from sluiceway_common.retry import delay, retryable
from sluiceway_fetcher.acks import Acks, Delivery
from sluiceway_fetcher.metrics import Timings
from sluiceway_fetcher.packer import Packer
from sluiceway_fetcher.report import Load
from sluiceway_fetcher.source import Failed, Fetched, Outcome, fetch
from sluiceway_fetcher.transport import Upstream

log = logging.getLogger(__name__)

BROKER_ERRORS = amqp.BROKER_ERRORS
# While Redis is away a failed key cannot be recorded; its task goes back to the queue after
# this pause rather than spinning.
REDIS_RETRY_DELAY = 1.0
# Deliveries a fetcher takes (the channel's prefetch) per place. At 50 ms upstream latency a
# task holding its place to the end spent a third of its time waiting for its pack (32
# places gave 403 keys/s of the 640 they could); the tasks past their answer are the
# throughput times the linger and the confirm (~16 at 640/s and the default 20 ms, ~32 at
# the 1,280/s of 64 places), fewer than the places.
TASKS_PER_PLACE = 2


def attempt_of(message: AbstractIncomingMessage) -> int:
    """Which attempt at its key ``message`` is: its attempt header, else the first."""
    value = (message.headers or {}).get(codec.ATTEMPT_HEADER, 1)
    try:
        return max(1, int(value)) if isinstance(value, int | str) else 1
    except (TypeError, ValueError):
        return 1


async def release_landed(inflight: store.InFlight, keys: list[str]) -> None:
    """The records of ``keys`` are confirmed (a pack's, see ``packer.py``): they stop being in
    flight. Should Redis be away their marks stay and lapse after their lifetime
    (``SLUICEWAY_INFLIGHT_TIMEOUT``); the tasks are acked all the same, their records safe."""
    try:
        await inflight.release(keys)
    except redis.exceptions.RedisError as exc:
        log.warning("%d landed keys stay marked in flight until their marks lapse, Redis: %s",
                    len(keys), exc)  # fmt: skip


class Fetcher:
    """Handles fetch tasks of one pipeline; counts what it did for the exit summary and the
    metrics (``metrics.py``), and times each fetch and rate-limit wait in ``timings``."""

    def __init__(
        self,
        channel: AbstractChannel,
        queues: topology.Queues,
        http: Upstream,
        redis_client: aioredis.Redis,
        limiter: SharedLimiter,
        packer: Packer,
        source_url: str,
        max_attempts: int,
        timings: Timings,
        places: int,
        rng: random.Random | None = None,
    ) -> None:
        self._channel = channel  # publishes with confirms: retries go out on it
        self._max_attempts = max_attempts
        self._rng = rng or random.Random()
        self.retried = 0
        self._queues = queues
        self._packer = packer
        self._http = http
        self._failed = store.FailedSet(redis_client, queues.pipeline)
        self._limiter = limiter
        self._source_url = source_url
        self.inflight: set[asyncio.Task[object]] = set()
        self.acks = Acks()
        self._places = asyncio.Semaphore(places)
        self.requesting = 0  # tasks holding a place: waiting for a slot or fetching
        self._timings = timings
        self.load = Load()  # running sums for the load report (report.py)
        self.fetched = 0
        self.failed = 0
        self.dropped = 0
        # (outcome, HTTP status or "none") -> how many fetches ended so
        self.outcomes: Counter[tuple[str, str]] = Counter()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.inflight.add(task)
        delivery = self.acks.received(message)
        try:
            await self._handle(message, delivery)
        except BROKER_ERRORS as exc:
            # The channel is gone: the broker re-delivers the task to whoever consumes next.
            log.warning("broker connection lost while handling a task: %s", exc)
        finally:
            self.inflight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage, delivery: Delivery) -> None:
        try:
            key = codec.decode_task(message.body)
        except codec.BadMessage as exc:
            log.warning("dropping fetch task %r: %s", message.body[:80], exc)
            await self.acks.reject(delivery)
            self.dropped += 1
            return
        async with self._places:
            self.requesting += 1
            try:
                outcome = await self._request(key)
            finally:
                self.requesting -= 1
        if outcome is None:
            await self.acks.nack(delivery)
            return
        if isinstance(outcome, Fetched):
            # Returns once the broker confirmed the message this record went out in.
            record = codec.encode_record(key, outcome.body, datetime.now(UTC))
            await self._packer.publish(record, key)
            self.fetched += 1
            if (message.headers or {}).get(codec.RETRY_HEADER):
                await self._forget_failure(key)
        else:
            attempt = attempt_of(message)
            try:
                if outcome.retry_after:
                    await self._pause(key, outcome)
                if retryable(outcome.status) and attempt < self._max_attempts:
                    await self._retry_later(message, key, attempt, outcome)
                    self.acks.done(delivery)
                    return
                await self._record_failure(key, outcome, attempt)
            except redis.exceptions.RedisError as exc:
                log.warning("cannot record failed key %r, Redis: %s; requeueing", key, exc)
                await asyncio.sleep(REDIS_RETRY_DELAY)
                await self.acks.nack(delivery)
                return
            self.failed += 1
            log.info("key %r failed after %d attempts: %s", key, attempt, outcome.reason)
        self.acks.done(delivery)

    async def _request(self, key: str) -> Outcome | None:
        """Wait for a rate-limit slot, then GET ``key``; None when the fetcher stopped first."""
        asked = time.monotonic()
        try:
            await self._limiter.acquire()
        except LimiterClosed:
            return None
        started = time.monotonic()
        self._timings.rate_wait.observe(started - asked)
        self.load.waits += 1
        self.load.wait_seconds += started - asked
        outcome = await fetch(self._http, self._source_url, key)
        took = time.monotonic() - started
        self._timings.fetch.observe(took)
        self.load.fetches += 1
        self.load.fetch_seconds += took
        self.outcomes[outcome.outcome, str(outcome.status or "none")] += 1
        return outcome

    async def _retry_later(
        self, message: AbstractIncomingMessage, key: str, attempt: int, outcome: Failed
    ) -> None:
        """Queue the task's next attempt behind a delay; the broker brings it back."""
        seconds = delay(attempt, self._rng)
        headers = dict(message.headers or {})
        headers[codec.ATTEMPT_HEADER] = attempt + 1
        await self._channel.default_exchange.publish(
            topology.persistent(message.body, headers=headers),
            routing_key=self._queues.retry(seconds),
            mandatory=True,
        )
        self.retried += 1
        log.info(
            "key %r: %s; attempt %d of %d, next in %d s",
            key, outcome.reason, attempt, self._max_attempts, seconds,
        )  # fmt: skip

    async def _pause(self, key: str, outcome: Failed) -> None:
        assert outcome.retry_after is not None
        seconds = pause_seconds(outcome.retry_after)
        before, _ = await self._limiter.pause(seconds)
        if before > 0:
            # One warning a pause: the requests in flight when it began mostly answer alike.
            log.debug("key %r: %s while paused; asked for %g s", key, outcome.reason, seconds)
        elif seconds < outcome.retry_after:
            log.warning(
                "key %r: %s with Retry-After %g s; pausing the pipeline for the cap, %g s",
                key, outcome.reason, outcome.retry_after, MAX_PAUSE,
            )  # fmt: skip
        else:
            log.warning(
                "key %r: %s with Retry-After %g s; pausing the pipeline for that long",
                key, outcome.reason, seconds,
            )  # fmt: skip

    async def _forget_failure(self, key: str) -> None:
        """A retried key landed: it leaves the failed set. Should Redis be away, the key stays
        listed as failed although its record landed, which a later retry settles; the task
        is acked all the same, since its record is safe."""
        try:
            await self._failed.forget(key)
        except redis.exceptions.RedisError as exc:
            log.warning("retried key %r landed but stays in the failed set, Redis: %s", key, exc)

    async def _record_failure(self, key: str, outcome: Failed, attempts: int) -> None:
        info = {
            # An upstream may quote a request's token back in its answer.
            "reason": logs.redact(outcome.reason),
            "status": outcome.status,
            "attempts": attempts,
            "at": datetime.now(UTC).isoformat(),
        }
        await self._failed.add(key, info)
