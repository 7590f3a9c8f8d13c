"""Landing batches of records in PostgreSQL.

In ``direct`` mode a batch is written in one transaction: COPY into a per-connection
temporary staging table, then one ``INSERT … ON CONFLICT`` into ``records``. The upsert keeps
the newest ``fetched_at`` of each key, so writing a batch twice changes nothing; records are
collapsed per key and sorted by key before the write, so concurrent writers take row locks in
the same order. In ``buffered`` mode a batch is one COPY appended to ``records_buffer``, which
takes no row lock at all; the merger (see ``merger.py``) moves buffered rows into ``records``
with the same upsert.

Errors fall in two kinds. A *refused row* (an SQLSTATE of class 22, data exception, or 23,
integrity violation) is the data's fault: the batch is split in halves until the refused rows
stand alone, the rest commit, and each refused row is returned with the database's message.
Anything else (connection lost, server restarting, deadlock, serialization failure, disk full)
is the infrastructure's fault and propagates: the caller retries the whole batch later.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from sluiceway_common.codec import Record
from sluiceway_common.logs import error_text

# The database away, restarting or cutting a connection mid-statement: retry later. asyncpg
# raises InternalClientError (no subclass of its other errors) when the server ended a
# connection in the middle of a COPY and the protocol's state no longer matches.
DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

STAGE_DDL = """
CREATE TEMPORARY TABLE IF NOT EXISTS sluiceway_stage (
    key        text        NOT NULL,
    payload    jsonb       NOT NULL,
    fetched_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""
STAGE_COLUMNS = ("key", "payload", "fetched_at")
UPSERT = """
INSERT INTO records AS r (pipeline, key, payload, fetched_at)
SELECT $1, key, payload, fetched_at FROM sluiceway_stage ORDER BY key
ON CONFLICT (pipeline, key) DO UPDATE
    SET payload = EXCLUDED.payload, fetched_at = EXCLUDED.fetched_at, written_at = now()
    WHERE r.fetched_at < EXCLUDED.fetched_at
"""


def describe(exc: BaseException) -> str:
    """``exc`` as ``Type: message`` for a log line, naming the error that ended the write.

    When the connection is lost inside a transaction, asyncpg's rollback fails in turn and
    raises over the first error (``cannot call Transaction.__aexit__(): the underlying
    connection is closed``), so the server's own reason (``terminating connection due to
    administrator command``, say) would be lost from sight. The chain of errors is searched
    for that reason: the first PostgreSQL error, else the first lost-connection error, else
    ``exc`` itself.
    """
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 8:
        chain.append(nxt)
    named = next((e for e in chain if isinstance(e, asyncpg.PostgresError)), None) or next(
        (e for e in chain if isinstance(e, asyncpg.ConnectionDoesNotExistError)), exc
    )
    return error_text(named)


def is_refused_row(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing the data rather than failing to take it."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, asyncpg.PostgresError) and str(sqlstate or "")[:2] in {"22", "23"}


def newest_per_key(records: Sequence[Record]) -> list[Record]:
    """One record per key, the newest by ``fetched_at`` (the first seen on a tie), by key."""
    newest: dict[str, Record] = {}
    for record in records:
        held = newest.get(record.key)
        if held is None or record.fetched_at > held.fetched_at:
            newest[record.key] = record
    return [newest[key] for key in sorted(newest)]


async def prepare_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(STAGE_DDL)


BUFFER_COLUMNS = ("pipeline", "key", "payload", "fetched_at")
WRITE_MODES = ("direct", "buffered")


class Sink:
    def __init__(self, pool: asyncpg.Pool, pipeline: str, mode: str = "direct") -> None:
        if mode not in WRITE_MODES:
            raise ValueError(f"write mode {mode!r}: expected one of {WRITE_MODES}")
        self._pool = pool
        self._pipeline = pipeline
        self._mode = mode

    async def write(self, records: Sequence[Record]) -> list[tuple[Record, str]]:
        """Land ``records``; return the rows PostgreSQL refused with its reason for each."""
        rows = newest_per_key(records)
        refused: list[tuple[Record, str]] = []
        await self._write_isolating(rows, refused)
        return refused

    async def _write_isolating(self, rows: list[Record], refused: list[tuple[Record, str]]) -> None:
        if not rows:
            return
        try:
            await self._write_once(rows)
        except asyncpg.PostgresError as exc:
            if not is_refused_row(exc):
                raise
            if len(rows) == 1:
                refused.append((rows[0], f"{exc.sqlstate}: {exc}"))
                return
            middle = len(rows) // 2
            await self._write_isolating(rows[:middle], refused)
            await self._write_isolating(rows[middle:], refused)

    async def _write_once(self, rows: list[Record]) -> None:
        if self._mode == "buffered":
            async with self._pool.acquire() as conn:
                await conn.copy_records_to_table(
                    "records_buffer",
                    records=[(self._pipeline, r.key, r.payload, r.fetched_at) for r in rows],
                    columns=BUFFER_COLUMNS,
                )
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                "sluiceway_stage",
                records=[(r.key, r.payload, r.fetched_at) for r in rows],
                columns=STAGE_COLUMNS,
            )
            await conn.execute(UPSERT, self._pipeline)
