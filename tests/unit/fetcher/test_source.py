import httpx
import pytest

from sluiceway_fetcher.config import source_template
from sluiceway_fetcher.source import Failed, Fetched, classify, key_url


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("user-1", "https://api.test/users/user-1?x=1"),
        ("a/b", "https://api.test/users/a%2Fb?x=1"),
        ("../admin", "https://api.test/users/..%2Fadmin?x=1"),
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


def response(status: int, body: bytes) -> httpx.Response:
    return httpx.Response(status, content=body, request=httpx.Request("GET", "http://h/x"))


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
