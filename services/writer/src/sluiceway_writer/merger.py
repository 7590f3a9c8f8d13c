"""Buffered mode's merger: moves rows from ``records_buffer`` into the target table.

Every buffered-mode writer runs a merger, and one at a time per pipeline does the work. The
one is chosen by a PostgreSQL advisory lock taken inside the merge transaction: the lock lives
with the data it guards, needs nothing the writer does not already have (no Redis), and is
released by PostgreSQL itself when the holder commits, rolls back or its session dies, so a
crashed merger never blocks the next one. A merge moves the oldest buffered rows of the
pipeline in one transaction (delete from the buffer, upsert into the target — ``records`` or
a sink table — with the newest ``fetched_at`` of each key winning), so a row is always in
exactly one of the two tables.

A sink table may refuse a row (a value its column's type or a constraint will not take). The
merge is then done again row set by row set, each in a savepoint, halving until the refused
rows stand alone (``sink.isolating``); each is dead-lettered with the database's reason and
leaves the buffer in the transaction that merges the rest. The dead letter is published, and
confirmed, before that transaction commits: a merger dying in between leaves the row
buffered, to be dead-lettered again by the next (a dead letter twice, never none).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from sluiceway_common.amqp import BROKER_ERRORS
from sluiceway_common.backoff import Backoff, Delays, pause
from sluiceway_common.codec import Record
from sluiceway_writer import tables
from sluiceway_writer.sink import (
    DATABASE_ERRORS,
    RECORDS,
    Target,
    describe,
    is_refused_row,
    isolating,
)

log = logging.getLogger(__name__)

# records_buffer and its columns are named as the metadata names them (tables.py).
BUFFER = tables.names(tables.records_buffer)
# Returns how many buffered rows it took: that, not how many rows the upsert wrote (several
# of one key collapse into one), tells whether the buffer is drained. {upsert}, the target's
# (kept through the names' format, filled by each Merger), reads "moved".
MERGE = """
WITH moved AS (
    DELETE FROM {table}
    WHERE {id} IN (
        SELECT {id} FROM {table} WHERE {pipeline} = $1 ORDER BY {id} LIMIT $2
    )
    RETURNING {key}, {payload}, {fetched_at}
), merged AS (
{{upsert}}
)
SELECT count(*) FROM moved
""".format_map(BUFFER)
# The same for given rows of the buffer, when a refused row is being isolated.
MERGE_ROWS = """
WITH moved AS (
    DELETE FROM {table} WHERE {pipeline} = $1 AND {id} = ANY($2::bigint[])
    RETURNING {key}, {payload}, {fetched_at}
), merged AS (
{{upsert}}
)
SELECT count(*) FROM moved
""".format_map(BUFFER)
OLDEST = "SELECT {id} FROM {table} WHERE {pipeline} = $1 ORDER BY {id} LIMIT $2".format_map(BUFFER)
TAKE = """
DELETE FROM {table} WHERE {id} = ANY($1::bigint[]) RETURNING {id}, {key}, {payload}, {fetched_at}
""".format_map(BUFFER)
# Two-key advisory lock: a fixed class for sluiceway's mergers, and the pipeline's hash.
LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('sluiceway.merge'), hashtext($1))"


class Merger:
    """Merges one pipeline's buffered rows every ``interval`` seconds while it holds the lock."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        pipeline: str,
        interval: float,
        limit: int = 20_000,
        target: Target = RECORDS,
        dead_letter: Callable[[Record, str], Awaitable[None]] | None = None,
    ) -> None:
        """``dead_letter(record, reason)`` publishes a refused row's record (confirmed);
        without it a refused row stays buffered, and is said in a warning at each merge."""
        self._pool = pool
        self._pipeline = pipeline
        self._interval = interval
        self._limit = limit
        self._merge = MERGE.format(upsert=target.merge)
        self._merge_rows = MERGE_ROWS.format(upsert=target.merge)
        self._dead_letter = dead_letter
        self.moved = 0
        # A failed merge is tried again at the next interval, as every merge is.
        self._database = Backoff(
            Delays(interval, interval), log, "merging the buffer failed, will retry",
            "merging the buffer again", describe=describe,
        )  # fmt: skip

    async def merge_once(self) -> int | None:
        """Move up to ``limit`` of the oldest buffered rows; ``None`` if another merger is at it.

        Returns the number of rows taken from the buffer (several of one key count each)."""
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    if not await conn.fetchval(LOCK, self._pipeline):
                        return None
                    moved = int(await conn.fetchval(self._merge, self._pipeline, self._limit))
            except asyncpg.PostgresError as exc:
                if not is_refused_row(exc):
                    raise
                isolated = await self._merge_isolating(conn)
                if isolated is None:
                    return None
                moved = isolated
        self.moved += moved
        return moved

    async def _merge_isolating(self, conn: asyncpg.Connection) -> int | None:
        """The merge again, the target refusing rows: those are dead-lettered and leave the
        buffer, the rest merge. Returns how many rows left the buffer."""
        async with conn.transaction():
            if not await conn.fetchval(LOCK, self._pipeline):
                return None
            ids = [row["id"] for row in await conn.fetch(OLDEST, self._pipeline, self._limit)]

            async def merge(part: Sequence[int]) -> None:
                async with conn.transaction():  # a savepoint: a refusal undoes only this part
                    await conn.fetchval(self._merge_rows, self._pipeline, list(part))

            refused = dict(await isolating(ids, merge))
            if refused and self._dead_letter is None:
                log.warning("%d buffered rows refused by the target stay buffered", len(refused))
                return len(ids) - len(refused)
            for row in await conn.fetch(TAKE, list(refused)):
                record = Record(row["key"], row["payload"], row["fetched_at"])
                assert self._dead_letter is not None
                await self._dead_letter(record, refused[row["id"]])
        return len(ids)

    async def drain(self) -> None:
        """Merge until the buffer is empty or another merger holds the lock."""
        while (moved := await self.merge_once()) == self._limit:
            log.debug("merged %d buffered rows; more are waiting", moved)

    async def run(self, stop: asyncio.Event) -> None:
        """Merge every ``interval`` until ``stop``; database errors are logged and retried."""
        while not stop.is_set():
            try:
                await self.drain()
            except (*DATABASE_ERRORS, *BROKER_ERRORS) as exc:  # a dead letter may not go
                await self._database.failed(exc, stop)
            else:
                self._database.succeeded()
                await pause(self._interval, stop)
