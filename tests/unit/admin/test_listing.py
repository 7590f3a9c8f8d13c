"""``enqueue --http``'s pure parts: JSON pointers, Link headers, a page's keys and next page."""

from __future__ import annotations

from typing import Any

import pytest

from sluiceway_admin.listing import (
    MISSING,
    Listing,
    next_link,
    parse_page,
    pointer,
    resolve,
    spelled,
)
from sluiceway_admin.sources import BadInput, Skipped

DOC = {"data": {"a/b": ["x", {"m~n": 7}], "": "empty name", "0": "zero"}, "list": [[1, 2]]}


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", ()),
        ("/", ("",)),
        ("/data", ("data",)),
        ("/data/a~1b/1/m~0n", ("data", "a/b", "1", "m~n")),
        ("/~01", ("~1",)),  # ~0 first, then ~1: "~01" is "~1", not "/"
        ("/a//b", ("a", "", "b")),
    ],
)
def test_a_pointer_is_its_unescaped_tokens(text: str, tokens: tuple[str, ...]) -> None:
    assert pointer(text) == tokens
    assert spelled(tokens) == text


@pytest.mark.parametrize("text", ["data", "#/data", " /data", "/a~2", "/a~", "/~x"])
def test_bad_pointers(text: str) -> None:
    with pytest.raises(ValueError):
        pointer(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("", DOC),
        ("/data/a~1b/0", "x"),
        ("/data/a~1b/1/m~0n", 7),
        ("/data/", "empty name"),
        ("/data/0", "zero"),  # an object's member named "0", not an index
        ("/list/0/1", 2),
        ("/list/1", MISSING),
        ("/list/-", MISSING),
        ("/list/00", MISSING),  # no leading zeros in an index
        ("/list/0/1/x", MISSING),
        ("/nothing", MISSING),
        ("/data/a~1b/x", MISSING),
    ],
)
def test_resolve(text: str, value: Any) -> None:
    found = resolve(DOC, pointer(text))
    assert found is MISSING if value is MISSING else found == value


@pytest.mark.parametrize(
    ("values", "target"),
    [
        (['<https://api.test/u?page=2>; rel="next"'], "https://api.test/u?page=2"),
        (['</u?p=1>; rel="prev", </u?p=3>; rel="next", </u?p=9>; rel="last"'], "/u?p=3"),
        (["</u?p=9>; rel=last", "</u?p=3>; rel=next"], "/u?p=3"),  # two headers
        (['</u?p=3>; rel="last next"'], "/u?p=3"),  # several relation types
        (['</u?p=3>; REL="Next"'], "/u?p=3"),  # case-insensitive
        (['</u?a=1,2;3>; title="x, y; rel=next"; rel="prev", </n>; rel="next"'], "/n"),
        (['<https://api.test/u?p=2>; rel="nextish"'], None),
        (['<https://api.test/u?p=2>; rel="prev"'], None),
        ([], None),
        (["garbage"], None),
    ],
)
def test_next_link(values: list[str], target: str | None) -> None:
    assert next_link(values) == target


def test_numbers_stay_the_text_they_were_written_in() -> None:
    assert parse_page(b'[1, 1.50, 1e3, 12345678901234567890123, "s", null, true]') == [
        "1", "1.50", "1e3", "12345678901234567890123", "s", None, True]  # fmt: skip
    with pytest.raises(ValueError):
        parse_page(b"[NaN]")
    with pytest.raises(ValueError):
        parse_page(b"<html>")


def keys(listing: Listing, body: bytes, first: int = 1) -> tuple[list[tuple[int, str]], int]:
    skipped = Skipped()
    return listing.keys(parse_page(body), first, skipped), skipped.blank


def test_bare_keys_are_strings_or_numbers_and_nulls_are_skipped() -> None:
    listing = Listing("http://h/")
    assert keys(listing, b'["a", 7, null, "", "b"]', first=11) == (
        [(11, "a"), (12, "7"), (13, "b")], 2)  # fmt: skip


