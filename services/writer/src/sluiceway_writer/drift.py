"""Drift: where a database's tables differ from sluiceway's tables as ``tables.py`` declares
them.

The comparison is Alembic's autogenerate, configured once, in ``migrations/env.py``, for every
command that compares (``alembic check``, ``alembic revision --autogenerate`` and ``sluiceway
migrate --stamp``): column types and server defaults are compared, and so are what Alembic
leaves out unless asked — named CHECK constraints (its opt-in plugin) and primary keys (this
module's, since the upsert's ON CONFLICT stands on ``records``' primary key). Tables the
metadata does not name, a sink table of the user's among them, are left out, so autogenerate
never proposes to drop them. A difference is said in words by :func:`describe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from alembic.runtime.plugins import Plugin
from alembic.util import PriorityDispatchResult
from sqlalchemy import (
    CheckConstraint,
    Constraint,
    DefaultClause,
    ForeignKeyConstraint,
    Identity,
    Index,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.types import TypeEngine

from sluiceway_writer import tables

PRIMARY_KEYS = "sluiceway.primary_keys"
# Types and defaults are said as PostgreSQL spells them. (SQLAlchemy's dialects are untyped.)
DIALECT = PGDialect()  # type: ignore[no-untyped-call]
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


def differences(context: MigrationContext) -> list[str]:
    """What differs between the database of ``context`` (configured by ``env.py``) and the
    metadata, each said as :func:`describe` says it."""
    return describe(compare_metadata(context, tables.metadata))


def describe(diffs: Sequence[Any]) -> list[str]:
    """Alembic's diffs (what would bring the database to the metadata) as what the database
    has against what sluiceway has: ``records.payload: type json where sluiceway has
    jsonb``."""
    # A column's changes come as a list of tuples, everything else as one tuple. A missing
    # table is one difference, not one more for each of its indexes.
    missing = {diff[1].name for diff in diffs if diff[0] == "add_table"}
    said: list[str] = []
    for diff in diffs:
        if isinstance(diff, list):
            said.extend(_column(change) for change in diff)
        elif diff[0] in {"add_index", "add_constraint"} and diff[1].table.name in missing:
            continue
        else:
            said.append(_object(diff))
    return said


def _object(diff: tuple[Any, ...]) -> str:
    kind, thing = diff[0], diff[1]
    if kind == "add_table":
        return f"no table {thing.name}"
    if kind == "remove_table":
        return f"table {thing.name} is not sluiceway's"
    if kind in {"add_column", "remove_column"}:
        _, _, table, column = diff
        if kind == "add_column":
            return f"{table}: no column {column.name}"
        return f"{table}: column {column.name} is not sluiceway's"
    if kind == "add_table_comment":  # with the database's comment, or None
        found, wanted = _comment(diff[2]), _comment(thing.comment)
        return f"{thing.name}: comment {found} where sluiceway has {wanted}"
    if kind == "remove_table_comment":
        return f"{thing.name}: a comment where sluiceway has none"
    if kind.startswith("add_") or kind.startswith("remove_"):
        table = thing.table.name if thing.table is not None else "?"
        if kind.startswith("add_"):
            return f"{table}: no {_part(thing)}"
        return f"{table}: {_part(thing)} is not sluiceway's"
    return repr(diff)


def _column(change: tuple[Any, ...]) -> str:
    kind, _, table, column, _, found, wanted = change
    where = f"{table}.{column}"
    if kind == "modify_type":
        return f"{where}: type {_type(found)} where sluiceway has {_type(wanted)}"
    if kind == "modify_nullable":
        return f"{where}: {_null(found)} where sluiceway has {_null(wanted)}"
    if kind == "modify_default":
        # Identity options matter only when the two agree on ALWAYS or BY DEFAULT.
        both = isinstance(found, Identity) and isinstance(wanted, Identity)
        detail = both and found.always == wanted.always
        found, wanted = _default(found, detail), _default(wanted, detail)
        return f"{where}: default {found} where sluiceway has {wanted}"
    if kind == "modify_comment":
        return f"{where}: comment {_comment(found)} where sluiceway has {_comment(wanted)}"
    return repr(change)


def _part(thing: Index | Constraint) -> str:
    """An index or a constraint as a person names it: ``index records_buffer_pipeline_id
    (pipeline, id)``."""
    if isinstance(thing, CheckConstraint):
        return f"check constraint {thing.name} ({thing.sqltext})"
    words = {
        PrimaryKeyConstraint: "primary key",
        UniqueConstraint: "unique constraint",
        ForeignKeyConstraint: "foreign key",
    }
    word = words.get(type(thing), "constraint")
    if isinstance(thing, Index):
        word = "unique index" if thing.unique else "index"
        parts = [getattr(e, "name", None) or _sql(e) for e in thing.expressions]
    else:
        parts = [column.name for column in getattr(thing, "columns", ())]
    return f"{word} {thing.name} ({', '.join(parts)})"


def _sql(element: Any) -> str:
    return str(element.compile(dialect=DIALECT))


def _type(type_: TypeEngine[Any]) -> str:
    return _sql(type_).lower()


def _null(nullable: bool) -> str:
    return "nullable" if nullable else "NOT NULL"


def _comment(comment: str | None) -> str:
    return "none" if comment is None else repr(comment)


def _default(default: Any, detail: bool = False) -> str:
    if default is None:
        return "none"
    if isinstance(default, Identity):
        if detail:  # the same kind, other options: every option, as SQLAlchemy says them
            return repr(default)
        return f"GENERATED {'ALWAYS' if default.always else 'BY DEFAULT'} AS IDENTITY"
    if isinstance(default, DefaultClause):
        arg = default.arg
        return arg if isinstance(arg, str) else _sql(arg)
    return str(default)
