"""Landing batches of records in PostgreSQL.

A *target* is the table rows land in: ``records``, or a sink table of the user's own
(``mapping.py``). In ``direct`` mode a batch is written in one transaction: COPY into a
per-connection temporary staging table, then one ``INSERT … ON CONFLICT`` into the target.
The upsert into ``records`` keeps the newest ``fetched_at`` of each key, so writing a batch
twice changes nothing; records are collapsed per key and sorted by key before the write, so
concurrent writers take row locks in the same order. In ``buffered`` mode a batch is one COPY
appended to ``records_buffer``, which takes no row lock at all; the merger (see
``merger.py``) moves buffered rows into the target with the same upsert.

Errors fall in two kinds. A *refused row* (an SQLSTATE of class 22, data exception, or 23,
integrity violation) is the data's fault: the batch is split in halves until the refused rows
stand alone, the rest commit, and each refused row is returned with the database's message.
Anything else (connection lost, server restarting, deadlock, serialization failure, disk full)
is the infrastructure's fault and propagates: the caller retries the whole batch later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from sluiceway_common.codec import Record
from sluiceway_common.logs import error_text
from sluiceway_writer import tables
from sluiceway_writer.mapping import MappedTable

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

STAGE = "sluiceway_stage"
STAGE_DDL = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE} (
    key        text        NOT NULL,
    payload    jsonb       NOT NULL,
    fetched_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""
STAGE_COLUMNS = ("key", "payload", "fetched_at")
# sluiceway's tables and columns are named as the metadata names them (tables.py); the
# staging table and "moved" are the writer's own relations of records.
UPSERT = """
INSERT INTO {table} AS r ({pipeline}, {key}, {payload}, {fetched_at})
SELECT $1, key, payload, fetched_at FROM sluiceway_stage ORDER BY key
ON CONFLICT ({primary_key}) DO UPDATE
    SET {payload} = EXCLUDED.{payload}, {fetched_at} = EXCLUDED.{fetched_at}, {written_at} = now()
    WHERE r.{fetched_at} < EXCLUDED.{fetched_at}
""".format_map(tables.names(tables.records))
# The same from the rows a merge takes out of the buffer (the relation "moved"), which may
# hold several of a key.
MERGE_UPSERT = """
INSERT INTO {table} AS r ({pipeline}, {key}, {payload}, {fetched_at})
SELECT DISTINCT ON (key) $1, key, payload, fetched_at
FROM moved ORDER BY key, fetched_at DESC
ON CONFLICT ({primary_key}) DO UPDATE
    SET {payload} = EXCLUDED.{payload}, {fetched_at} = EXCLUDED.{fetched_at}, {written_at} = now()
    WHERE r.{fetched_at} < EXCLUDED.{fetched_at}
""".format_map(tables.names(tables.records))


@dataclass(frozen=True)
class Target:
    """The table rows land in, and the upserts that land them: ``direct`` from the staging
    table, ``merge`` from ``moved`` (see ``merger.py``). ``$1`` is the pipeline, which
    ``direct`` takes only when ``pipeline`` is set (``merge`` always has it)."""

    name: str  # for people
    direct: str
    merge: str
    pipeline: bool


RECORDS = Target(tables.records.name, UPSERT, MERGE_UPSERT, pipeline=True)


def sink_target(table: MappedTable) -> Target:
    """The target of a sink table, checked (``schema.check_sink``)."""
    return Target(table.written, table.upsert(STAGE), table.upsert("moved"), pipeline=False)


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


# A sink's upsert casts text to its columns' types: a timestamp without an offset is read as
# UTC, and fetched_at goes into a timestamp column at UTC, whatever the server's own zone;
# its string literals (mapping.literal) rely on standard strings.
SERVER_SETTINGS = {"TimeZone": "UTC", "standard_conforming_strings": "on"}

T = TypeVar("T")


async def isolating(
    rows: Sequence[T], write: Callable[[Sequence[T]], Awaitable[None]]
) -> list[tuple[T, str]]:
    """``write(rows)``; when PostgreSQL refuses it for a row's sake, ``write`` each half
    again, until the refused rows stand alone. Returns them with the database's reason;
    every other error propagates. ``write`` must leave nothing behind when it fails (its own
    transaction, or a savepoint)."""
    refused: list[tuple[T, str]] = []

    async def attempt(part: Sequence[T]) -> None:
        if not part:
            return
        try:
            await write(part)
        except asyncpg.PostgresError as exc:
            if not is_refused_row(exc):
                raise
            if len(part) == 1:
                refused.append((part[0], f"{exc.sqlstate}: {exc}"))
                return
            middle = len(part) // 2
            await attempt(part[:middle])
            await attempt(part[middle:])

    await attempt(rows)
    return refused


BUFFER_TABLE = tables.records_buffer.name
BUFFER_COLUMNS = tuple(
    tables.records_buffer.c[name].name for name in ("pipeline", "key", "payload", "fetched_at")
)
WRITE_MODES = ("direct", "buffered")


class Sink:
    def __init__(
        self, pool: asyncpg.Pool, pipeline: str, mode: str = "direct", target: Target = RECORDS
    ) -> None:
        if mode not in WRITE_MODES:
            raise ValueError(f"write mode {mode!r}: expected one of {WRITE_MODES}")
        self._pool = pool
        self._pipeline = pipeline
        self._mode = mode
        self._upsert = target.direct
        self._args = (pipeline,) if target.pipeline else ()

    async def write(self, records: Sequence[Record]) -> list[tuple[Record, str]]:
        """Land ``records``; return the rows PostgreSQL refused with its reason for each."""
        return await isolating(newest_per_key(records), self._write_once)

    async def _write_once(self, rows: Sequence[Record]) -> None:
        if self._mode == "buffered":
            async with self._pool.acquire() as conn:
                await conn.copy_records_to_table(
                    BUFFER_TABLE,
                    records=[(self._pipeline, r.key, r.payload, r.fetched_at) for r in rows],
                    columns=BUFFER_COLUMNS,
                )
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                STAGE,
                records=[(r.key, r.payload, r.fetched_at) for r in rows],
                columns=STAGE_COLUMNS,
            )
            await conn.execute(self._upsert, *self._args)
