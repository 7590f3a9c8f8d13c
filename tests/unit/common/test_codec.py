import gzip
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
import zstandard

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


def packed(*bodies: bytes) -> bytes:
    return b"[" + b",".join(bodies) + b"]"


def test_packed_message_decodes_every_record_and_isolates_bad_elements() -> None:
    good = [codec.encode_record(f"k{i}", b'{"i": %d}' % i, NOW) for i in range(3)]
    bad = b'{"key": "nope", "payload": 1}'
    decoded = codec.decode_message(packed(good[0], bad, good[1], good[2]), None, 1 << 20)
    assert [r.key for r in decoded.records] == ["k0", "k1", "k2"]
    assert len(decoded.bad) == 1
    element, reason = decoded.bad[0]
    assert json.loads(element) == {"key": "nope", "payload": 1}
    assert '"fetched_at"' in reason


@pytest.mark.parametrize("body", [b"[]", b"42", b'"text"', b"null"])
def test_bodies_that_hold_no_record(body: bytes) -> None:
    with pytest.raises(codec.BadMessage):
        codec.decode_message(body, None, 1 << 20)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_compressed_bodies(encoding: str) -> None:
    body = packed(*(codec.encode_record(f"k{i}", b"[1,2,3]", NOW) for i in range(50)))
    compressed = gzip.compress(body) if encoding == "gzip" else zstandard.compress(body)
    assert len(compressed) < len(body)
    decoded = codec.decode_message(compressed, encoding, 1 << 20)
    assert len(decoded.records) == 50
    assert decoded.size == len(body)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_decompression_bomb_is_refused(encoding: str) -> None:
    bomb = b"[" + b" " * (50 << 20) + b"]"
    small = gzip.compress(bomb) if encoding == "gzip" else zstandard.compress(bomb)
    assert len(small) < 100_000
    with pytest.raises(codec.BadMessage, match="larger than 1048576 bytes once decompressed"):
        codec.decode_message(small, encoding, 1 << 20)


@pytest.mark.parametrize(
    ("body", "encoding", "reason"),
    [
        (b"{}", "br", "unknown content_encoding 'br'"),
        (b"not gzip at all", "gzip", "gzip body does not decompress"),
        (b"not zstd at all", "zstd", "zstd body does not decompress"),
        (b"x" * 100, None, "larger than 10 bytes"),
    ],
)
def test_undecodable_bodies(body: bytes, encoding: str | None, reason: str) -> None:
    with pytest.raises(codec.BadMessage, match=reason):
        codec.decode_message(body, encoding, 10 if encoding is None else 1 << 20)


@pytest.mark.parametrize("encoding", [None, "", "identity"])
def test_plain_encodings(encoding: str | None) -> None:
    body = codec.encode_record("k", b"1", NOW)
    assert codec.decode_message(body, encoding, 1 << 20).records[0].key == "k"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"big": 18446744073709551616}',  # 2**64: past orjson's integers
        b'{"big": -9223372036854775809}',
        b'{"id": "12345678901234567890", "n": 1.5}',  # long digits in a string: exact path
        b'{"f": 0.1, "e": 1e300, "u": "\\u00e9\\ud83d\\ude00"}',  # the fast path
    ],
)
def test_payload_numbers_are_kept_exactly(payload: bytes) -> None:
    record = codec.decode_record(codec.encode_record("k", payload, NOW))
    assert json.loads(record.payload) == json.loads(payload)
    big = re.search(rb"-?\d{19,}", payload)
    if big is not None and b'"' + big.group() not in payload:
        assert big.group().decode() in record.payload


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [255, 256, 500, 900])
def test_deeply_nested_payloads_decode(depth: int) -> None:
    # orjson reads 1024 levels but writes only 255: a record the fetcher accepted must not
    # make the writer's decoder raise something else than a verdict.
    record = codec.decode_record(codec.encode_record("k", _nested(depth), datetime.now(UTC)))
    assert record.payload == _nested(depth).decode()


def test_a_payload_too_deep_for_every_encoder_is_a_bad_message() -> None:
    with pytest.raises(codec.BadMessage, match="nested too deeply"):
        codec.decode_record(codec.encode_record("k", _nested(1020), datetime.now(UTC)))
