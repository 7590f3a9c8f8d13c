"""The writer against real RabbitMQ and PostgreSQL, run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import random
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest
import zstandard
from aio_pika.abc import AbstractConnection
from prometheus_client import CollectorRegistry

from sluiceway_common import amqp, codec, topology
from sluiceway_writer.batcher import Batcher
from sluiceway_writer.config import WriterSettings
from sluiceway_writer.consumer import Writer
from sluiceway_writer.main import serve
from sluiceway_writer.metrics import Timings
from sluiceway_writer.sink import Sink
from tests.conftest import ServiceUrls
from tests.integration.helpers import (
    TcpProxy,
    consumers,
    depth,
    depth_is,
    drain,
    ending_between_frames,
    eventually,
    publish,
    record,
    running_writer,
    through_proxy,
)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def writer(
    services: ServiceUrls, database_url: str, pipeline: str, **options: Any
) -> AbstractAsyncContextManager[asyncio.Task[int]]:
    """:func:`running_writer` on this test's services (``options``: its keyword arguments)."""
    return running_writer(database_url, services.amqp, pipeline, **options)


async def rows(db: asyncpg.Connection, pipeline: str) -> dict[str, tuple[object, datetime]]:
    found = await db.fetch(
        "SELECT key, payload, fetched_at FROM records WHERE pipeline = $1", pipeline
    )
    return {r["key"]: (json.loads(r["payload"]), r["fetched_at"]) for r in found}


async def count(db: asyncpg.Connection, pipeline: str) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline)
    return n


