"""``sink suggest``'s inference: each type rule, flattening, names, pointers and the caps."""

from __future__ import annotations

import shlex
from decimal import Decimal
from typing import Any

import pytest

from sluiceway_admin.infer import (
    MAX_COLUMNS,
    MAX_DEPTH,
    Column,
    Inference,
    KeyType,
    identifier,
    kind,
    name_of,
    pointer,
    quoted,
    string_kind,
)
from sluiceway_admin.listing import pointer as parse_pointer
from sluiceway_admin.listing import resolve
from sluiceway_admin.sink import parse_json, printable, render, table_name
from sluiceway_common.settings import ConfigError


def columns(*payloads: Any) -> list[Column]:
    inference = Inference()
    for payload in payloads:
        inference.add(payload)
    return inference.columns(taken=("key", "seen_at"))


def types(*payloads: Any) -> dict[str, str]:
    return {c.name: c.type for c in columns(*payloads)}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([True, False], "boolean"),
        ([1, -(2**63), 2**63 - 1], "bigint"),
        ([1, 2**63], "numeric"),  # past bigint
        ([-(2**63) - 1], "numeric"),
        ([Decimal("1.5"), Decimal("2")], "numeric"),
        ([1, Decimal("2.5")], "numeric"),  # integers and fractions
        ([1.5], "numeric"),
        (["2024-05-01T10:00:00Z", "2024-05-01 10:00:00.123456789+02:00"], "timestamptz"),
        (["2024-05-01T10:00+0530", "2024-05-01T10:00:00-03"], "timestamptz"),
        (["2024-05-01T10:00:00"], "timestamp"),
        (["2024-05-01", "1999-12-31"], "date"),
        (["2024-05-01", "2024-05-01T10:00:00Z"], "text"),  # strings of different forms
        (["2024-05-01T10:00:00Z", "soon"], "text"),
        (["2024-02-30"], "text"),  # no such day
        (["2024-05-01T10:00:00+16:00"], "text"),  # PostgreSQL refuses the offset
        (["0000-01-01T00:00:00Z"], "text"),  # no year 0
        ([""], "text"),
        (["x", None], "text"),
        ([[1, 2], []], "jsonb"),
        (["1", 1], "jsonb"),  # a string and a number
        ([True, 1], "jsonb"),  # a boolean is not a number
        ([{"a": 1}, "a"], "jsonb"),  # an object and a scalar
        ([None, None], "text"),  # only ever null: a guess
    ],
)
def test_a_fields_type_is_decided_by_every_value_it_held(values: list[Any], expected: str) -> None:
    assert types(*({"f": value} for value in values)) == {"f": expected}


def test_the_reasons_are_in_the_notes() -> None:
    noted = {c.name: c.note for c in columns(
        {"n": None, "m": "1", "a": [], "h": 2**64, "f": 1, "d": 1.5, "b": True, "t": "x"},
        {"m": 1, "a": [2], "h": 1.5, "f": 1.5, "d": 2.5, "b": 1, "t": "2024-01-01"},
    )}  # fmt: skip
    assert noted == {
        "n": "in 1 of 2, null in 1; only ever null here: text is a guess",
        "m": "in 2 of 2; mixed: number, string",
        "a": "in 2 of 2; arrays",
        "h": "in 2 of 2; integers past bigint; integers and fractions",
        "f": "in 2 of 2; integers and fractions",
        "d": "in 2 of 2",
        "b": "in 2 of 2; mixed: boolean, number",
        "t": "in 2 of 2; strings of different forms (date, text)",
    }


def test_nested_objects_are_flattened_into_columns_named_by_their_path() -> None:
    found = columns(
        {"login": "ann", "contact": {"email": "a@x", "phone": {"home": "1", "work": "2"}}},
        {"contact": {"email": None, "fax": "3"}, "login": "bob"},
    )
    assert [(c.name, c.type, c.pointer) for c in found] == [
        ("login", "text", "/payload/login"),
        ("contact_email", "text", "/payload/contact/email"),
        ("contact_phone_home", "text", "/payload/contact/phone/home"),
        ("contact_phone_work", "text", "/payload/contact/phone/work"),
        ("contact_fax", "text", "/payload/contact/fax"),  # first seen later, so later
    ]
    assert found[1].note == "in 2 of 2, null in 1"
    assert found[4].note == "in 1 of 2"