def test_keys_of_objects_are_at_the_key_pointer() -> None:
    listing = Listing("http://h/", items=pointer("/data"), key=pointer("/user/id"))
    body = b'{"data": [{"user": {"id": 1}}, {"user": {"id": "b"}}, {"user": {"id": null}}]}'
    assert keys(listing, body) == ([(1, "1"), (2, "b")], 1)


@pytest.mark.parametrize(
    ("listing", "body", "said"),
    [
        (Listing("http://h/"), b'{"data": []}', "the page is a JSON object, not an array"),
        (
            Listing("http://h/", items=pointer("/data")),
            b'{"items": []}',
            "no items at --items /data",
        ),
        (Listing("http://h/", items=pointer("/data")), b'{"data": {}}', "/data is a JSON object"),
        (Listing("http://h/"), b'["a", {"id": 1}]', "item 1 is an object: give --key"),
        (Listing("http://h/"), b'["a", [1]]', "item 1: the key is a JSON array"),
        (Listing("http://h/"), b"[true]", "item 0: the key is a JSON boolean"),
        (Listing("http://h/", key=pointer("/id")), b'[{"id": 1}, {"ID": 2}]', "item 1: no key"),
        (Listing("http://h/", key=pointer("/id")), b'["a"]', "item 0: no key at --key /id"),
        (Listing("http://h/"), b'["a\\u0000b"]', "item 0: contains a control character"),
        (Listing("http://h/"), b'["' + b"k" * 4097 + b'"]', "item 0: longer than 4096 bytes"),
    ],
)
def test_a_page_without_keys_where_the_flags_say_is_refused(
    listing: Listing, body: bytes, said: str
) -> None:
    with pytest.raises(BadInput) as refused:
        keys(listing, body)
    assert said in str(refused.value)


PAGE = "https://api.test/v1/users?page=2"


@pytest.mark.parametrize(
    ("next_at", "doc", "following"),
    [
        ("/next", {"next": "https://api.test/v1/users?page=3"}, "https://api.test/v1/users?page=3"),
        ("/next", {"next": "?page=3"}, "https://api.test/v1/users?page=3"),
        ("/next", {"next": "/v2/users?page=3"}, "https://api.test/v2/users?page=3"),
        ("/next", {"next": "more?page=3"}, "https://api.test/v1/more?page=3"),
        ("/next", {"next": None}, None),
        ("/next", {"next": ""}, None),
        ("/next", {}, None),
        ("/links/next/href", {"links": {"next": {"href": "?page=3"}}}, PAGE[:-1] + "3"),
    ],
)
def test_the_next_url_is_resolved_against_the_pages(
    next_at: str, doc: Any, following: str | None
) -> None:
    listing = Listing("https://api.test/v1/users?page=1", next=pointer(next_at))
    assert listing.next_url(doc, PAGE, ['</ignored>; rel="next"']) == following


def test_a_cursor_goes_back_as_a_query_parameter_of_the_listings_url() -> None:
    listing = Listing("https://api.test/users?limit=5&cursor=old", next=pointer("/next"),
                      cursor_param="cursor")  # fmt: skip
    assert listing.next_url({"next": "a b&c"}, PAGE, []) == (
        "https://api.test/users?limit=5&cursor=a+b%26c")  # fmt: skip
    assert listing.next_url({"next": "42"}, PAGE, []) == "https://api.test/users?limit=5&cursor=42"
    assert listing.next_url({"next": None}, PAGE, []) is None


def test_without_next_the_link_header_names_the_next_page() -> None:
    listing = Listing("https://api.test/v1/users")
    assert listing.next_url([], PAGE, ['</v1/users?page=3>; rel="next"']) == (
        "https://api.test/v1/users?page=3")  # fmt: skip
    assert listing.next_url([], PAGE, []) is None


@pytest.mark.parametrize("value", [{"url": "x"}, ["x"], True])
def test_a_next_that_is_neither_text_nor_null_is_refused(value: Any) -> None:
    listing = Listing("https://api.test/", next=pointer("/next"))
    with pytest.raises(BadInput, match="not a URL"):
        listing.next_url({"next": value}, PAGE, [])
