"""A *sink*: the user's own typed table that records land in, instead of ``records``.

The *mapping* says what goes where. The record's key goes to the *key column*, the upsert's
conflict target, cast to the column's type. Each *mapped column* gets what its JSON pointer
(RFC 6901) finds in the record object ``{"key", "payload", "fetched_at"}``: nothing found,
or a JSON null, is NULL; a scalar goes in as its text, cast by PostgreSQL to the column's
type; an object or array goes into a json or jsonb column as JSON, into a text column as
JSON text. An optional *version column*, mapped to ``/fetched_at``, makes the newest fetch
win; without one the last record written wins.

Here are the four ``SLUICEWAY_SINK_*`` settings, parsed and checked against each other
(:func:`spec`), for every command that reads the sink: the writer lands rows there (its
``mapping`` judges the table by the catalog and writes the upsert), ``status`` counts them
and ``enqueue --stale`` reads their versions. Names reach SQL only through :func:`quote`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluiceway_common import pointer
from sluiceway_common.settings import ConfigError, Option, Refused

RECORD_FIELDS = ("key", "payload", "fetched_at")
# A name as SQL writes it: "quoted" (a quote doubled inside) keeps case and spaces; bare, it
# is folded to lower case, as PostgreSQL folds it.
IDENTIFIER = r'"(?:[^"\0]|"")+"|[A-Za-z_][A-Za-z0-9_$]*'
TABLE_NAME = re.compile(rf"({IDENTIFIER})(?:\.({IDENTIFIER}))?")


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier. (Hand-written: asyncpg keeps its quoting private,
    and this one line is all of it.)"""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableName:
    """``SLUICEWAY_SINK_TABLE``: the schema (``None``: the first on the search path that
    holds the table) and the table, unquoted; ``written`` as the setting wrote it."""

    schema: str | None
    name: str
    written: str

    @property
    def quoted(self) -> str:
        """The name for SQL, every part quoted: the same table, resolved the same way."""
        return ".".join(quote(part) for part in (self.schema, self.name) if part is not None)


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


def configured(values: Mapping[str, Any]) -> SinkSpec | None:
    """The sink the resolved settings ``values`` describe (their ``sink_*`` entries), ``None``
    for ``records``; a :class:`ConfigError` when they contradict each other."""
    try:
        return spec(
            values["sink_table"], values["sink_key"], values["sink_columns"],
            values["sink_version"],
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


SINK_TABLE = Option(
    "SLUICEWAY_SINK_TABLE",
    table_name,
    "land records in this table of yours instead of records; it must exist",
    allowed="a table name as in SQL, schema-qualified or not (users, analytics.users, "
    '"Analytics Data".users), or empty for records',
    default="",
)
SINK_KEY = Option(
    "SLUICEWAY_SINK_KEY",
    column_name,
    "the sink table's column the record's key goes to; unique on its own (the upsert's "
    "conflict target)",
    allowed="a column's name, exactly as the table has it",
    default="key",
)
SINK_COLUMNS = Option(
    "SLUICEWAY_SINK_COLUMNS",
    column_map,
    "the sink table's columns and what each gets: a JSON pointer into the record "
    '{"key", "payload", "fetched_at"}',
    allowed='a JSON object of column names to JSON pointers, e.g. {"login": "/payload/login", '
    '"seen_at": "/fetched_at"}',
    default="{}",
)
SINK_VERSION = Option(
    "SLUICEWAY_SINK_VERSION",
    optional_column_name,
    "a mapped column holding /fetched_at: a row is updated only by a newer fetch; empty: "
    "the last record written wins",
    allowed="the name of a column SLUICEWAY_SINK_COLUMNS maps to /fetched_at, or empty",
    default="",
)
OPTIONS = (SINK_TABLE, SINK_KEY, SINK_COLUMNS, SINK_VERSION)