def test_an_object_nested_past_the_depth_limit_is_one_jsonb_column() -> None:
    assert MAX_DEPTH == 3
    found = columns({"a": {"b": {"c": {"d": 1}, "e": 2}}})
    assert [(c.name, c.type, c.pointer) for c in found] == [
        ("a_b_c", "jsonb", "/payload/a/b/c"),
        ("a_b_e", "bigint", "/payload/a/b/e"),
    ]
    assert "3 levels down: kept whole" in found[0].note


def test_an_empty_object_is_a_jsonb_column() -> None:
    assert types({"meta": {}}, {"meta": {}}) == {"meta": "jsonb"}


def test_a_payload_that_is_not_always_an_object_is_one_column() -> None:
    assert [(c.name, c.type, c.pointer) for c in columns({"a": 1}, [1, 2])] == [
        ("payload", "jsonb", "/payload")
    ]
    assert types([1], [2]) == {"payload": "jsonb"}
    assert types("x") == {"payload": "text"}


def test_pointers_escape_tilde_and_slash_and_resolve_to_the_value() -> None:
    payload = {"a/b": {"m~n": 1}, "~1": 2, "": 3, "x y": 4}
    found = columns(payload)
    assert [c.pointer for c in found] == ["/payload/a~1b/m~0n", "/payload/~01",
                                          "/payload/", "/payload/x y"]  # fmt: skip
    record = {"key": "k", "payload": payload, "fetched_at": "2024-01-01T00:00:00Z"}
    assert [resolve(record, parse_pointer(c.pointer)) for c in found] == [1, 2, 3, 4]
    assert pointer(()) == "/payload"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("firstName", "first_name"),
        ("HTTPServer", "http_server"),
        ("userID", "user_id"),
        ("Émile Zola", "emile_zola"),
        ("a-b.c  d", "a_b_c_d"),
        ("__x__", "x"),
        ("名前", ""),
    ],
)
def test_identifiers_are_lowercase_snake_case(text: str, name: str) -> None:
    assert identifier(text) == name


def test_column_names_are_sanitized_and_collisions_numbered_first_come_first_served() -> None:
    payload = {"firstName": 1, "first_name": 2, "First Name": 3, "key": 4, "seen_at": 5,
               "2fa": 6, "": 7, "名前": 8, "user": 9, "x" * 80: 10, "x" * 81: 11}  # fmt: skip
    names = [c.name for c in columns(payload)]
    assert names == ["first_name", "first_name_2", "first_name_3", "key_2", "seen_at_2",
                     "_2fa", "field", "field_2", "user", "x" * 63, "x" * 61 + "_2"]  # fmt: skip
    assert names == [c.name for c in columns(payload)]  # the same every time


def test_names_are_quoted_only_where_postgresql_needs_it() -> None:
    assert quoted("login") == "login"
    assert quoted("_2fa") == "_2fa"
    assert quoted("user") == '"user"'
    assert quoted("select") == '"select"'
    assert quoted("left") == '"left"'  # may name a function, not a column
    assert quoted("time") == "time"  # a column may be named so
    assert quoted('a"b') == '"a""b"'


def test_past_the_column_cap_the_payload_is_kept_whole_in_raw() -> None:
    found = columns({f"f{i}": i for i in range(MAX_COLUMNS + 5)} | {"raw": 1})
    assert len(found) == MAX_COLUMNS + 1
    assert [c.name for c in found[:2]] == ["f0", "f1"]
    last = found[-1]
    assert (last.name, last.type, last.pointer) == ("raw", "jsonb", "/payload")
    assert "6 more fields than the 100 columns" in last.note
    assert "raw" not in [c.name for c in found[:-1]]
    # a field named raw that did get a column keeps its name
    found = columns({"raw": 1} | {f"f{i}": i for i in range(MAX_COLUMNS)})
    assert (found[0].name, found[-1].name) == ("raw", "raw_2")


