"""The end-to-end benchmark's pure parts: how many keys a round gets, the check of what
landed, and the table it reports."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.end_to_end import Fetching, check_rows, keys_for, table
from sluiceway_admin.demo import demo_keys
from sluiceway_sample_api.data import user


def test_every_key_a_round_without_latency_or_when_the_budget_allows() -> None:
    assert keys_for(20_000, 2, 0, 60) == 20_000
    assert keys_for(20_000, 32, 50, 60) == 20_000  # 640 keys/s at most: 38,400 in 60 s


def test_fewer_keys_where_the_requests_in_flight_bound_the_round() -> None:
    assert keys_for(20_000, 2, 50, 60) == 2_400  # 40 keys/s at most
    assert keys_for(20_000, 2, 500, 60) == 1_000  # never under 1000
    assert keys_for(500, 2, 500, 60) == 500  # nor over the keys there are


def landed(keys: list[str]) -> dict[str, Any]:
    return {key: user(key) for key in keys}


def test_rows_that_are_the_sample_apis_users_pass() -> None:
    keys = demo_keys(1_000)
    assert check_rows(keys, landed(keys)) == []


def test_missing_extra_and_wrong_rows_are_each_named() -> None:
    keys = demo_keys(1_000)
    rows = landed([*keys[1:], "user-999999"])
    rows[keys[5]] = {**rows[keys[5]], "age": -1}
    problems = check_rows(keys, rows)
    assert problems == [
        "1 of 1000 rows missing, e.g. ['user-000000']",
        "1 rows for keys not enqueued, e.g. ['user-999999']",
        "1 payloads differ from the sample API's, e.g. ['user-000005']",
    ]


def entry(name: str, keys: int, cpu: dict[str, float], rounds_ok: int = 3) -> dict[str, Any]:
    return {
        "name": name, "latency_ms": 50.0, "keys": keys, "rounds": 3, "rounds_ok": rounds_ok,
        "keys_per_s": 1234.5 if rounds_ok else None, "cpu_us_per_key": cpu,
        "fetch_keys_per_s": 1250.0 if rounds_ok else None,
    }  # fmt: skip


def test_the_fetching_rate_is_between_the_first_answer_seen_and_the_last() -> None:
    fetching = Fetching(keys=1000)
    fetching.saw(10.0, 0)
    assert fetching.rate() is None
    fetching.saw(10.1, 100)
    fetching.saw(10.5, 600)
    assert not fetching.done
    fetching.saw(10.9, 1000)
    assert fetching.done
    assert fetching.rate() == pytest.approx(900 / 0.8)
    fetching.saw(11.0, 1000)  # later polls change nothing
    assert fetching.rate() == pytest.approx(900 / 0.8)
    # Every answer between two polls: no rate to tell.
    at_once = Fetching(keys=10)
    at_once.saw(1.0, 10)
    at_once.saw(1.1, 10)
    assert (at_once.done, at_once.rate()) == (True, None)


def test_the_table_has_a_row_a_contender_and_says_what_differs() -> None:
    cpu = {"total": 1000.4, "fetcher": 600.0, "writer": 40.0, "enqueue": 30.25}
    lines = table(
        [entry("sluiceway", 20_000, cpu), entry("Celery, prefork x2", 2_400, cpu),
         entry("Celery, threads x32", 20_000, {}, rounds_ok=0)],
        keys=20_000,
    ).splitlines()  # fmt: skip
    assert lines[0] == (
        "| contender | upstream latency | keys/s | fetching, keys/s "
        "| CPU µs a key (services + enqueue) | fetcher CPU µs a key | writer | enqueue |"
    )
    assert lines[2] == "| sluiceway | 50 ms | 1,234 | 1,250 | 1,000 | 600 | 40 | 30.2 |"
    assert lines[3].startswith("| Celery, prefork x2 (2,400 keys a round) | 50 ms |")
    assert (
        lines[4] == "| Celery, threads x32 (3 of 3 rounds failed) | 50 ms | — | — | — | — | — | — |"
    )
    assert len(lines) == 5
