"""sluiceway's own tables, as SQLAlchemy Core declares them: what the migrations' head builds.

This module is the one statement of sluiceway's schema in code. The Alembic revisions in
``migrations/versions`` build the tables; this metadata says what they are once built, and
``alembic check`` (in ``make check``) fails when the two part. A schema change is made here
first, then written as a revision with ``alembic revision --autogenerate`` and reviewed. The
writer's SQL takes its table and column names from here.

Only sluiceway's tables are here. A sink table (``SLUICEWAY_SINK_TABLE``) is the user's, made
and migrated by the user's own tools; the comparison leaves out every table this metadata does
not name. The Alembic version table is Alembic's, named here so that the writer's revision
check reads the table Alembic writes.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

# Names PostgreSQL would give, so that a constraint or index declared without a name gets the
# one the revisions' DDL gave it (a primary key is records_pkey there too).
NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "ix": "%(table_name)s_%(column_0_N_name)s",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

VERSION_TABLE = "alembic_version"

records = Table(
    "records",
    metadata,
    Column("pipeline", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("payload", JSONB, nullable=False),
    Column("fetched_at", DateTime(timezone=True), nullable=False),
    Column("written_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # enqueue --stale reads a pipeline's oldest rows (revision 0003).
    Index(None, "pipeline", "fetched_at"),
    comment="sluiceway: the newest record of each key",
)

records_buffer = Table(
    "records_buffer",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("pipeline", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("fetched_at", DateTime(timezone=True), nullable=False),
    Column("buffered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # A merger takes a pipeline's oldest buffered rows.
    Index(None, "pipeline", "id"),
    comment="sluiceway: rows of buffered-mode writers waiting to be merged into records",
)


def names(table: Table) -> dict[str, str]:
    """What SQL written with ``str.format`` calls ``table`` by: ``{table}``, ``{primary_key}``
    (its columns, in order) and each column by its own name. A name that leaves the metadata
    is then a KeyError where the SQL is built, on import, rather than in the first batch."""
    return {
        "table": table.name,
        "primary_key": ", ".join(column.name for column in table.primary_key.columns),
        **{column.key: column.name for column in table.columns},
    }
