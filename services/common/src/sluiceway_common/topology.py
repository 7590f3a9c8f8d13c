"""The queues of a pipeline and how each is declared.

Every service declares what it uses at start-up; declaring is idempotent as long as the
arguments below stay the same, so changing them is a migration of the broker, not an edit
(``sluiceway queues migrate`` makes it; a service that finds a queue declared otherwise
stops, saying so). Every queue is a quorum queue: replicated, durable, and they count
deliveries, which lets the records queue hand a message that keeps crashing its consumer
to the dead-letter queue instead of looping on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from sluiceway_common.lifecycle import StartupError

# The delays, in seconds, a fetch task can wait before its next attempt: one queue each,
# so that every message in a queue waits as long as the one before it (RabbitMQ expires
# messages only at a queue's head).
RETRY_DELAYS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# A record redelivered this many times (each one a consumer that died holding it) is
# dead-lettered: the writer retries database outages in-process, so only crashes count.
RECORD_DELIVERY_LIMIT = 20

# The delivery limit of every other queue: never reached. Stated, because RabbitMQ 4.0
# gives a quorum queue declared without one a limit of 20, past which a message with no
# dead-letter target is dropped (a dead letter listed 20 times, a fetch task whose fetchers
# died 20 times). 3.x reads 0 and -1 as "no redelivery", so the largest value both accept
# says "never" to both.
NO_DELIVERY_LIMIT = 2**31 - 1


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

    def holding(self, name: str) -> str:
        """Where ``sluiceway queues migrate`` keeps queue ``name``'s messages meanwhile."""
        return f"{name}.migrating"

    def retries(self) -> tuple[str, ...]:
        return tuple(self.retry(seconds) for seconds in RETRY_DELAYS)

    def owned(self) -> tuple[str, ...]:
        """Every queue of the pipeline: what to empty or delete along with it."""
        return (*self.all(), *self.retries())

    def arguments(self, name: str) -> dict[str, Any]:
        """The declare arguments of queue ``name``; they must never differ between services."""
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": NO_DELIVERY_LIMIT,
        }
        for seconds in RETRY_DELAYS:
            if name == self.retry(seconds):
                # Expired messages go back to the fetch queue, kept here until the fetch
                # queue has them (at-least-once, which needs reject-publish): a quorum queue
                # otherwise dead-letters at most once, and a task must not be lost.
                return arguments | {
                    "x-message-ttl": seconds * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.fetch,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
        if name == self.records:
            arguments |= {
                "x-delivery-limit": RECORD_DELIVERY_LIMIT,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead,
            }
        return arguments

    def all(self) -> tuple[str, str, str]:
        return (self.fetch, self.records, self.dead)


class DeclaredOtherwise(StartupError):
    """A queue exists with other declare arguments than :meth:`Queues.arguments` gives: one
    an earlier version declared, to be moved by ``sluiceway queues migrate``."""


async def declare(channel: AbstractChannel, queues: Queues, *names: str) -> list[AbstractQueue]:
    """Declare ``names`` (all of the pipeline's queues when none are given), durable; raise
    :class:`DeclaredOtherwise` for one that exists with other arguments (the channel is
    closed by then)."""
    declared = []
    for name in names or queues.all():
        try:
            queue = await channel.declare_queue(
                name, durable=True, arguments=queues.arguments(name)
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise DeclaredOtherwise(
                f"the queue {name} exists with other arguments than this version declares "
                f"({exc.args[0] if exc.args else exc}): stop the pipeline's fetchers and "
                f"writers and run `sluiceway queues migrate` (see the README, *Upgrading "
                f"the queues*)"
            ) from exc
        declared.append(queue)
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