def test_a_field_not_seen_in_a_sample_is_counted_as_absent() -> None:
    found = columns({"a": 1}, {"b": 2}, {"a": None})
    assert [(c.name, c.note) for c in found] == [("a", "in 2 of 3, null in 1"), ("b", "in 1 of 3")]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["1", "42", "-7", "9223372036854775807"], "bigint"),
        (["1", "9223372036854775808"], "text"),  # past bigint
        (["1", "007"], "text"),  # the column would drop the zeros
        (["+1"], "text"),
        (["0f8fad5b-d9cb-469f-a165-70867728950e"], "uuid"),
        (["0F8FAD5B-D9CB-469F-A165-70867728950E"], "text"),  # read back in lower case
        (["0f8fad5b-d9cb-469f-a165-70867728950e", "1"], "text"),
        (["ann"], "text"),
        ([], "text"),
    ],
)
def test_the_key_type_is_inferred_from_the_keys(keys: list[str], expected: str) -> None:
    key_type = KeyType()
    for key in keys:
        key_type.add(key)
    assert key_type.type == expected


def test_kinds_of_values() -> None:
    assert kind(None) is None
    assert kind(True) == "boolean"
    assert kind({}) == "object"
    assert string_kind("2024-05-01T10:00:00.5Z") == "timestamptz"


def test_payloads_are_read_with_exact_numbers() -> None:
    doc = parse_json('{"big": 123456789012345678901234567890, "f": 0.1}')
    assert doc == {"big": 123456789012345678901234567890, "f": Decimal("0.1")}
    assert types(doc) == {"big": "numeric", "f": "numeric"}


def test_the_suggestion_is_a_create_table_and_the_writers_settings() -> None:
    found = columns({"login": "ann", "user": {"email": "a@x"}, "odd\nname": True})
    text = render("analytics.people", "bigint", found, "3 rows", 3)
    lines = text.splitlines()
    assert "CREATE TABLE analytics.people (" in lines
    assert any(line.startswith("    key ") and "bigint NOT NULL PRIMARY KEY," in line
               for line in lines)  # fmt: skip
    assert any("seen_at" in line and "timestamptz NOT NULL," in line for line in lines)
    assert any(line.startswith("    odd_name ") and "boolean  " in line for line in lines)
    assert "/payload/odd\\nname" in text  # the newline cannot end the comment
    assert lines[-4:] == [
        "SLUICEWAY_SINK_TABLE=analytics.people",
        "SLUICEWAY_SINK_KEY=key",
        """SLUICEWAY_SINK_COLUMNS='{"seen_at":"/fetched_at","login":"/payload/login",\
"user_email":"/payload/user/email","odd_name":"/payload/odd\\nname"}'""",
        "SLUICEWAY_SINK_VERSION=seen_at",
    ]
    body = lines[lines.index("CREATE TABLE analytics.people (") + 1 : lines.index(");")]
    assert [line.split("--")[0].rstrip()[-1] for line in body] == [","] * 4 + ["n"]


def test_a_quote_in_a_pointer_is_shell_quoted() -> None:
    text = render("t", "text", columns({"it's": 1}), "1 row", 1)
    line = text.splitlines()[-2]
    assert shlex.split(line) == ['SLUICEWAY_SINK_COLUMNS={"seen_at":"/fetched_at",'
                                 '"it_s":"/payload/it\'s"}']  # fmt: skip


def test_printable_escapes_control_characters() -> None:
    assert printable("a\nb\tc\x00é") == "a\\nb\\tc\\x00é"


@pytest.mark.parametrize("text", ["users", "a.b", "_x1", "x" * 63])
def test_a_table_name_may_be_schema_qualified(text: str) -> None:
    assert table_name(text) == text


@pytest.mark.parametrize("text", ["Users", "a.b.c", "1x", "a b", "", "x" * 64, "a."])
def test_other_table_names_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--table"):
        table_name(text)


def test_the_default_table_name_is_the_pipelines() -> None:
    assert name_of(("my-pipe",)) == "my_pipe"
    assert name_of(("1st",)) == "_1st"