async def test_lands_every_record_and_acks_only_what_committed(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    bodies = [record(f"k{i}", b'{"n": %d}' % i, T0) for i in range(25)]
    await publish(amqp_connection, pipeline, queues.records, bodies)
    async with writer(services, database_url, pipeline, batch_size=4, batch_timeout=0.2):
        await eventually(lambda: _has(db, pipeline, 25), what="25 rows")
    assert await rows(db, pipeline) == {f"k{i}": ({"n": i}, T0) for i in range(25)}
    assert await depth(amqp_connection, queues.records) == 0  # all acked, none returned


async def _has(db: asyncpg.Connection, pipeline: str, n: int) -> bool:
    return await count(db, pipeline) >= n


async def test_flushes_at_batch_size_without_waiting_for_the_timeout_and_on_stop(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    async with writer(services, database_url, pipeline, batch_size=5, batch_timeout=3600):
        await publish(
            amqp_connection, pipeline, queues.records, [record(f"k{i}", b"1", T0) for i in range(8)]
        )
        # Five make a batch long before the hour-long timeout; three wait for more.
        await eventually(lambda: _has(db, pipeline, 5), what="a full batch")
        await asyncio.sleep(0.5)
        assert await count(db, pipeline) == 5
    # Stopping flushes what was held.
    assert await count(db, pipeline) == 8
    assert await depth(amqp_connection, queues.records) == 0


async def test_flushes_when_the_oldest_record_has_waited_the_timeout(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    async with writer(services, database_url, pipeline, batch_size=10_000, batch_timeout=0.3):
        await publish(amqp_connection, pipeline, queues.records, [record("only", b"1", T0)])
        await eventually(lambda: _has(db, pipeline, 1), what="a timed flush")


async def test_redelivery_changes_nothing_and_the_newest_fetch_wins(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    newer, older = T0 + timedelta(hours=1), T0
    async with writer(services, database_url, pipeline, batch_size=100, batch_timeout=0.1):
        # Same batch: duplicates collapse to the newest.
        await publish(
            amqp_connection,
            pipeline,
            queues.records,
            [
                record("k", b'"old"', older),
                record("k", b'"new"', newer),
                record("k", b'"old"', older),
            ],
        )
        await eventually(lambda: _has(db, pipeline, 1))
        await asyncio.sleep(0.3)
        # Later batches: an older fetch and a redelivery of the same one change nothing.
        await publish(amqp_connection, pipeline, queues.records, [record("k", b'"old"', older)])
        await publish(amqp_connection, pipeline, queues.records, [record("k", b'"new"', newer)])
        await publish(amqp_connection, pipeline, queues.records, [record("z", b"0", older)])
        await eventually(lambda: _has(db, pipeline, 2))
    assert (await rows(db, pipeline))["k"] == ("new", newer)
    written_at = await db.fetchval(
        "SELECT written_at FROM records WHERE pipeline = $1 AND key = 'k'", pipeline
    )
    assert written_at is not None


async def test_bad_messages_and_refused_rows_are_dead_lettered_and_neighbours_land(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    good = [record(f"good{i}", b"{}", T0) for i in range(6)]
    await publish(
        amqp_connection,
        pipeline,
        queues.records,
        [
            good[0],
            b"this is not json",
            good[1],
            # jsonb cannot hold a NUL character: PostgreSQL refuses this row alone.
            record("nul", b'{"s": "a\\u0000b"}', T0),
            good[2],
            record("", b"{}", T0),
            good[3],
        ],
    )
    await publish(amqp_connection, pipeline, queues.records, [good[4]], content_encoding="br")
    await publish(amqp_connection, pipeline, queues.records, [good[5]])
    async with writer(services, database_url, pipeline, batch_size=50, batch_timeout=0.2):
        await eventually(lambda: _has(db, pipeline, 5), what="the good rows")
        await eventually(lambda: _dead(amqp_connection, queues.dead, 4), what="4 dead letters")
    assert set(await rows(db, pipeline)) == {"good0", "good1", "good2", "good3", "good5"}
    dead = await drain(amqp_connection, queues.dead)
    reasons = sorted(str((m.headers or {})["x-sluiceway-reason"]) for m in dead)
    assert len(reasons) == 4
    assert reasons[0].startswith("22P05")  # untranslatable character, from PostgreSQL
    assert any("not JSON" in r for r in reasons)
    assert any('no "key"' in r for r in reasons)
    assert any("content_encoding 'br'" in r for r in reasons)
    assert await depth(amqp_connection, queues.records) == 0


async def _dead(connection: AbstractConnection, queue: str, n: int) -> bool:
    return await depth(connection, queue) >= n


def packed(*bodies: bytes) -> bytes:
    return b"[" + b",".join(bodies) + b"]"


async def test_packed_and_compressed_messages_land_in_one_stream(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    batch = [record(f"p{i}", b'{"n": %d}' % i, T0) for i in range(40)]
    await publish(amqp_connection, pipeline, queues.records, [record("single", b"1", T0)])
    await publish(amqp_connection, pipeline, queues.records, [packed(*batch[:10])])
    await publish(
        amqp_connection, pipeline, queues.records, [gzip.compress(packed(*batch[10:20]))],
        content_encoding="gzip",
    )  # fmt: skip
    await publish(
        amqp_connection, pipeline, queues.records, [zstandard.compress(packed(*batch[20:40]))],
        content_encoding="zstd",
    )  # fmt: skip
    await publish(
        amqp_connection, pipeline, queues.records, [gzip.compress(record("gz", b"2", T0))],
        content_encoding="gzip",
    )  # fmt: skip
    async with writer(services, database_url, pipeline, batch_size=16, batch_timeout=0.2):
        await eventually(lambda: _has(db, pipeline, 42), what="42 rows")
    landed = await rows(db, pipeline)
    assert set(landed) == {"single", "gz"} | {f"p{i}" for i in range(40)}
    assert landed["p33"] == ({"n": 33}, T0)
    assert await depth(amqp_connection, queues.records) == 0
    assert await depth(amqp_connection, queues.dead) == 0


async def test_a_bad_element_of_a_packed_message_is_dead_lettered_alone(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    body = packed(
        record("a", b"1", T0),
        b'{"key": "no-time", "payload": 1}',
        record("nul", b'"x\\u0000y"', T0),
        record("b", b"2", T0),
    )
    await publish(amqp_connection, pipeline, queues.records, [body], headers={"origin": "test"})
    async with writer(services, database_url, pipeline, batch_size=10, batch_timeout=0.1):
        await eventually(lambda: _has(db, pipeline, 2))
        await eventually(lambda: _dead(amqp_connection, queues.dead, 2))
    assert set(await rows(db, pipeline)) == {"a", "b"}
    dead = {}
    for message in await drain(amqp_connection, queues.dead):
        doc = json.loads(message.body)
        assert isinstance(doc, dict)  # each bad element on its own, not the whole array
        assert (message.headers or {})["origin"] == "test"
        dead[doc["key"]] = str((message.headers or {})["x-sluiceway-reason"])
    assert set(dead) == {"no-time", "nul"}
    assert '"fetched_at"' in dead["no-time"]
    assert dead["nul"].startswith("22P05")


async def test_a_compression_bomb_is_dead_lettered_and_its_neighbours_land(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    bomb = zstandard.compress(b"[" + b" " * (8 << 20) + b"]")
    await publish(amqp_connection, pipeline, queues.records, [record("before", b"1", T0)])
    await publish(amqp_connection, pipeline, queues.records, [bomb], content_encoding="zstd")
    await publish(amqp_connection, pipeline, queues.records, [record("after", b"1", T0)])
    async with writer(
        services, database_url, pipeline, batch_size=10, batch_timeout=0.1,
        batch_max_bytes=1 << 20,
    ):  # fmt: skip
        await eventually(lambda: _has(db, pipeline, 2))
        await eventually(lambda: _dead(amqp_connection, queues.dead, 1))
    (dead,) = await drain(amqp_connection, queues.dead)
    assert "larger than 1048576 bytes once decompressed" in str(
        (dead.headers or {})["x-sluiceway-reason"]
    )
    assert dead.body == bomb  # the original, still compressed
    assert dead.content_encoding == "zstd"


async def test_a_batch_is_bounded_by_bytes(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    big = b'"' + b"x" * 4000 + b'"'
    async with writer(
        services, database_url, pipeline, batch_size=1000, batch_timeout=3600,
        batch_max_bytes=10_000,
    ):  # fmt: skip
        # Three records of ~4 KB pass 10,000 bytes long before 1,000 rows or an hour.
        await publish(amqp_connection, pipeline, queues.records,
                      [record(f"k{i}", big, T0) for i in range(3)])  # fmt: skip
        await eventually(lambda: _has(db, pipeline, 2), what="a batch cut by bytes")


async def test_concurrent_writers_on_overlapping_keys_keep_the_newest_and_never_deadlock(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    rng = random.Random(7)
    keys = [f"k{i:03d}" for i in range(200)]
    versions = 8
    bodies = [
        record(key, b'{"v": %d}' % v, T0 + timedelta(seconds=v))
        for v in range(versions)
        for key in keys
    ]
    rng.shuffle(bodies)
    # Packed in random groups so each writer's batches hit the same keys in random orders.
    messages = [packed(*bodies[i : i + 7]) for i in range(0, len(bodies), 7)]
    await publish(amqp_connection, pipeline, queues.records, messages)
    deadlocks_before = await deadlocks(db)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(4):
            await stack.enter_async_context(
                writer(services, database_url, pipeline, batch_size=64, batch_timeout=0.05)
            )
        await eventually(lambda: _drained(amqp_connection, queues.records), within=60)
    landed = await rows(db, pipeline)
    newest = T0 + timedelta(seconds=versions - 1)
    assert landed == {key: ({"v": versions - 1}, newest) for key in keys}
    assert await depth(amqp_connection, queues.dead) == 0
    # A deadlock would only have been retried; PostgreSQL's count shows there was none.
    await asyncio.sleep(1.1)  # statistics are flushed at most once a second
    assert await deadlocks(db) == deadlocks_before


async def deadlocks(db: asyncpg.Connection) -> int:
    await db.execute("SELECT pg_stat_clear_snapshot()")
    count: int = await db.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )
    return count


async def _drained(connection: AbstractConnection, queue: str) -> bool:
    return await depth(connection, queue) == 0


async def test_a_database_outage_is_retried_and_nothing_is_dead_lettered(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sluiceway_writer")
    queues = topology.Queues(pipeline)
    proxy = await TcpProxy(database_url).start()
    try:
        async with writer(services, proxy.url, pipeline, batch_size=5, batch_timeout=0.1):
            await eventually(lambda: _consuming(amqp_connection, queues.records))
            await proxy.cut()
            await publish(amqp_connection, pipeline, queues.records,
                          [record(f"k{i}", b"1", T0) for i in range(20)])  # fmt: skip
            await asyncio.sleep(1.5)  # a few failed tries with backoff
            assert await count(db, pipeline) == 0
            await proxy.restore()
            await eventually(lambda: _has(db, pipeline, 20), what="rows after the outage")
    finally:
        await proxy.close()
    assert await depth(amqp_connection, queues.dead) == 0
    assert await depth(amqp_connection, queues.records) == 0
    # The outage is said once, not at each of its retries, and its end once.
    said = [r.getMessage() for r in caplog.records if r.name == "sluiceway_writer.consumer"]
    assert sum(m.startswith("database write failed, retrying (") for m in said) == 1, said
    assert said.count("database writes succeed again") == 1, said


async def test_sigterm_during_an_outage_stops_promptly_and_returns_the_batch(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    proxy = await TcpProxy(database_url).start()
    config = WriterSettings(database_url=proxy.url, amqp_url=services.amqp, pipeline=pipeline,
                            batch_size=5, batch_timeout=0.1, batch_max_bytes=1 << 20,
                            write_mode="direct", merge_interval=0.5, metrics_port=0,
                            log_level="INFO", sink_table=None, sink_key="key",
                            sink_columns={}, sink_version=None)  # fmt: skip
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(serve(config, stop))
        await eventually(lambda: _consuming(amqp_connection, queues.records))
        await proxy.cut()
        await publish(amqp_connection, pipeline, queues.records,
                      [record(f"k{i}", b"1", T0) for i in range(12)])  # fmt: skip
        await asyncio.sleep(3)  # the backoff has grown past a second
        stop.set()
        # Back within one more try, not after the backoff; exit status 1: batches unwritten.
        assert await asyncio.wait_for(task, timeout=5) == 1
    finally:
        await proxy.close()
    assert await count(db, pipeline) == 0
    await eventually(lambda: depth_is(amqp_connection, queues.records, 12),
                     what="the unwritten records back on the queue")  # fmt: skip
    assert await depth(amqp_connection, queues.dead) == 0


async def _consuming(connection: AbstractConnection, queue: str) -> bool:
    return await consumers(connection, queue) > 0


async def test_a_broker_cut_while_the_writer_holds_a_batch_loses_nothing_and_crashes_nothing(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
) -> None:
    # The batch is written after its channel was lost, so it cannot be acked: aio-pika raises
    # (a RuntimeError) at the look at such a message's channel, which once stopped the writer.
    queues = topology.Queues(pipeline)
    proxy = await TcpProxy(services.amqp).start()
    try:
        async with running_writer(
            database_url, proxy.url, pipeline, batch_size=1000, batch_timeout=1.0
        ) as task:
            await eventually(lambda: _consuming(amqp_connection, queues.records))
            await publish(amqp_connection, pipeline, queues.records,
                          [record(f"k{i}", b"1", T0) for i in range(10)])  # fmt: skip
            await eventually(lambda: depth_is(amqp_connection, queues.records, 0))
            await proxy.cut()
            await asyncio.sleep(0.2)
            await proxy.restore()
            await eventually(lambda: _has(db, pipeline, 10), what="the held batch written")
            # Redelivered once the connection is back, written again (a no-op) and acked.
            await eventually(lambda: _consuming(amqp_connection, queues.records), within=30)
            await asyncio.sleep(1.5)
            assert not task.done()
            await eventually(lambda: depth_is(amqp_connection, queues.records, 0))
    finally:
        await proxy.close()
    assert await count(db, pipeline) == 10
    assert await depth(amqp_connection, queues.dead) == 0


async def test_a_dead_letter_unconfirmed_when_the_connection_ends_between_frames_is_a_broker_error(
    services: ServiceUrls, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    # What the writer's callers catch to give the batch back, or retry a merge: a broker error.
    queues = topology.Queues(pipeline)
    async with through_proxy(services.amqp) as (proxy, channel):
        await topology.declare(channel, queues)
        timings = Timings.create(CollectorRegistry(), pipeline)
        # Dead-lettering takes the channel and the queues only: no sink.
        writing = Writer(channel, queues, cast(Sink, None), Batcher(10, 1.0, 1 << 20),
                         asyncio.Event(), timings)  # fmt: skip
        async with ending_between_frames(proxy, channel, amqp_connection) as sent:
            refused = codec.Record("k", "{}", T0)
            sending = asyncio.ensure_future(writing.dead_letter(refused, "refused"))
            await sent()  # the dead letter, its confirm to come
            proxy.end()
            with pytest.raises(amqp.BROKER_ERRORS, match="without a close from the broker"):
                await asyncio.wait_for(sending, 30)
