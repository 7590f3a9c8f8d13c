"""A *sink*: the user's own typed table that records land in, instead of ``records``.

The *mapping* says what goes where. The record's key goes to the *key column*, the upsert's
conflict target, cast to the column's type. Each *mapped column* gets what its JSON pointer
(RFC 6901) finds in the record object ``{"key", "payload", "fetched_at"}``: nothing found,
or a JSON null, is NULL; a scalar goes in as its text, cast by PostgreSQL to the column's
type; an object or array goes into a json or jsonb column as JSON, into a text column as
JSON text. An optional *version column*, mapped to ``/fetched_at``, makes the newest fetch
win; without one the last record written wins.

All of it is pure: parsing the four settings, judging the table by the catalog's facts
(:func:`plan`; ``schema.read_table`` reads them) and writing the upsert
(:meth:`MappedTable.upsert`), which reads staged or buffered records
(``key, payload, fetched_at``) and is generated once, at start. Settings reach the SQL only
as quoted identifiers and string literals, and the types only as the catalog spells them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sluiceway_common import pointer
from sluiceway_common.settings import Refused

RECORD_FIELDS = ("key", "payload", "fetched_at")
JSON_TYPES = {"json", "jsonb"}
TIMESTAMP_TYPES = {"timestamp with time zone", "timestamp without time zone"}
# A name as SQL writes it: "quoted" (a quote doubled inside) keeps case and spaces; bare, it
# is folded to lower case, as PostgreSQL folds it.
IDENTIFIER = r'"(?:[^"\0]|"")+"|[A-Za-z_][A-Za-z0-9_$]*'
TABLE_NAME = re.compile(rf"({IDENTIFIER})(?:\.({IDENTIFIER}))?")
TARGET = "sluiceway_row"  # the upsert's alias for the table's row; the source is "s"


class Unfit(Exception):
    """The sink table cannot take the mapping; the message names the table and why."""


# --- the settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class TableName:
    """``SLUICEWAY_SINK_TABLE``: the schema (``None``: the first on the search path that
    holds the table) and the table, unquoted; ``written`` as the setting wrote it."""

    schema: str | None
    name: str
    written: str


def _identifier(text: str) -> str:
    return text[1:-1].replace('""', '"') if text.startswith('"') else text.lower()


def table_name(text: str) -> TableName | None:
    """Parse ``SLUICEWAY_SINK_TABLE``; empty is ``None`` (land in ``records``)."""
    text = text.strip()
    if not text:
        return None
    found = TABLE_NAME.fullmatch(text)
    if found is None:
        raise Refused('write a name as in SQL: users, analytics.users, "Analytics Data".users')
    first, second = found.groups()
    if second is None:
        return TableName(None, _identifier(first), text)
    return TableName(_identifier(first), _identifier(second), text)


def column_name(text: str) -> str:
    """A column's name, exactly (case and spaces kept, no quotes)."""
    if not text or "\0" in text:
        raise Refused("a column's name: not empty, no NUL character")
    return text


def optional_column_name(text: str) -> str | None:
    return column_name(text) if text else None


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise Refused("a column is mapped twice")
    return dict(pairs)


def column_map(text: str) -> dict[str, pointer.Pointer]:
    """Parse ``SLUICEWAY_SINK_COLUMNS``: a JSON object of column names to JSON pointers into
    the record object, kept in the order written."""
    try:
        found = json.loads(text, object_pairs_hook=_unique_object)
    except Refused:
        raise
    except ValueError:
        raise Refused("not JSON") from None
    if not isinstance(found, dict):
        raise Refused("not a JSON object")
    columns: dict[str, pointer.Pointer] = {}
    for name, spelled in found.items():
        column_name(name)
        if not isinstance(spelled, str):
            raise Refused(f"the pointer of {name} is not a string")
        try:
            tokens = pointer.parse(spelled)
        except ValueError as exc:
            raise Refused(f"{name}: {exc}") from None
        if tokens and tokens[0] not in RECORD_FIELDS:
            raise Refused(f"{name}: {spelled} is outside the record (/key, /payload, /fetched_at)")
        if tokens[:1] in {("key",), ("fetched_at",)} and len(tokens) > 1:
            raise Refused(f"{name}: {spelled} points inside a string")
        if any("\0" in token for token in tokens):
            raise Refused(f"{name}: a NUL character in the pointer")
        columns[name] = tokens
    return columns


@dataclass(frozen=True)
class SinkSpec:
    """The four sink settings, checked against each other (:func:`spec`)."""

    table: TableName
    key: str
    columns: Mapping[str, pointer.Pointer]
    version: str | None


def spec(
    table: TableName | None,
    key: str,
    columns: Mapping[str, pointer.Pointer],
    version: str | None,
) -> SinkSpec | None:
    """The sink the settings describe, ``None`` for ``records``; a ValueError whose message
    is the one line to print when they contradict each other."""
    if table is None:
        given = {"SLUICEWAY_SINK_COLUMNS": columns, "SLUICEWAY_SINK_VERSION": version}
        for env, value in given.items():
            if value:
                raise ValueError(f"{env} is set but SLUICEWAY_SINK_TABLE is empty: set the table")
        return None
    if key in columns:
        raise ValueError(
            f"SLUICEWAY_SINK_COLUMNS maps {key!r}, the key column (SLUICEWAY_SINK_KEY): "
            "the key goes there already; leave it out"
        )
    if version is not None:
        if version not in columns:
            raise ValueError(
                f"SLUICEWAY_SINK_VERSION={version!r} is not allowed: expected one of the "
                f"columns SLUICEWAY_SINK_COLUMNS maps, with pointer /fetched_at"
            )
        if columns[version] != ("fetched_at",):
            raise ValueError(
                f"SLUICEWAY_SINK_VERSION={version!r} is not allowed: SLUICEWAY_SINK_COLUMNS "
                f"maps it to {pointer.spelled(columns[version])!r}; the version is /fetched_at"
            )
    return SinkSpec(table, key, dict(columns), version)


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


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier. (Hand-written: asyncpg keeps its quoting private,
    and this one line is all of it.)"""
    return '"' + name.replace('"', '""') + '"'


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
