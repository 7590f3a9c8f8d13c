import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sluiceway_common import codec

NOW = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)


def test_task_round_trip() -> None:
    assert codec.decode_task(codec.encode_task("a/b ü")) == "a/b ü"


@pytest.mark.parametrize("body", [b"", b"x", b"[]", b'{"key": 1}', b'{"key": ""}', b"{}"])
def test_bad_tasks(body: bytes) -> None:
    with pytest.raises(codec.BadMessage):
        codec.decode_task(body)


def test_record_round_trip_keeps_the_payload_exact() -> None:
    upstream = b'{"id": 123456789012345678901234567890, "f": 0.1, "s": "\\u00fc", "n": null}'
    record = codec.decode_record(codec.encode_record("k", upstream, NOW))
    assert record.key == "k"
    assert record.fetched_at == NOW
    assert json.loads(record.payload) == json.loads(upstream)
    assert "123456789012345678901234567890" in record.payload


def test_record_keeps_the_offset() -> None:
    stamp = datetime(2026, 1, 1, 10, tzinfo=timezone(timedelta(hours=2)))
    assert codec.decode_record(codec.encode_record("k", b"1", stamp)).fetched_at == stamp


def test_encode_refuses_naive_time() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        codec.encode_record("k", b"{}", datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"payload": 1, "fetched_at": "2026-01-01T00:00:00+00:00"}', '"key"'),
        (b'{"key": "k", "fetched_at": "2026-01-01T00:00:00+00:00"}', '"payload"'),
        (b'{"key": "k", "payload": 1}', '"fetched_at"'),
        (b'{"key": "k", "payload": 1, "fetched_at": "yesterday"}', "not ISO-8601"),
        (b'{"key": "k", "payload": 1, "fetched_at": "2026-01-01T00:00:00"}', "no UTC offset"),
        (b'{"key": "k", "payload": NaN, "fetched_at": "2026-01-01T00:00:00+00:00"}', "not JSON"),
    ],
)
def test_bad_records_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(codec.BadMessage, match=reason):
        codec.decode_record(body)
