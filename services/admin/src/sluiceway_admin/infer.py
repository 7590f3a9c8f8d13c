"""Inferring a sink table from sample payloads: which columns, of which PostgreSQL types.

A *field* is a place in a payload, named by the object members that lead to it
(``("contact", "email")``). :class:`Inference` is shown payloads one at a time and keeps, per
field, how often it was present, how often null and which *kinds* of value it held; it keeps
no payload. :meth:`Inference.columns` then decides:

* a field that is always an object is *flattened*: its fields become columns, named by their
  path joined with ``_`` (``contact_email``), down to :data:`MAX_DEPTH` levels; an object
  deeper than that is one ``jsonb`` column;
* boolean → ``boolean``; integers within bigint → ``bigint``; larger integers, fractions or a
  mix of integers and fractions → ``numeric``; strings that are all ISO-8601 date-times with
  an offset → ``timestamptz``, without one → ``timestamp``, dates → ``date``; other strings →
  ``text``; arrays → ``jsonb``; a field whose values are of different kinds (a string and a
  number, an object and a scalar) → ``jsonb``; a field only ever null → ``text``, a guess;
* past :data:`MAX_COLUMNS` columns the remaining fields get none: a ``raw jsonb`` column holds
  the payload whole instead.

A column's value is read by the writer at a JSON pointer into the record object
``{"key", "payload", "fetched_at"}`` (``/payload/contact/email``). Nothing here does I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

BIGINT = range(-(2**63), 2**63)
# Objects nested this deep are kept whole: a column name of more parts says little, and an
# upstream that nests this far usually has a structure worth querying as JSON.
MAX_DEPTH = 3
MAX_COLUMNS = 100
# Fields tracked at most: a payload that is a map keyed by ids would otherwise grow without
# bound. Past this many, far more than MAX_COLUMNS, the rest are in the raw column anyway.
MAX_FIELDS = 10_000
# PostgreSQL's identifiers are at most 63 bytes; longer ones are cut without a word.
NAME_BYTES = 63

DATE = r"\d{4}-\d{2}-\d{2}"
DATE_TIME = re.compile(
    rf"({DATE})[T ](\d{{2}}:\d{{2}}(?::\d{{2}}(?:\.\d+)?)?)(Z|[+-]\d{{2}}(?::?\d{{2}})?)?"
)
# PostgreSQL refuses a UTC offset of 16 hours or more; Python takes up to 24.
MAX_OFFSET = timedelta(hours=16)
NUMBERS = frozenset({"bigint", "huge", "numeric"})  # huge: an integer past bigint
STRINGS = frozenset({"timestamptz", "timestamp", "date", "text"})
# What a kind is called in a column's comment.
SHOWN = {"boolean": "boolean", **dict.fromkeys(NUMBERS, "number"), "array": "array",
         "object": "object", **dict.fromkeys(STRINGS, "string")}  # fmt: skip

# PostgreSQL's reserved keywords and those that may name a function or a type but not a
# column (pg_get_keywords() catcode R and T, up to PostgreSQL 17): a column so named is quoted.
KEYWORDS = """
all analyse analyze and any array as asc asymmetric authorization binary both case cast check
collate collation column concurrently constraint create cross current_catalog current_date
current_role current_schema current_time current_timestamp current_user default deferrable
desc distinct do else end except false fetch for foreign freeze from full grant group having
ilike in initially inner intersect into is isnull join lateral leading left like limit
localtime localtimestamp natural not notnull null offset on only or order outer overlaps
placing primary references returning right select session_user similar some symmetric
system_user table tablesample then to trailing true union unique user using variadic verbose
when where window with
"""
RESERVED = frozenset(KEYWORDS.split())
PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def kind(value: Any) -> str | None:
    """The kind of a JSON value as a column would hold it; None for null. Numbers are
    expected as ``int`` and ``Decimal`` (JSON parsed with ``parse_float=Decimal``), so that
    nothing is rounded before it is judged; a ``float`` is taken as a fraction."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint" if value in BIGINT else "huge"
    if isinstance(value, Decimal | float):
        return "numeric"
    if isinstance(value, str):
        return string_kind(value)
    if isinstance(value, dict):
        return "object"
    return "array"


def string_kind(text: str) -> str:
    """``timestamptz``, ``timestamp`` or ``date`` for an ISO-8601 date-time with an offset,
    without one, or a date, that PostgreSQL reads as such; else ``text``."""
    if len(text) == 10 and re.fullmatch(DATE, text):
        try:
            date.fromisoformat(text)
        except ValueError:
            return "text"
        return "date"
    found = DATE_TIME.fullmatch(text)
    if found is None:
        return "text"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return "text"
    offset = when.utcoffset()
    if offset is None:
        return "timestamp"
    return "timestamptz" if abs(offset) < MAX_OFFSET else "text"


@dataclass
class Field:
    """What the samples held at one place: how often present and not null, how often null,
    each kind's count, and (for an object) its own fields in the order first seen."""

    path: tuple[str, ...]
    seen: int = 0
    nulls: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    fields: dict[str, Field] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    """A column of the suggested table: its name, type, where its value is in the record
    object (a JSON pointer) and a note for a person reviewing it."""

    name: str
    type: str
    pointer: str
    note: str


