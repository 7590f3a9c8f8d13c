"""The writer's subscription: decode records as they arrive, flush batches, ack what committed.

Messages are acked only after their batch committed, with one ``multiple`` ack per batch.
A message that cannot be a record (not JSON, no key, a bad ``fetched_at``, an unknown
encoding, too large once decompressed), a bad element of a packed message, and a row
PostgreSQL refuses each go to the dead-letter queue with the reason in the
``x-sluiceway-reason`` header, and are acked with their batch; the rest of the batch lands.
When PostgreSQL is away the batch is retried with backoff and nothing is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from sluiceway_common import amqp, codec, topology
from sluiceway_common.backoff import Backoff, Delays
from sluiceway_writer.batcher import Batcher
from sluiceway_writer.metrics import Timings
from sluiceway_writer.sink import DATABASE_ERRORS, Sink, describe

log = logging.getLogger(__name__)

BROKER_ERRORS = amqp.BROKER_ERRORS
# While PostgreSQL is away a batch is tried again after these waits.
RETRY_DELAYS = Delays(first=0.5, cap=30.0)


@dataclass(slots=True)
class Delivery:
    """A message as the batcher holds it: decoded on arrival, or the reason it cannot be."""

    message: AbstractIncomingMessage
    decoded: codec.Decoded | None
    error: str | None = None


class DatabaseUnavailable(Exception):
    """The batch could not be written before the writer had to stop; it was not acked."""


class Writer:
    """Consumes one pipeline's records; counts what it did for the exit summary and the
    metrics (``metrics.py``), and times each batch in ``timings``."""

    def __init__(
        self,
        channel: AbstractChannel,
        queues: topology.Queues,
        sink: Sink,
        batcher: Batcher[Delivery],
        stop: asyncio.Event,
        timings: Timings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._queues = queues
        self._sink = sink
        if batcher.max_bytes is None:
            raise ValueError("the writer's batcher needs a byte bound: it caps decompression")
        self._batcher = batcher
        self._max_bytes = batcher.max_bytes
        self._clock = clock
        self._wake = asyncio.Event()
        self._stop = stop
        self._timings = timings
        self.messages = 0  # consumed, redeliveries included
        self.records = 0  # in those messages, undecodable ones counting one each
        self.written = 0
        # cause (undecodable: not a record; refused: by PostgreSQL) -> records dead-lettered
        self.dead_letters: Counter[str] = Counter(undecodable=0, refused=0)
        self.batches = 0
        self._database = Backoff(
            RETRY_DELAYS, log, "database write failed, retrying", "database writes succeed again",
            describe=describe,
        )  # fmt: skip

    @property
    def dead(self) -> int:
        return self.dead_letters.total()

    @property
    def write_retries(self) -> int:
        return self._database.retries

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        # Decoding here, not at the flush, overlaps it with the database writing the batch
        # before, and tells the batcher how many rows and bytes the message weighs. Nothing
        # here awaits: a delivery that has started on_message is in the batcher, so the last
        # flush after consuming ends has every one (see Service.consuming).
        try:
            decoded = codec.decode_message(message.body, message.content_encoding, self._max_bytes)
        except codec.BadMessage as exc:
            delivery, rows, size = Delivery(message, None, str(exc)), 1, len(message.body)
        else:
            delivery, rows, size = Delivery(message, decoded), len(decoded.records), decoded.size
        self.messages += 1
        self.records += max(rows, 1)
        full = self._batcher.add(delivery, self._clock(), max(rows, 1), size)
        if full or len(self._batcher) == 1:
            self._wake.set()

    async def run(self) -> None:
        """Flush batches as they come due until the stop event is set."""
        stopped = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                deadline = self._batcher.deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._clock())
                woken = asyncio.create_task(self._wake.wait())
                await asyncio.wait(
                    {woken, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
                self._wake.clear()
                while self._batcher.due(self._clock()):
                    await self.flush()
        finally:
            stopped.cancel()

    async def drain(self) -> None:
        """Flush everything held; once stopping, a batch gets one try at the database."""
        while len(self._batcher):
            await self.flush()

    async def flush(self) -> None:
        deliveries = self._batcher.take()
        records: list[codec.Record] = []
        origin: dict[int, AbstractIncomingMessage] = {}
        # (the message it came in, the body to dead-letter or None for the message's own, why)
        rejects: list[tuple[AbstractIncomingMessage, bytes | None, str]] = []
        started = self._clock()
        for delivery in deliveries:
            if delivery.decoded is None:
                rejects.append((delivery.message, None, delivery.error or "undecodable"))
                continue
            for body, reason in delivery.decoded.bad:
                rejects.append((delivery.message, body, reason))
            for record in delivery.decoded.records:
                records.append(record)
                origin[id(record)] = delivery.message
        undecodable = len(rejects)
        refused = await self._write(records)
        for record, reason in refused:
            body = codec.encode_record(record.key, record.payload.encode(), record.fetched_at)
            rejects.append((origin[id(record)], body, reason))
        try:
            for message, dead_body, reason in rejects:
                await self._dead_letter(message, dead_body, reason)
        except BROKER_ERRORS as exc:
            # The rows are written; the whole batch comes again and lands as a no-op, and
            # its dead letters are published then.
            log.warning("cannot dead-letter, the broker connection is lost: %s", exc)
            await self._requeue([d.message for d in deliveries])
            return
        await self._ack([d.message for d in deliveries])
        self.batches += 1
        self.written += len(records) - len(refused)
        self.dead_letters["undecodable"] += undecodable
        self.dead_letters["refused"] += len(refused)
        took = self._clock() - started
        self._timings.batch_rows.observe(len(records) + undecodable)
        self._timings.flush.observe(took)
        log.debug(
            "flushed %d messages, %d rows (%d dead) in %.3fs",
            len(deliveries), len(records), len(rejects), took,
        )  # fmt: skip

    async def _write(self, records: list[codec.Record]) -> list[tuple[codec.Record, str]]:
        while True:
            try:
                refused = await self._sink.write(records)
            except DATABASE_ERRORS as exc:
                if self._stop.is_set():
                    raise DatabaseUnavailable(describe(exc)) from exc
                # A SIGTERM cuts the wait short: one more try, then the writer stops.
                await self._database.failed(exc, self._stop)
            else:
                self._database.succeeded()
                return refused

    async def _dead_letter(
        self, message: AbstractIncomingMessage, body: bytes | None, reason: str
    ) -> None:
        """Publish ``body`` (the message's own when ``None``) to the dead-letter queue."""
        await self._publish_dead(
            message.body if body is None else body,
            reason,
            dict(message.headers or {}),
            message.content_encoding if body is None else None,
        )

    async def dead_letter(self, record: codec.Record, reason: str) -> None:
        """Dead-letter ``record``, refused by the target as the merger moved it out of the
        buffer (buffered mode); counted as refused."""
        body = codec.encode_record(record.key, record.payload.encode(), record.fetched_at)
        await self._publish_dead(body, reason, {}, None)
        self.dead_letters["refused"] += 1

    async def _publish_dead(
        self, body: bytes, reason: str, headers: dict[str, Any], encoding: str | None
    ) -> None:
        log.warning("dead-lettering a record: %s", reason)
        headers["x-sluiceway-reason"] = reason[:1000]
        await amqp.broker_result(self._channel.default_exchange.publish(
            topology.persistent(body, headers=headers, content_encoding=encoding),
            routing_key=self._queues.dead,
            mandatory=True,
        ))  # fmt: skip

    async def _ack(self, messages: list[AbstractIncomingMessage]) -> None:
        # One ack with `multiple` covers every earlier delivery on the same channel, all of
        # which are in this batch or were acked with an earlier one. Messages delivered on a
        # channel lost since then cannot be acked; the broker re-delivers them, harmlessly.
        last_by_channel: dict[int, AbstractIncomingMessage] = {}
        for message in messages:
            with contextlib.suppress(*BROKER_ERRORS):  # its channel is lost
                last_by_channel[id(message.channel)] = message
        for message in last_by_channel.values():
            with contextlib.suppress(*BROKER_ERRORS):
                await message.ack(multiple=True)

    async def _requeue(self, messages: list[AbstractIncomingMessage]) -> None:
        """Give ``messages`` back to the queue, those whose channel still stands."""
        for message in messages:
            with contextlib.suppress(*BROKER_ERRORS):
                await message.nack(requeue=True)
