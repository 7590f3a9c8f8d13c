"""The queues of a pipeline and how each is declared.

Every service declares what it uses at start-up; declaring is idempotent as long as the
arguments below stay the same, so changing them is a migration of the broker, not an edit.
All three are quorum queues: replicated, durable, and they count deliveries, which lets the
records queue hand a message that keeps crashing its consumer to the dead-letter queue
instead of looping on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

# The delays, in seconds, a fetch task can wait before its next attempt: one queue each,
# so that every message in a queue waits as long as the one before it (RabbitMQ expires
# messages only at a queue's head).
RETRY_DELAYS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# A record redelivered this many times (each one a consumer that died holding it) is
# dead-lettered: the writer retries database outages in-process, so only crashes count.
RECORD_DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class Queues:
    """Names of one pipeline's queues."""

    pipeline: str

    @property
    def fetch(self) -> str:
        return f"sluiceway.{self.pipeline}.fetch"

    @property
    def records(self) -> str:
        return f"sluiceway.{self.pipeline}.records"

    @property
    def dead(self) -> str:
        return f"sluiceway.{self.pipeline}.records.dead"

    def retry(self, seconds: int) -> str:
        """Where a fetch task waits ``seconds`` before it goes back to the fetch queue."""
        return f"sluiceway.{self.pipeline}.fetch.retry.{seconds}s"

    def retries(self) -> tuple[str, ...]:
        return tuple(self.retry(seconds) for seconds in RETRY_DELAYS)

    def owned(self) -> tuple[str, ...]:
        """Every queue of the pipeline: what to empty or delete along with it."""
        return (*self.all(), *self.retries())

    def arguments(self, name: str) -> dict[str, Any]:
        """The declare arguments of queue ``name``; they must never differ between services."""
        for seconds in RETRY_DELAYS:
            if name == self.retry(seconds):
                # Classic: a quorum queue dead-letters at most once unless told otherwise,
                # and a task must not be lost on its way back to the fetch queue.
                return {
                    "x-queue-type": "classic",
                    "x-message-ttl": seconds * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.fetch,
                }
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if name == self.records:
            arguments |= {
                "x-delivery-limit": RECORD_DELIVERY_LIMIT,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead,
            }
        return arguments

    def all(self) -> tuple[str, str, str]:
        return (self.fetch, self.records, self.dead)


async def declare(channel: AbstractChannel, queues: Queues, *names: str) -> list[AbstractQueue]:
    """Declare ``names`` (all of the pipeline's queues when none are given), durable."""
    declared = []
    for name in names or queues.all():
        declared.append(
            await channel.declare_queue(name, durable=True, arguments=queues.arguments(name))
        )
    return declared


def persistent(body: bytes, **properties: Any) -> aio_pika.Message:
    """A message that survives a broker restart, the only kind sluiceway publishes."""
    return aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/json",
        **properties,
    )


@dataclass(frozen=True)
class QueueDepth:
    """A queue as a passive declare sees it: ready messages only, not those a consumer
    holds unacknowledged; a queue not declared yet is absent."""

    name: str
    exists: bool
    ready: int
    consumers: int


async def queue_depths(connection: AbstractConnection, names: tuple[str, ...]) -> list[QueueDepth]:
    """Each of ``names`` as the broker sees it now (see :class:`QueueDepth`)."""
    depths = []
    for name in names:
        # A passive declare of a missing queue closes its channel, so each gets its own.
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            result = queue.declaration_result
            depths.append(
                QueueDepth(name, True, result.message_count or 0, result.consumer_count or 0)
            )
        except aio_pika.exceptions.ChannelNotFoundEntity:
            depths.append(QueueDepth(name, False, 0, 0))
        finally:
            if not channel.is_closed:
                await channel.close()
    return depths
