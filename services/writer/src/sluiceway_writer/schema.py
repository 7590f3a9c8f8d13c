"""The database schema: where the Alembic migrations are, applying them, and checking that a
database is at the revision this code was written for."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


class SchemaError(Exception):
    """The database is not at this code's head revision; the message says what to do."""


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


async def current(conn: asyncpg.Connection) -> str | None:
    if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
        return None
    revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
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
