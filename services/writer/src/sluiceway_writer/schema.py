"""The database schema: where the Alembic migrations are, applying them, stamping a database
whose tables were made by hand, and checking that a database is at the revision this code was
written for; and checking a sink table (the user's own, which the migrations never touch)
against its mapping."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from sluiceway_common.sink import SinkSpec, TableName
from sluiceway_writer import drift, mapping, tables


class SchemaError(Exception):
    """The database is not at this code's head revision; the message says what to do."""


class StampRefused(SchemaError):
    """``stamp`` found the tables other than the head revision makes them; the message says
    how they differ."""


def migrations_dir() -> Path:
    """``$SLUICEWAY_MIGRATIONS_DIR``, else the ``migrations`` folder of the source checkout."""
    configured = os.environ.get("SLUICEWAY_MIGRATIONS_DIR")
    if configured:
        path = Path(configured)
        if not (path / "env.py").is_file():
            raise SchemaError(f"SLUICEWAY_MIGRATIONS_DIR={configured!r} holds no env.py")
        return path
    for parent in Path(__file__).resolve().parents:
        if (parent / "migrations" / "env.py").is_file():
            return parent / "migrations"
    raise SchemaError("no migrations folder found: set SLUICEWAY_MIGRATIONS_DIR")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    return config


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config("")).get_heads()
    if len(heads) != 1:
        raise SchemaError(f"the migrations have {len(heads)} heads; merge them into one")
    return heads[0]


def upgrade(database_url: str) -> None:
    """Apply every migration up to head (``alembic upgrade head``)."""
    command.upgrade(alembic_config(database_url), "head")


def stamp(database_url: str) -> bool:
    """Record the head revision in a database whose tables were made by other means (``alembic
    stamp head``), once they are found to be what the metadata says, compared as ``alembic
    check`` compares: in the migration lock, in the transaction that stamps. False when the
    database was at head already; :class:`StampRefused` when the tables differ or the database
    is at another revision."""
    config = alembic_config(database_url)
    scripts = ScriptDirectory.from_config(config)
    wanted = head()
    stamped = False

    def stamp_if_alike(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
        nonlocal stamped
        if heads == (wanted,):
            return []
        if heads:
            raise StampRefused(
                f"the database is at revision {', '.join(heads)} already: `sluiceway migrate` "
                "brings it to head; --stamp is for a database without a revision"
            )
        if not set(tables.metadata.tables) & set(inspect(context.bind).get_table_names()):
            raise StampRefused(
                "the database has none of sluiceway's tables: `sluiceway migrate` creates them"
            )
        if differences := drift.differences(context):
            raise StampRefused(
                f"the tables differ from revision {wanted}'s, so the database was not stamped: "
                + "; ".join(differences)
            )
        context.stamp(scripts, wanted)
        stamped = True
        return []

    with EnvironmentContext(config, scripts, fn=stamp_if_alike):
        scripts.run_env()
    return stamped


async def current(conn: asyncpg.Connection) -> str | None:
    if await conn.fetchval("SELECT to_regclass($1)", tables.VERSION_TABLE) is None:
        return None
    revision: str | None = await conn.fetchval(f"SELECT version_num FROM {tables.VERSION_TABLE}")
    return revision


async def check(conn: asyncpg.Connection, wanted: str | None = None) -> str:
    """Return the head revision, or raise :class:`SchemaError` when the database is not at it.

    ``wanted`` is the head when the caller knows it already (reading it reads every migration
    script from disk)."""
    wanted = wanted or head()
    found = await current(conn)
    if found == wanted:
        return wanted
    if found is None:
        raise SchemaError(
            f"the database has no sluiceway schema; this writer needs revision {wanted}: "
            "run `sluiceway migrate`"
        )
    scripts = ScriptDirectory.from_config(alembic_config(""))
    known = {script.revision for script in scripts.walk_revisions()}
    if found in known:
        raise SchemaError(
            f"the database schema is at revision {found}, behind this writer's {wanted}: "
            "run `sluiceway migrate`"
        )
    raise SchemaError(
        f"the database schema is at revision {found}, which this writer does not know "
        f"(its head is {wanted}): deploy the writer that matches the database"
    )


# The sink table (mapping.py) as the writer's role sees it. An unqualified name is the first
# of the search path that holds it, as PostgreSQL resolves it.
SINK_TABLE = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text, current_user AS role,
       has_schema_privilege(n.oid, 'USAGE') AS usage
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND CASE WHEN $1::text IS NULL THEN n.nspname = ANY (current_schemas(true))
           ELSE n.nspname = $1 END
ORDER BY array_position(current_schemas(true), n.nspname::text)
LIMIT 1
"""
SINK_COLUMNS = """
SELECT a.attname AS name, format_type(a.atttypid, NULL) AS type,
       a.attgenerated <> '' OR a.attidentity = 'a' AS generated,
       has_column_privilege(a.attrelid, a.attnum, 'INSERT') AS may_insert,
       has_column_privilege(a.attrelid, a.attnum, 'UPDATE') AS may_update,
       has_column_privilege(a.attrelid, a.attnum, 'SELECT') AS may_select
FROM pg_attribute a
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
# Unique indexes an ON CONFLICT (column) can infer: valid, immediate, not partial, no
# expressions; their key columns (INCLUDE columns left out).
SINK_UNIQUE = """
SELECT array_agg(a.attname::text ORDER BY k.ord) AS columns
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indimmediate
  AND i.indpred IS NULL AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts
GROUP BY i.indexrelid
"""


async def read_table(conn: asyncpg.Connection, name: TableName) -> mapping.TableFacts | None:
    """What the catalog says of the sink table ``name``; ``None`` when there is none."""
    table = await conn.fetchrow(SINK_TABLE, name.schema, name.name)
    if table is None:
        return None
    columns = [
        mapping.ColumnFacts(**dict(row)) for row in await conn.fetch(SINK_COLUMNS, table["oid"])
    ]
    unique = await conn.fetch(SINK_UNIQUE, table["oid"])
    return mapping.TableFacts(
        table["nspname"],
        table["relname"],
        table["relkind"],
        {column.name: column for column in columns},
        tuple(tuple(row["columns"]) for row in unique),
        table["usage"],
        table["role"],
    )


async def check_sink(conn: asyncpg.Connection, sink: SinkSpec) -> mapping.MappedTable:
    """The sink table, checked: :class:`SchemaError` saying all that is wrong with it."""
    try:
        return mapping.plan(sink, await read_table(conn, sink.table))
    except mapping.Unfit as exc:
        raise SchemaError(str(exc)) from None
