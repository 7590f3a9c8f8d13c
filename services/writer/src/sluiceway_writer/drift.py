"""Drift: where a database's tables differ from sluiceway's tables as ``tables.py`` declares
them.

The comparison is Alembic's autogenerate, configured once, in ``migrations/env.py``, for every
command that compares (``alembic check`` and ``alembic revision --autogenerate``): column types
and server defaults are compared, and so are what Alembic leaves out unless asked — named
CHECK constraints (its opt-in plugin) and primary keys (this module's, since the upsert's ON
CONFLICT stands on ``records``' primary key). Tables the metadata does not name, a sink table
of the user's among them, are left out, so autogenerate never proposes to drop them.
"""

from __future__ import annotations

from alembic.operations import ops
from alembic.runtime.plugins import Plugin
from alembic.util import PriorityDispatchResult
from sqlalchemy import Table

from sluiceway_writer import tables

PRIMARY_KEYS = "sluiceway.primary_keys"
# Alembic's own comparisons, its CHECK constraint comparison, and the primary keys.
PLUGINS = ["alembic.autogenerate.*", "alembic.ext.checkconstraint_byname", PRIMARY_KEYS]


def ours(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name``: of the tables, only those the metadata names."""
    return type_ != "table" or name in tables.metadata.tables


def compare_primary_key(
    autogen_context: object,
    modify_ops: ops.ModifyTableOps,
    schema: str | None,
    table_name: str,
    found: Table | None,
    wanted: Table | None,
) -> PriorityDispatchResult:
    """A table's primary key: its name and its columns, in order."""
    if found is not None and wanted is not None and _key(found) != _key(wanted):
        if found.primary_key.columns:
            modify_ops.ops.append(ops.DropConstraintOp.from_constraint(found.primary_key))
        if wanted.primary_key.columns:
            modify_ops.ops.append(ops.CreatePrimaryKeyOp.from_constraint(wanted.primary_key))
    return PriorityDispatchResult.CONTINUE


def _key(table: Table) -> tuple[object, list[str]]:
    return table.primary_key.name, [column.name for column in table.primary_key.columns]


Plugin(PRIMARY_KEYS).add_autogenerate_comparator(compare_primary_key, "table", "primary_key")
