"""Buffered mode's merger: moves rows from ``records_buffer`` into ``records``.

Every buffered-mode writer runs a merger, and one at a time per pipeline does the work. The
one is chosen by a PostgreSQL advisory lock taken inside the merge transaction: the lock lives
with the data it guards, needs nothing the writer does not already have (no Redis), and is
released by PostgreSQL itself when the holder commits, rolls back or its session dies, so a
crashed merger never blocks the next one. A merge moves the oldest buffered rows of the
pipeline in one transaction (delete from the buffer, upsert into records with the newest
``fetched_at`` of each key winning), so a row is always in exactly one of the two tables.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from sluiceway_common.backoff import Backoff, Delays, pause
from sluiceway_writer.sink import DATABASE_ERRORS, describe

log = logging.getLogger(__name__)

# Returns how many buffered rows it took: that, not how many rows the upsert wrote (several
# of one key collapse into one), tells whether the buffer is drained.
MERGE = """
WITH moved AS (
    DELETE FROM records_buffer
    WHERE id IN (
        SELECT id FROM records_buffer WHERE pipeline = $1 ORDER BY id LIMIT $2
    )
    RETURNING key, payload, fetched_at
), merged AS (
    INSERT INTO records AS r (pipeline, key, payload, fetched_at)
    SELECT DISTINCT ON (key) $1, key, payload, fetched_at
    FROM moved ORDER BY key, fetched_at DESC
    ON CONFLICT (pipeline, key) DO UPDATE
        SET payload = EXCLUDED.payload, fetched_at = EXCLUDED.fetched_at, written_at = now()
        WHERE r.fetched_at < EXCLUDED.fetched_at
)
SELECT count(*) FROM moved
"""
# Two-key advisory lock: a fixed class for sluiceway's mergers, and the pipeline's hash.
LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('sluiceway.merge'), hashtext($1))"


class Merger:
    """Merges one pipeline's buffered rows every ``interval`` seconds while it holds the lock."""

    def __init__(
        self, pool: asyncpg.Pool, pipeline: str, interval: float, limit: int = 20_000
    ) -> None:
        self._pool = pool
        self._pipeline = pipeline
        self._interval = interval
        self._limit = limit
        self.moved = 0
        # A failed merge is tried again at the next interval, as every merge is.
        self._database = Backoff(
            Delays(interval, interval), log, "merging the buffer failed, will retry",
            "merging the buffer again", describe=describe,
        )  # fmt: skip

    async def merge_once(self) -> int | None:
        """Move up to ``limit`` of the oldest buffered rows; ``None`` if another merger is at it.

        Returns the number of rows taken from the buffer (several of one key count each)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(LOCK, self._pipeline):
                return None
            moved = int(await conn.fetchval(MERGE, self._pipeline, self._limit))
        self.moved += moved
        return moved

    async def drain(self) -> None:
        """Merge until the buffer is empty or another merger holds the lock."""
        while (moved := await self.merge_once()) == self._limit:
            log.debug("merged %d buffered rows; more are waiting", moved)

    async def run(self, stop: asyncio.Event) -> None:
        """Merge every ``interval`` until ``stop``; database errors are logged and retried."""
        while not stop.is_set():
            try:
                await self.drain()
            except DATABASE_ERRORS as exc:
                await self._database.failed(exc, stop)
            else:
                self._database.succeeded()
                await pause(self._interval, stop)
