"""Properties, over generated inputs (hypothesis), of the codec, the key's URL encoding and
the writer's batching policy."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import unquote, urlsplit

import orjson
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway_common import codec
from sluiceway_common.codec import key_url
from sluiceway_writer.batcher import Batcher

keys = st.text(min_size=1, max_size=200)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=50)
    | st.floats(allow_nan=False, allow_infinity=False, width=64),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)  # fmt: skip
stamps = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                               timezone(timedelta(hours=-8))]),
)  # fmt: skip


@given(keys, json_values, stamps)
def test_a_record_round_trips_through_the_codec(key: str, payload: object, at: datetime) -> None:
    body = codec.encode_record(key, orjson.dumps(payload), at)
    record = codec.decode_record(body)
    assert record.key == key
    assert record.fetched_at == at
    assert orjson.loads(record.payload) == payload


@given(st.lists(st.tuples(keys, json_values, stamps), min_size=1, max_size=8), st.booleans())
def test_a_packed_message_holds_every_record_in_order(
    records: list[tuple[str, object, datetime]], compress: bool
) -> None:
    body = b"[" + b",".join(codec.encode_record(k, orjson.dumps(p), t) for k, p, t in records)
    body += b"]"
    encoding = "zstd" if compress else None
    if compress:
        body = zstandard.compress(body)
    decoded = codec.decode_message(body, encoding, 1 << 24)
    assert decoded.bad == []
    assert [(r.key, orjson.loads(r.payload), r.fetched_at) for r in decoded.records] == records


@given(st.binary(max_size=300), st.sampled_from([None, "gzip", "zstd", "br", "x"]))
def test_any_body_decodes_or_is_a_bad_message(body: bytes, encoding: str | None) -> None:
    with contextlib.suppress(codec.BadMessage):
        codec.decode_message(body, encoding, 1 << 16)


@given(keys)
def test_a_key_is_one_path_segment_that_decodes_back_to_itself(key: str) -> None:
    url = key_url("https://api.test/users/{key}?v=1", key)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == (
        "https", "api.test", "v=1", "",
    )  # fmt: skip
    segment = parts.path.removeprefix("/users/")
    assert parts.path.startswith("/users/")
    assert "/" not in segment
    assert segment.strip(".")
    assert unquote(segment, errors="surrogatepass") == key


@given(keys)
def test_a_key_is_one_query_value(key: str) -> None:
    parts = urlsplit(key_url("http://h/get?id={key}&x=1", key))
    assert parts.path == "/get"
    assert parts.fragment == ""
    name, _, value = parts.query.partition("&")[0].partition("=")
    assert name == "id"
    assert unquote(value, errors="surrogatepass") == key


@settings(max_examples=200)
@given(
    st.integers(1, 20),
    st.integers(1, 5000),
    st.lists(st.tuples(st.integers(1, 8), st.integers(0, 3000), st.floats(0, 2)), max_size=60),
)
def test_batches_keep_order_and_bounds_and_lose_nothing(
    size: int, max_bytes: int, arrivals: list[tuple[int, int, float]]
) -> None:
    batcher: Batcher[int] = Batcher(size, 1.0, max_bytes)
    now, taken = 0.0, []
    weights = {}
    for i, (rows, nbytes, gap) in enumerate(arrivals):
        now += gap
        weights[i] = (rows, nbytes)
        full = batcher.add(i, now, rows, nbytes)
        assert full == (batcher.rows >= size or batcher.bytes >= max_bytes)
        while batcher.due(now):
            batch = batcher.take()
            assert batch
            if len(batch) > 1:  # only a lone message may exceed a bound
                assert sum(weights[j][0] for j in batch) <= size
                assert sum(weights[j][1] for j in batch) <= max_bytes
            taken.extend(batch)
    while len(batcher):
        taken.extend(batcher.take())
    assert taken == list(range(len(arrivals)))
    assert batcher.rows == batcher.bytes == 0
