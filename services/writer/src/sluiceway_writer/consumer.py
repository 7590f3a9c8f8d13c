"""The writer's subscription: buffer records, flush batches, ack what committed.

Messages are acked only after their batch committed, with one ``multiple`` ack per batch.
A message that cannot be a record (not JSON, no key, a bad ``fetched_at``, an unknown
encoding) and a row PostgreSQL refuses go to the dead-letter queue with the reason in the
``x-sluiceway-reason`` header, and are acked with their batch; the rest of the batch lands.
When PostgreSQL is away the batch is retried with backoff and nothing is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aio_pika.exceptions
import aiormq.exceptions
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from sluiceway_common import codec, topology
from sluiceway_writer.batcher import Batcher
from sluiceway_writer.sink import Sink

log = logging.getLogger(__name__)

DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
BROKER_ERRORS = (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, ConnectionError)
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 30.0
PLAIN_ENCODINGS = {None, "", "identity"}


class DatabaseUnavailable(Exception):
    """The batch could not be written before the writer had to stop; it was not acked."""


class Writer:
    def __init__(
        self,
        channel: AbstractChannel,
        queues: topology.Queues,
        sink: Sink,
        batcher: Batcher[AbstractIncomingMessage],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._queues = queues
        self._sink = sink
        self._batcher = batcher
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = False
        self.written = 0
        self.dead = 0
        self.batches = 0

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        full = self._batcher.add(message, self._clock())
        if full or len(self._batcher) == 1:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush batches as they come due until ``stop`` is set."""
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
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
        """Flush everything held, trying the database once more for each batch."""
        self._stopping = True
        while len(self._batcher):
            await self.flush()

    async def flush(self) -> None:
        messages = self._batcher.take()
        records: list[codec.Record] = []
        origin: dict[int, AbstractIncomingMessage] = {}
        rejects: list[tuple[AbstractIncomingMessage, str]] = []
        for message in messages:
            try:
                record = self._decode(message)
            except codec.BadMessage as exc:
                rejects.append((message, str(exc)))
                continue
            records.append(record)
            origin[id(record)] = message
        started = self._clock()
        refused = await self._write(records)
        rejects.extend((origin[id(record)], reason) for record, reason in refused)
        for message, reason in rejects:
            await self._dead_letter(message, reason)
        await self._ack(messages)
        self.batches += 1
        self.written += len(records) - len(refused)
        self.dead += len(rejects)
        log.debug(
            "flushed %d messages (%d dead) in %.3fs",
            len(messages),
            len(rejects),
            self._clock() - started,
        )

    def _decode(self, message: AbstractIncomingMessage) -> codec.Record:
        if message.content_encoding not in PLAIN_ENCODINGS:
            raise codec.BadMessage(f"unknown content_encoding {message.content_encoding!r}")
        return codec.decode_record(message.body)

    async def _write(self, records: list[codec.Record]) -> list[tuple[codec.Record, str]]:
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                return await self._sink.write(records)
            except DATABASE_ERRORS as exc:
                if self._stopping:
                    raise DatabaseUnavailable(str(exc)) from exc
                log.warning(
                    "database write failed, retrying in %.1fs: %s: %s",
                    delay,
                    type(exc).__name__,
                    exc,
                )
                log.debug("database write failure", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.warning("dead-lettering a record: %s", reason)
        headers = dict(message.headers or {})
        headers["x-sluiceway-reason"] = reason[:1000]
        await self._channel.default_exchange.publish(
            topology.persistent(
                message.body, headers=headers, content_encoding=message.content_encoding
            ),
            routing_key=self._queues.dead,
            mandatory=True,
        )

    async def _ack(self, messages: list[AbstractIncomingMessage]) -> None:
        # One ack with `multiple` covers every earlier delivery on the same channel, all of
        # which are in this batch or were acked with an earlier one. Messages delivered on a
        # channel lost since then cannot be acked; the broker re-delivers them, harmlessly.
        last_by_channel: dict[int, AbstractIncomingMessage] = {}
        for message in messages:
            last_by_channel[id(message.channel)] = message
        for message in last_by_channel.values():
            with contextlib.suppress(*BROKER_ERRORS):
                await message.ack(multiple=True)