@dataclass
class Inference:
    """The fields of the payloads shown so far (:meth:`add`), and the columns they suggest."""

    payloads: int = 0
    root: Field = field(default_factory=lambda: Field(()))
    tracked: int = 0
    overflowed: bool = False

    def add(self, payload: Any) -> None:
        self.payloads += 1
        self._visit(self.root, payload)

    def _visit(self, place: Field, value: Any) -> None:
        found = kind(value)
        if found is None:
            place.nulls += 1
            return
        place.seen += 1
        place.kinds[found] += 1
        if found != "object" or len(place.path) >= MAX_DEPTH:
            return
        for name, member in value.items():
            child = place.fields.get(name)
            if child is None:
                if self.tracked >= MAX_FIELDS:
                    self.overflowed = True
                    continue
                child = place.fields[name] = Field((*place.path, name))
                self.tracked += 1
            self._visit(child, member)

    def fields_seen(self) -> int:
        return self.tracked

    def columns(self, taken: tuple[str, ...] = ()) -> list[Column]:
        """The payload's columns, in the order their fields were first seen; names are
        unique and none is in ``taken`` (the key's and the version's columns)."""
        names = Names(taken)
        decided = list(self._decide(self.root))
        kept, left_out = decided[:MAX_COLUMNS], decided[MAX_COLUMNS:]
        columns = [
            Column(names.claim(name_of(place.path)), type_, pointer(place.path),
                   presence(place, self.payloads) + (f"; {why}" if why else ""))
            for place, type_, why in kept
        ]  # fmt: skip
        if left_out or self.overflowed:
            more = f"{len(left_out):,} more fields" if left_out else "more fields"
            columns.append(Column(names.claim("raw"), "jsonb", pointer(()),
                                  f"the payload whole: {more} than the {MAX_COLUMNS} "
                                  "columns suggested are only here"))  # fmt: skip
        return columns

    def _decide(self, place: Field) -> Iterator[tuple[Field, str, str]]:
        """(field, type, why) per column, depth first."""
        kinds = set(place.kinds)
        if kinds == {"object"} and place.fields and len(place.path) < MAX_DEPTH:
            for child in place.fields.values():
                yield from self._decide(child)
            return
        yield place, *column_type(place)


def column_type(place: Field) -> tuple[str, str]:
    """The type of a field's column and why, when that is not plain."""
    kinds = set(place.kinds)
    if not kinds:
        return "text", "only ever null here: text is a guess"
    if kinds == {"object"}:
        if len(place.path) >= MAX_DEPTH:
            return "jsonb", f"an object {MAX_DEPTH} levels down: kept whole, not flattened"
        return "jsonb", "always an empty object"
    if kinds <= NUMBERS and kinds != {"bigint"}:
        why = ["integers past bigint"] if "huge" in kinds else []
        if "numeric" in kinds and kinds & {"bigint", "huge"}:
            why.append("integers and fractions")
        return "numeric", "; ".join(why)
    if len(kinds) == 1:
        (only,) = kinds
        return ("jsonb", "arrays") if only == "array" else (only, "")
    if kinds <= STRINGS:
        return "text", "strings of different forms (" + ", ".join(sorted(kinds)) + ")"
    mixed = sorted({SHOWN[k] for k in kinds})
    return "jsonb", "mixed: " + ", ".join(mixed)


def presence(place: Field, payloads: int) -> str:
    nulls = f", null in {place.nulls:,}" if place.nulls else ""
    return f"in {place.seen + place.nulls:,} of {payloads:,}{nulls}"


def pointer(path: tuple[str, ...]) -> str:
    """The JSON pointer (RFC 6901) of a payload's field in the record object."""
    return "/payload" + "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in path)


def identifier(text: str) -> str:
    """``text`` as a lowercase SQL identifier: camelCase split, accents dropped, anything but
    letters and digits turned into ``_``; it may be empty."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def name_of(path: tuple[str, ...]) -> str:
    """A column's name for a field: its path's parts as identifiers, joined with ``_``."""
    name = "_".join(part for part in map(identifier, path) if part) if path else "payload"
    name = name or "field"
    return f"_{name}" if name[0].isdigit() else name


class Names:
    """Hands out unique column names: a name taken already gets ``_2``, ``_3``, … (cut to
    fit PostgreSQL's 63 bytes), so the first field to want a name keeps it."""

    def __init__(self, taken: tuple[str, ...] = ()) -> None:
        self._taken = set(taken)

    def claim(self, wanted: str) -> str:
        name = wanted[:NAME_BYTES]
        number = 1
        while name in self._taken:
            number += 1
            suffix = f"_{number}"
            name = wanted[: NAME_BYTES - len(suffix)] + suffix
        self._taken.add(name)
        return name


def quoted(name: str) -> str:
    """``name`` as it is written in SQL: bare when PostgreSQL takes it so, else quoted."""
    if PLAIN_NAME.fullmatch(name) and name not in RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclass
class KeyType:
    """The key column's type, from the keys shown: ``bigint`` when every key is an integer
    written plainly (no leading zero or ``+``, which the column would lose), ``uuid`` when
    every key is a UUID, else ``text``."""

    integers: bool = True
    uuids: bool = True
    count: int = 0

    def add(self, key: str) -> None:
        self.count += 1
        if self.integers:
            self.integers = re.fullmatch(r"0|-?[1-9][0-9]{0,18}", key) is not None and (
                int(key) in BIGINT
            )
        if self.uuids:
            self.uuids = (
                re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", key)
                is not None
            )

    @property
    def type(self) -> str:
        if not self.count:
            return "text"
        return "bigint" if self.integers else "uuid" if self.uuids else "text"
