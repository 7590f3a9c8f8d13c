from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sluiceway_common.codec import key_url
from sluiceway_common.settings import source_template
from sluiceway_fetcher.source import Failed, Fetched, classify
from sluiceway_fetcher.transport import Answer


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("user-1", "https://api.test/users/user-1?x=1"),
        ("a/b", "https://api.test/users/a%2Fb?x=1"),
        ("../admin", "https://api.test/users/..%2Fadmin?x=1"),
        ("..", "https://api.test/users/%2E%2E?x=1"),
        (".", "https://api.test/users/%2E?x=1"),
        ("...", "https://api.test/users/%2E%2E%2E?x=1"),
        ("%2F", "https://api.test/users/%252F?x=1"),
        ("http://other/", "https://api.test/users/http%3A%2F%2Fother%2F?x=1"),
        ("q?x=1#f", "https://api.test/users/q%3Fx%3D1%23f?x=1"),
        ("50%", "https://api.test/users/50%25?x=1"),
        ("Zoë z", "https://api.test/users/Zo%C3%AB%20z?x=1"),
    ],
)
def test_key_is_one_encoded_segment(key: str, url: str) -> None:
    assert key_url("https://api.test/users/{key}?x=1", key) == url


def test_key_as_query_value() -> None:
    assert key_url("http://h/get?id={key}", "a&b=c") == "http://h/get?id=a%26b%3Dc"


@pytest.mark.parametrize(
    "template",
    [
        "http://h/users",
        "http://h/{key}/{key}",
        "ftp://h/{key}",
        "http://h/{id}/{key}",
        "/users/{key}",
    ],
)
def test_bad_templates(template: str) -> None:
    with pytest.raises(ValueError):
        source_template(template)


REASONS = {
    200: "OK",
    404: "Not Found",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def response(status: int, body: bytes, **headers: str) -> Answer:
    return Answer(status, REASONS[status], CIMultiDictProxy(CIMultiDict(headers)), body)


def test_json_200_is_fetched() -> None:
    assert classify(response(200, b'{"a": 1}')) == Fetched(b'{"a": 1}')


def test_non_json_200_fails() -> None:
    outcome = classify(response(200, b"<html>"))
    assert isinstance(outcome, Failed)
    assert outcome.reason.startswith("body is not JSON")
    assert outcome.status == 200


@pytest.mark.parametrize("status", [404, 410, 500, 503, 429])
def test_error_status_fails_with_it(status: int) -> None:
    outcome = classify(response(status, b"{}"))
    assert isinstance(outcome, Failed)
    assert outcome.status == status
    assert outcome.reason.startswith(f"HTTP {status}")


NOW = datetime(2026, 11, 29, 18, 0, 0, tzinfo=UTC)


def response_with(status: int, **headers: str) -> Answer:
    return response(status, b"{}", **headers)


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_carry_their_retry_after(status: int) -> None:
    outcome = classify(response_with(status, **{"Retry-After": "30"}))
    assert isinstance(outcome, Failed)
    assert (outcome.status, outcome.retry_after) == (status, 30.0)
    assert outcome.reason.startswith(f"HTTP {status}")


def test_a_retry_after_date_counts_from_the_upstreams_own_date() -> None:
    # The upstream's clock is an hour behind ours: its date and its Retry-After agree.
    outcome = classify(
        response_with(
            429,
            **{
                "Retry-After": "Sun, 29 Nov 2026 17:00:45 GMT",
                "Date": "Sun, 29 Nov 2026 17:00:00 GMT",
            },
        ),
        now=NOW,
    )
    assert isinstance(outcome, Failed)
    assert outcome.retry_after == 45.0
    # Without a Date header, from ours.
    outcome = classify(
        response_with(429, **{"Retry-After": "Sun, 29 Nov 2026 18:00:45 GMT"}), now=NOW
    )
    assert isinstance(outcome, Failed)
    assert outcome.retry_after == 45.0


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (429, {}),
        (503, {"Retry-After": "garbage"}),
        (500, {"Retry-After": "30"}),
        (404, {"Retry-After": "30"}),
    ],
)
def test_no_pause_without_a_retry_after_on_429_or_503(status: int, headers: dict[str, str]) -> None:
    outcome = classify(response_with(status, **headers))
    assert isinstance(outcome, Failed)
    assert outcome.status == status
    assert outcome.retry_after is None
