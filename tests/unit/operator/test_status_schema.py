"""The status the operator writes, against the CRD's status schema with the API server's
pruning: a field the schema does not declare is dropped before it is stored, silently."""

from __future__ import annotations

import re

from sluiceway_operator import crd
from tests.pruning import pruned


def test_the_pruning_checker_prunes_as_the_api_server_does() -> None:
    schema = {"type": "object", "properties": {
        "kept": {"type": "object", "properties": {"a": {"type": "integer"}}},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"inner": {"type": "object", "properties": {}}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "list": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}}}},
    }}  # fmt: skip
    value = {"kept": {"a": 1, "b": 2}, "open": {"any": 1, "inner": {"x": 1}},
             "map": {"k": "v"}, "list": [{"name": "n", "extra": 1}], "gone": None,
             "top": 1}  # fmt: skip
    assert pruned(schema, value) == [".kept.b", ".open.inner.x", ".list[0].extra", ".top"]
    assert ".open.any" in pruned(schema, value, preserve=False)


def test_every_field_of_the_status_builders_is_in_the_schema() -> None:
    from sluiceway_operator.controller import writers_status

    writers = writers_status(current=3, ready=2, desired=3)
    status = {"writers": writers, "queueDepth": 40, "depthSource": "management-api"}
    assert pruned(crd.STATUS, status, preserve=False) == []


def test_every_field_of_the_fetchers_status_is_in_the_schema_and_unknown_is_left_out() -> None:
    from sluiceway_operator.controller import fetchers_status

    full = fetchers_status(current=6, ready=5, desired=6, bound="max-replicas",
                           latency=0.51234, backlog=1000, rate=2000.0)  # fmt: skip
    assert full == {"current": 6, "ready": 5, "desired": 6, "summary": "5/6",
                    "bound": "max-replicas", "latencySeconds": 0.512, "backlog": 1000,
                    "rateLimit": 2000.0}  # fmt: skip
    assert pruned(crd.STATUS, {"fetchers": full}, preserve=False) == []
    # No reading: no bound, backlog or latency (null would be rewritten every poll).
    assert fetchers_status(current=2, ready=2, desired=2) == {
        "current": 2, "ready": 2, "desired": 2, "summary": "2/2"}  # fmt: skip
    bounds = crd.STATUS["properties"]["fetchers"]["properties"]["bound"]["enum"]
    assert set(bounds) == {"idle", "rate-limited", "latency-bound", "max-replicas", "fixed"}


def test_the_wide_columns_show_the_fetchers_rate_and_bound() -> None:
    from sluiceway_operator.controller import fetchers_status

    columns = {c["name"]: c for c in crd.PRINTER_COLUMNS}
    assert columns["Fetchers"]["jsonPath"] == ".status.fetchers.summary"
    assert "priority" not in columns["Fetchers"]
    assert fetchers_status(current=3, ready=1, desired=3)["summary"] == "1/3"
    wide = {name: c["jsonPath"] for name, c in columns.items() if c.get("priority") == 1}
    assert wide == {"Rate": ".status.fetchers.rateLimit", "Bound": ".status.fetchers.bound"}


def test_the_writers_column_shows_what_its_description_says() -> None:
    from sluiceway_operator.controller import writers_status

    (column,) = [c for c in crd.PRINTER_COLUMNS if c["name"] == "Writers"]
    assert column["jsonPath"] == ".status.writers.summary"
    # "writer pods ready/desired, ...": the two fields of status.writers it shows, in order.
    match = re.search(r"(\w+)/(\w+)", column["description"])
    assert match is not None
    shown = match.groups()
    writers = writers_status(current=3, ready=1, desired=3)
    assert writers["summary"] == "/".join(str(writers[name]) for name in shown)
