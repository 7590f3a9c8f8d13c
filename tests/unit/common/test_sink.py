"""The sink settings (``SLUICEWAY_SINK_*``): parsing each, and checking them together."""

from __future__ import annotations

import pytest

from sluiceway_common.settings import Refused
from sluiceway_common.sink import SinkSpec, TableName, column_map, spec, table_name


@pytest.mark.parametrize(
    ("text", "schema", "name"),
    [
        ("users", None, "users"),
        ("Users", None, "users"),  # folded, as PostgreSQL folds a bare name
        ("analytics.users", "analytics", "users"),
        ('"Analytics Data".users', "Analytics Data", "users"),
        ('"a""b"."C.d"', 'a"b', "C.d"),
        ("  s_1$.t  ", "s_1$", "t"),
    ],
)
def test_a_table_is_named_as_sql_names_it(text: str, schema: str | None, name: str) -> None:
    assert table_name(text) == TableName(schema, name, text.strip())


@pytest.mark.parametrize("text", ["a.b.c", '"unclosed', "1users", "a b", "a.", '""', "a;drop"])
def test_bad_table_names(text: str) -> None:
    with pytest.raises(Refused):
        table_name(text)


def test_an_empty_table_is_records() -> None:
    assert table_name("") is None
    assert table_name("  ") is None


def test_columns_are_pointers_in_the_order_written() -> None:
    assert list(column_map('{"b": "/payload/x~1y/0", "a": "", "k": "/key"}').items()) == [
        ("b", ("payload", "x/y", "0")), ("a", ()), ("k", ("key",))]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"a": 1}', "the pointer of a is not a string"),
        ('{"a": "payload"}', "a JSON pointer starts with /"),
        ('{"a": "/payload/~2"}', "~ is written ~0"),
        ('{"a": "/body"}', "outside the record"),
        ('{"a": "/key/0"}', "points inside a string"),
        ('{"a": "/payload/\\u0000"}', "NUL"),
        ('{"": "/key"}', "not empty"),
        ('{"a": "/key", "a": "/payload"}', "mapped twice"),
    ],
)
def test_bad_columns(text: str, said: str) -> None:
    with pytest.raises(Refused, match=said):
        column_map(text)


USERS = TableName("s", "users", "s.users")


def test_the_settings_are_checked_against_each_other() -> None:
    columns = {"login": ("payload", "login"), "seen_at": ("fetched_at",)}
    assert spec(None, "key", {}, None) is None
    assert spec(USERS, "id", columns, "seen_at") == SinkSpec(USERS, "id", columns, "seen_at")
    for version, said in [
        ("nope", "SLUICEWAY_SINK_VERSION='nope' is not allowed: expected one of the columns"),
        ("login", "SLUICEWAY_SINK_COLUMNS maps it to '/payload/login'; the version is"),
    ]:
        with pytest.raises(ValueError, match=said):
            spec(USERS, "id", columns, version)
    with pytest.raises(ValueError, match="SLUICEWAY_SINK_COLUMNS maps 'login', the key column"):
        spec(USERS, "login", columns, None)
    with pytest.raises(ValueError, match="SLUICEWAY_SINK_COLUMNS is set but SLUICEWAY_SINK_TAB"):
        spec(None, "key", columns, None)


def test_a_table_name_goes_into_sql_quoted_as_it_was_meant() -> None:
    assert TableName(None, "users", "users").quoted == '"users"'
    assert TableName('a"b', "C.d", '"a""b"."C.d"').quoted == '"a""b"."C.d"'
