"""Where ``sluiceway enqueue`` reads its keys: a *source* yields them in chunks, each key with
its place in the source (a line of a file, a row of a query) so that an error or a resume
hint can point at it. Every source streams in constant memory and checks each key the same
way (:func:`check_key`) before it may reach a URL.

* lines of a file or standard input (:func:`file_keys`);
* the first column of a SQL query's rows (:func:`sql_keys`), read-only, through a server-side
  cursor;
* the pipeline's own keys whose row is older than an age, oldest first (:func:`stale_keys`):
  the refresh schedule; read from ``records``, or with a sink from the sink table.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

import asyncpg

from sluiceway_common.lifecycle import reach
from sluiceway_common.sink import SinkSpec, quote

Chunk = list[tuple[int, str]]  # (place in the source, key)

# Keys longer than this are refused at the door: no URL or primary key should carry them.
MAX_KEY_BYTES = 4096
MAX_LINE_BYTES = MAX_KEY_BYTES + 1  # and a carriage return
READ_BYTES = 1 << 16
# Rows a cursor fetches from PostgreSQL at a time, and keys a chunk of a query's source holds.
ROWS = 2000
AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadInput(Exception):
    """The source cannot go on: a line or row that cannot be a key, a listing's page that
    cannot be had or read; the message says which and why. The keys before it are queued."""


@dataclass
class Skipped:
    """What a source passed over: blank lines, NULL or empty values."""

    blank: int = 0


def check_key(key: str, where: str) -> str:
    """``key`` as it may be queued; :class:`BadInput` naming ``where`` if it may not."""
    if len(key.encode()) > MAX_KEY_BYTES:
        raise BadInput(f"{where}: longer than {MAX_KEY_BYTES} bytes")
    if not key.isprintable():
        raise BadInput(f"{where}: contains a control character")
    return key


async def file_keys(stream: BinaryIO, skipped: Skipped | None = None) -> AsyncIterator[Chunk]:
    """Yield the keys of ``stream`` with their line numbers, as many as one read brings,
    reading off the event loop in constant memory (a line may not outgrow a key's bound).

    Surrounding whitespace and the line ending are stripped; blank lines are skipped.
    """
    skipped = skipped or Skipped()
    # read1 hands over what a pipe has now, so keys piped in slowly are not held back.
    read = getattr(stream, "read1", stream.read)
    number = 0
    rest = b""
    while True:
        chunk = await asyncio.to_thread(read, READ_BYTES)
        lines = (rest + chunk).split(b"\n")
        # At the end, what follows the last newline is a line only if it holds something.
        rest = lines.pop() if chunk or lines == [b""] else b""
        keys = []
        for raw in lines:
            number += 1
            key = _line_key(raw, number)
            if key:
                keys.append((number, key))
            else:
                skipped.blank += 1
        if keys:
            yield keys
        if len(rest) > MAX_LINE_BYTES:  # a line still unfinished, already too long
            raise BadInput(f"line {number + 1}: longer than {MAX_KEY_BYTES} bytes")
        if not chunk:
            return


def _line_key(raw: bytes, number: int) -> str:
    """The key on line ``number`` (its bytes without the newline); "" for a blank line."""
    if len(raw) > MAX_LINE_BYTES:
        raise BadInput(f"line {number}: longer than {MAX_KEY_BYTES} bytes")
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadInput(f"line {number}: not valid UTF-8") from None
    return check_key(key, f"line {number}") if key else ""


async def query_keys(
    url: str,
    query: str,
    *args: object,
    skipped: Skipped | None = None,
    cast: bool = True,
    server_settings: dict[str, str] | None = None,
) -> AsyncIterator[Chunk]:
    """The first column of ``query``'s rows, in a read-only transaction through a server-side
    cursor; NULL and empty values are skipped. With ``cast`` the column is cast to text by
    PostgreSQL (the query is wrapped for that); without, it must be text already."""
    skipped = skipped or Skipped()
    query = query.strip().rstrip(";").strip()
    conn = await reach("PostgreSQL", url, asyncpg.connect(url, server_settings=server_settings))
    try:
        async with conn.transaction(readonly=True):
            try:
                columns = (await conn.prepare(query)).get_attributes()
            except asyncpg.PostgresError as exc:
                raise BadInput(f"the query is refused: {exc}") from None
            if not columns:
                raise BadInput("the query returns no columns: its first column is the key")
            first = columns[0].name
            if cast and sum(column.name == first for column in columns) > 1:
                raise BadInput(f"the query's first column name {first!r} is not unique: alias it")
            if cast:
                # A CTE takes any statement, so a data-modifying one meets the transaction's
                # READ ONLY rather than a syntax error.
                query = f"WITH q AS ({query}) SELECT q.{quote(first)}::text FROM q"
            # ROWS a fetch rather than iterating the cursor, which costs a coroutine step and
            # a connection check a row: half the source's CPU (1,000,000 rows, --dry-run).
            cursor = await conn.cursor(query, *args)
            first_row = 1
            while rows := await cursor.fetch(ROWS):
                keys: Chunk = []
                for number, row in enumerate(rows, first_row):
                    if row[0]:
                        keys.append((number, check_key(row[0], f"row {number}")))
                    else:
                        skipped.blank += 1
                first_row += len(rows)
                if keys:
                    yield keys
    finally:
        await conn.close()


def sql_keys(url: str, query: str, skipped: Skipped | None = None) -> AsyncIterator[Chunk]:
    """``--sql QUERY``: the first column of each row is a key."""
    return query_keys(url, query, skipped=skipped)


# The pipeline's rows whose fetch is older than $2 seconds, oldest first, $3 at most (NULL:
# all); the index on (pipeline, fetched_at) serves it.
STALE = (
    "SELECT key FROM records WHERE pipeline = $1 AND fetched_at < now() - make_interval(secs => $2)"
    " ORDER BY fetched_at, key LIMIT $3"
)


# With a sink, its version column says when each row was fetched: the whole table is read
# (it has no pipeline column), stalest first, $2 at most; an index on the version serves it.
STALE_SINK = (
    "SELECT {key}::text FROM {table} WHERE {version} < now() - make_interval(secs => $1)"
    " ORDER BY {version}, {key} LIMIT $2"
)
# A version column of type timestamp holds fetched_at at UTC (the writer's sessions write it
# so), so now() is compared with it at UTC too, whatever the server's own zone; a key column
# of a time type is read back as the writer cast it.
UTC = {"TimeZone": "UTC"}


def stale_keys(
    url: str, pipeline: str, age: float, limit: int | None, sink: SinkSpec | None = None
) -> AsyncIterator[Chunk]:
    """``--stale AGE``: the pipeline's keys fetched longer than ``age`` seconds ago; with a
    ``sink`` (which must have a version column), the sink table's."""
    if sink is None:
        return query_keys(url, STALE, pipeline, age, limit, cast=False)
    if sink.version is None:
        raise ValueError("a sink without a version column does not say when a row was fetched")
    query = STALE_SINK.format(
        key=quote(sink.key), table=sink.table.quoted, version=quote(sink.version)
    )
    return query_keys(url, query, age, limit, cast=False, server_settings=UTC)


def parse_age(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` as seconds."""
    found = AGE.fullmatch(text.strip())
    if not found or float(found.group(1)) <= 0:
        raise ValueError("")
    return float(found.group(1)) * UNIT_SECONDS[found.group(2)]
