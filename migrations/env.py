"""Alembic environment: runs migrations over asyncpg, one migrator at a time.

The database URL comes from ``config.attributes["database_url"]`` when ``sluiceway migrate``
calls in, otherwise from ``SLUICEWAY_DATABASE_URL``. The target is sluiceway's metadata
(``sluiceway_writer.tables``), compared as ``sluiceway_writer.drift`` says, so that ``alembic
check``, ``alembic revision --autogenerate`` and ``sluiceway migrate --stamp`` compare alike.
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from sluiceway_writer import drift, tables

# Any fixed number: every migrator takes the same lock, so two Jobs or two `sluiceway migrate`
# runs at once apply each revision once. The lock is the session's, not the transaction's: a
# revision that must run outside a transaction (CREATE INDEX CONCURRENTLY, in an autocommit
# block) commits part way, and the lock must outlast that. A migrator waits for it outside any
# transaction, asking every LOCK_POLL seconds: CREATE INDEX CONCURRENTLY waits for every
# transaction older than it, so one waiting inside a transaction would deadlock with it.
MIGRATION_LOCK = 0x5175_1C3E
LOCK_POLL = 0.2


def database_url() -> str:
    url = context.config.attributes.get("database_url") or os.environ.get("SLUICEWAY_DATABASE_URL")
    if not url:
        raise SystemExit("SLUICEWAY_DATABASE_URL is not set: expected a postgresql:// URL")
    scheme = url.split("://", 1)[0]
    if scheme not in {"postgresql", "postgres"}:
        raise SystemExit(f"SLUICEWAY_DATABASE_URL has scheme {scheme!r}: expected postgresql")
    return url


def take_lock(connection: Connection) -> None:
    while True:
        taken = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        got = bool(taken.scalar())
        connection.commit()  # no transaction, and so no snapshot, held while waiting
        if got:
            return
        time.sleep(LOCK_POLL)


def migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        transaction_per_migration=False,
        version_table=tables.VERSION_TABLE,
        target_metadata=tables.metadata,
        compare_type=True,
        compare_server_default=True,
        include_name=drift.ours,
        autogenerate_plugins=drift.PLUGINS,
    )
    take_lock(connection)
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()


async def run_online() -> None:
    # asyncpg reads the URL itself, as the writer does, so that its parameters (sslmode,
    # sslrootcert, …) mean the same here; SQLAlchemy would pass them on as unknown arguments.
    url = database_url()
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(url)
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(migrate)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: sluiceway migrates online")
asyncio.run(run_online())
