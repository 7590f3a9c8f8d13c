"""``sluiceway dead list|replay|purge`` against the real broker, through the CLI."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
from datetime import UTC, datetime

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from sluiceway_common import topology
from tests.conftest import ServiceUrls
from tests.integration.helpers import depth, depth_is, drain, eventually, record

pytestmark = pytest.mark.integration

NO_REASON = "(no reason: dead-lettered by the broker, e.g. delivery limit)"
AT = datetime(2026, 11, 29, 18, 33, 15, tzinfo=UTC)
RECORD_A = record("a", b'{"n": 1}', AT)
RECORD_B = record("b", b'{"n": 2}', AT)
RECORD_C = record("c", b'{"n": 3}', AT)
GARBAGE = b"\xff\x00 not JSON"
ARRAY = b"[" + record("d", b"{}", AT) + b"," + record("e", b"{}", AT) + b"]"  # packed
GZIPPED = gzip.compress(record("z", b'{"n": 26}', AT))


def sluiceway(services: ServiceUrls, pipeline: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "SLUICEWAY_AMQP_URL": services.amqp,
        "SLUICEWAY_PIPELINE": pipeline,
    }
    result = subprocess.run(
        [sys.executable, "-m", "sluiceway_common", "dead", *args],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def dead_letters(pipeline: str) -> list[aio_pika.Message]:
    """Dead letters as the writer and the broker leave them, and two odd ones."""
    records = topology.Queues(pipeline).records
    return [
        topology.persistent(
            RECORD_A,
            headers={"x-sluiceway-reason": "refused: bad\tvalue\nhere", "x-trace": "t-1"},
        ),
        # What the broker sets when the records queue's delivery limit dead-letters a message.
        topology.persistent(
            RECORD_B,
            headers={
                "x-death": [
                    {
                        "count": 1,
                        "reason": "delivery_limit",
                        "queue": records,
                        "exchange": "",
                        "routing-keys": [records],
                    }
                ],
                "x-first-death-reason": "delivery_limit",
                "x-first-death-queue": records,
                "x-first-death-exchange": "",
                "x-trace": "t-2",
            },
        ),
        topology.persistent(RECORD_C),  # no headers at all
        aio_pika.Message(
            GARBAGE,
            content_type="text/plain",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"x-sluiceway-reason": "record is not JSON"},
        ),
        topology.persistent(ARRAY, headers={"x-sluiceway-reason": "record is not a JSON object"}),
        topology.persistent(
            GZIPPED,
            content_encoding="gzip",
            headers={"x-sluiceway-reason": "unknown content_encoding 'gzip'"},
        ),
    ]


async def publish_dead(connection: AbstractConnection, pipeline: str, copies: int = 1) -> None:
    queues = topology.Queues(pipeline)
    channel = await connection.channel(publisher_confirms=True)
    try:
        await topology.declare(channel, queues)
        await asyncio.gather(
            *(
                channel.default_exchange.publish(message, routing_key=queues.dead)
                for _ in range(copies)
                for message in dead_letters(pipeline)
            )
        )
    finally:
        await channel.close()


def expected_lines(pipeline: str) -> list[str]:
    records = topology.Queues(pipeline).records
    return sorted(
        [
            "a\trefused: bad\\tvalue\\nhere",
            f"b\t{NO_REASON} x-death: reason=delivery_limit queue={records} count=1",
            f"c\t{NO_REASON}",
            f"<{len(GARBAGE)} bytes, content_encoding none>\trecord is not JSON",
            f"<{len(ARRAY)} bytes, content_encoding none>\trecord is not a JSON object",
            f"<{len(GZIPPED)} bytes, content_encoding gzip>\tunknown content_encoding 'gzip'",
        ]
    )


async def test_list_shows_every_dead_letter_and_leaves_them_on_the_queue(
    services: ServiceUrls, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    await publish_dead(amqp_connection, pipeline)
    dead = topology.Queues(pipeline).dead
    assert await depth(amqp_connection, dead) == 6

    for _ in range(2):  # a second look sees the same: the first one took nothing
        listed = sluiceway(services, pipeline, "list")
        assert listed.returncode == 0, listed.stderr
        assert sorted(listed.stdout.splitlines()) == expected_lines(pipeline)
        assert "6 dead letters shown of 6" in listed.stderr
        await eventually(
            lambda: depth_is(amqp_connection, dead, 6), what="the listed messages back"
        )

    limited = sluiceway(services, pipeline, "list", "--limit", "2")
    assert limited.returncode == 0, limited.stderr
    assert len(limited.stdout.splitlines()) == 2
    assert "2 dead letters shown of 6" in limited.stderr
    await eventually(lambda: depth_is(amqp_connection, dead, 6), what="the listed messages back")

    as_json = sluiceway(services, pipeline, "list", "--json", "--limit", "0")
    assert as_json.returncode == 0, as_json.stderr
    by_key = {}
    for line in as_json.stdout.splitlines():
        letter = json.loads(line)
        by_key[letter["key"] or f"<{letter['content_encoding']} {letter['bytes']}>"] = letter
    assert by_key["a"] == {
        "key": "a",
        "reason": "refused: bad\tvalue\nhere",
        "death": None,
        "bytes": len(RECORD_A),
        "content_encoding": None,
        "headers": {"x-sluiceway-reason": "refused: bad\tvalue\nhere", "x-trace": "t-1"},
    }
    assert by_key["b"]["reason"] is None
    assert by_key["b"]["death"].startswith("x-death: reason=delivery_limit")
    assert by_key["b"]["headers"]["x-trace"] == "t-2"  # string-valued headers only:
    assert "x-death" not in by_key["b"]["headers"]
    assert by_key[f"<gzip {len(GZIPPED)}>"]["reason"] == "unknown content_encoding 'gzip'"
    assert len(by_key) == 6

    # Nothing was lost or changed by looking.
    await eventually(lambda: depth_is(amqp_connection, dead, 6), what="the listed messages back")
    kept = await drain(amqp_connection, dead)
    assert sorted(m.body for m in kept) == sorted(m.body for m in dead_letters(pipeline))


async def test_list_of_a_pipeline_without_queues_declares_them_and_shows_nothing(
    services: ServiceUrls, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    listed = sluiceway(services, pipeline, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == ""
    assert "0 dead letters shown of 0" in listed.stderr
    for queue in topology.Queues(pipeline).all():
        assert await depth(amqp_connection, queue) == 0  # a passive declare: the queue exists


async def test_replay_moves_dead_letters_back_to_the_records_queue_without_their_reason(
    services: ServiceUrls, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    queues = topology.Queues(pipeline)
    await publish_dead(amqp_connection, pipeline)
    # A list first: it returns every message to the dead queue, which then carries a broker
    # delivery count that must not follow the record back.
    assert sluiceway(services, pipeline, "list").returncode == 0
    await eventually(lambda: depth_is(amqp_connection, queues.dead, 6), what="list's returns")

    some = sluiceway(services, pipeline, "replay", "--limit", "2")
    assert some.returncode == 0, some.stderr
    assert f"replayed 2 dead letters of pipeline {pipeline}" in some.stdout
    await eventually(lambda: depth_is(amqp_connection, queues.dead, 4), what="2 acked")
    assert await depth(amqp_connection, queues.records) == 2

    rest = sluiceway(services, pipeline, "replay")
    assert rest.returncode == 0, rest.stderr
    assert f"replayed 4 dead letters of pipeline {pipeline}" in rest.stdout
    await eventually(lambda: depth_is(amqp_connection, queues.dead, 0), what="4 acked")

    replayed = {m.body: m for m in await drain(amqp_connection, queues.records)}
    originals = {m.body: m for m in dead_letters(pipeline)}
    assert sorted(replayed) == sorted(originals)
    for body, message in replayed.items():
        headers = dict(message.headers or {})
        # The broker counts deliveries afresh on the records queue (3.10 shows 0 on the
        # first); the returns that list caused on the dead queue do not come along.
        assert headers.pop("x-delivery-count", 0) == 0
        # Only the publisher's own header is left: no reason, no x-death, no x-first-death-*.
        original = originals[body].headers or {}
        assert headers == {k: v for k, v in original.items() if k == "x-trace"}
        assert message.content_type == originals[body].content_type
        assert message.content_encoding == originals[body].content_encoding
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert replayed[GZIPPED].content_encoding == "gzip"
    assert replayed[GARBAGE].content_type == "text/plain"
    assert (replayed[RECORD_A].headers or {})["x-trace"] == "t-1"


async def test_replay_takes_only_what_was_dead_when_it_started(
    services: ServiceUrls, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    # A writer whose cause is not fixed yet: every replayed record dies again at once. More
    # than one replay chunk, so that the dead letters of the first are back while the
    # command still reads the queue.
    queues = topology.Queues(pipeline)
    await publish_dead(amqp_connection, pipeline, copies=150)
    channel = await amqp_connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=100)
    records = await channel.get_queue(queues.records)

    async def dies_again(message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {}) | {"x-sluiceway-reason": "still broken"}
        # Published before the ack on the same channel, so the broker has it first.
        await channel.default_exchange.publish(
            aio_pika.Message(message.body, headers=headers), routing_key=queues.dead
        )
        await message.ack()

    await records.consume(dies_again)
    replayed = await asyncio.to_thread(sluiceway, services, pipeline, "replay")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed 900 dead letters of pipeline {pipeline}" in replayed.stdout
    await eventually(lambda: depth_is(amqp_connection, queues.dead, 900), what="dead again")
    await channel.close()
    again = await drain(amqp_connection, queues.dead)
    assert {(m.headers or {})["x-sluiceway-reason"] for m in again} == {"still broken"}


async def test_replay_of_an_empty_dead_queue_replays_nothing(
    services: ServiceUrls, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    replayed = sluiceway(services, pipeline, "replay")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed 0 dead letters of pipeline {pipeline}" in replayed.stdout
    assert await depth(amqp_connection, topology.Queues(pipeline).records) == 0


async def test_purge_deletes_every_dead_letter(
    services: ServiceUrls, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    await publish_dead(amqp_connection, pipeline)
    purged = sluiceway(services, pipeline, "purge")
    assert purged.returncode == 0, purged.stderr
    assert f"purged 6 dead letters of pipeline {pipeline}" in purged.stdout
    assert await depth(amqp_connection, topology.Queues(pipeline).dead) == 0
    assert await depth(amqp_connection, topology.Queues(pipeline).records) == 0


def test_a_negative_limit_is_refused(services: ServiceUrls, pipeline: str) -> None:
    refused = sluiceway(services, pipeline, "list", "--limit", "-1")
    assert refused.returncode == 2
    assert "--limit" in refused.stderr
