"""The writer's side of a *sink* (the vocabulary and the four settings are
:mod:`sluiceway_common.sink`): judging the table by the catalog's facts (:func:`plan`;
``schema.read_table`` reads them) and writing the upsert (:meth:`MappedTable.upsert`), which
reads staged or buffered records (``key, payload, fetched_at``) and is generated once, at
start. All of it is pure. Settings reach the SQL only as quoted identifiers and string
literals, and the types only as the catalog spells them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sluiceway_common import pointer
from sluiceway_common.sink import SinkSpec, quote

JSON_TYPES = {"json", "jsonb"}
TIMESTAMP_TYPES = {"timestamp with time zone", "timestamp without time zone"}
TARGET = "sluiceway_row"  # the upsert's alias for the table's row; the source is "s"


class Unfit(Exception):
    """The sink table cannot take the mapping; the message names the table and why."""


# --- the table, as the catalog describes it ---------------------------------------------


@dataclass(frozen=True)
class ColumnFacts:
    """One column of the table: its type as ``format_type`` spells it without a modifier
    (``character varying``, not ``character varying(20)``: the insert applies the modifier),
    and what the writer's role may do with it."""

    name: str
    type: str
    generated: bool = False  # GENERATED ALWAYS (stored or identity): cannot be written
    may_insert: bool = True
    may_update: bool = True
    may_select: bool = True


@dataclass(frozen=True)
class TableFacts:
    """What the catalog says of the table the setting names."""

    schema: str
    name: str
    kind: str  # pg_class.relkind
    columns: Mapping[str, ColumnFacts]
    unique: tuple[tuple[str, ...], ...]  # the columns of each unique index ON CONFLICT can use
    schema_usage: bool = True
    role: str = ""


KINDS = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}


def literal(text: str) -> str:
    """``text`` as an SQL string literal (the writer's sessions set
    ``standard_conforming_strings``, so a backslash is just a backslash)."""
    return "'" + text.replace("'", "''") + "'"


def _names(names: list[str]) -> str:
    return ", ".join(quote(name) for name in names)


def plan(sink: SinkSpec, facts: TableFacts | None) -> MappedTable:
    """The mapped table, or :class:`Unfit` saying everything that is wrong with it."""
    where = f"sink table {sink.table.written}"
    if facts is None:
        raise Unfit(f"{where} does not exist (create it with your own migrations)")
    if facts.kind not in {"r", "p"}:
        raise Unfit(f"{where} is {KINDS.get(facts.kind, 'not a table')}, not a table")
    problems: list[str] = []
    if not facts.schema_usage:
        problems.append(f"role {facts.role} has no USAGE on schema {quote(facts.schema)}")
    key = facts.columns.get(sink.key)
    if key is None:
        problems.append(f"no key column {quote(sink.key)} (SLUICEWAY_SINK_KEY)")
    elif (sink.key,) not in facts.unique:
        problems.append(
            f"the key column {quote(sink.key)} has no unique index or primary key of its own "
            "(ON CONFLICT needs one on exactly that column, neither partial nor deferrable)"
        )
    missing = [name for name in sink.columns if name not in facts.columns]
    if missing:
        problems.append(f"no column {_names(missing)} (mapped in SLUICEWAY_SINK_COLUMNS)")
    written = [facts.columns[n] for n in (sink.key, *sink.columns) if n in facts.columns]
    generated = [column.name for column in written if column.generated]
    if generated:
        problems.append(f"column {_names(generated)} is generated and cannot be written")
    version = facts.columns.get(sink.version or "")
    if version is not None and version.type not in TIMESTAMP_TYPES:
        problems.append(
            f"the version column {quote(version.name)} is {version.type}, not a timestamp or "
            "timestamptz (SLUICEWAY_SINK_VERSION)"
        )
    # The upsert inserts the key and every mapped column, updates the mapped ones, and reads
    # them all: the conflict target, EXCLUDED's values and the version are selected.
    updated = [column for column in written if column.name != sink.key]
    lacking = [
        ("INSERT", [c.name for c in written if not c.may_insert]),
        ("UPDATE", [c.name for c in updated if not c.may_update]),
        ("SELECT", [c.name for c in written if not c.may_select]),
    ]
    if any(names for _, names in lacking):
        said = "; ".join(f"{verb} {_names(names)}" for verb, names in lacking if names)
        problems.append(f"role {facts.role} may not {said} (grant INSERT, UPDATE, SELECT)")
    if problems:
        raise Unfit(f"{where}: " + "; ".join(problems))
    assert key is not None
    return MappedTable(
        facts.schema,
        facts.name,
        sink.table.written,
        Column(key.name, key.type, ("key",)),
        tuple(
            Column(name, facts.columns[name].type, tokens) for name, tokens in sink.columns.items()
        ),
        sink.version,
    )


# --- the upsert --------------------------------------------------------------------------

RECORD = "jsonb_build_object('key', s.key, 'payload', s.payload, 'fetched_at', s.fetched_at)"


def _path(tokens: pointer.Pointer) -> str:
    return "ARRAY[" + ", ".join(literal(t) for t in tokens) + "]::text[]"


@dataclass(frozen=True)
class Column:
    """A column the upsert writes: its name, its type and where its value comes from."""

    name: str
    type: str
    source: pointer.Pointer

    @property
    def value(self) -> str:
        """The SQL expression of the column's value, over a staged record ``s``."""
        kind, tokens = self.type, self.source
        if tokens[:1] in {("key",), ("fetched_at",)}:
            field = f"s.{tokens[0]}"
            return f"to_jsonb({field})::{kind}" if kind in JSON_TYPES else f"{field}::{kind}"
        doc, path = (RECORD, tokens) if not tokens else ("s.payload", tokens[1:])
        if kind in JSON_TYPES:
            return f"NULLIF({doc} #> {_path(path)}, 'null'::jsonb)::{kind}"
        return f"({doc} #>> {_path(path)})::{kind}"


@dataclass(frozen=True)
class MappedTable:
    """The sink table, checked, with its key column, mapped columns and version column."""

    schema: str
    name: str
    written: str  # as the setting wrote it, for people
    key: Column
    columns: tuple[Column, ...]
    version: str | None

    @property
    def qualified(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"

    def upsert(self, source: str) -> str:
        """The statement landing the records of relation ``source`` (``key, payload,
        fetched_at``), the newest of each key, in key order.

        The key is collapsed on its typed value, since two texts may be one key (``1`` and
        ``01`` as bigint) and one statement may not update a row twice; sorting on it makes
        concurrent writers lock rows in one order."""
        key = self.key.value
        names = ", ".join(quote(c.name) for c in (self.key, *self.columns))
        values = ",\n       ".join(c.value for c in (self.key, *self.columns))
        statement = (
            f"INSERT INTO {self.qualified} AS {TARGET} ({names})\n"
            f"SELECT DISTINCT ON ({key}) {values}\n"
            f"FROM {source} AS s\n"
            f"ORDER BY {key}, s.fetched_at DESC\n"
            f"ON CONFLICT ({quote(self.key.name)}) "
        )
        if not self.columns:
            return statement + "DO NOTHING"
        sets = ", ".join(f"{quote(c.name)} = EXCLUDED.{quote(c.name)}" for c in self.columns)
        statement += f"DO UPDATE SET {sets}"
        if self.version is not None:
            held, new = f"{TARGET}.{quote(self.version)}", f"EXCLUDED.{quote(self.version)}"
            statement += f"\nWHERE {held} IS NULL OR {held} < {new}"
        return statement
