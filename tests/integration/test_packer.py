"""The fetcher's packer against real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from aio_pika.abc import AbstractConnection

from sluiceway_common import amqp, codec, topology
from sluiceway_fetcher.packer import Packer, PackPolicy
from tests.conftest import ServiceUrls
from tests.integration.helpers import drain, ending_between_frames, through_proxy

pytestmark = pytest.mark.integration
AT = datetime(2026, 1, 1, tzinfo=UTC)


async def test_records_finished_together_share_a_message_and_each_waits_for_its_confirm(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    queues = topology.Queues(pipeline)
    channel = await amqp.publishing_channel(amqp_connection)
    await topology.declare(channel, queues)
    policy = PackPolicy(linger=0.05, max_records=10, max_bytes=1 << 20, compress_min_bytes=1 << 20)
    packer = Packer(channel, queues.records, policy)
    records = [codec.encode_record(f"k{i}", b"{}", AT) for i in range(25)]
    await asyncio.gather(*(packer.publish(r) for r in records))
    await packer.close()
    messages = await drain(amqp_connection, queues.records)
    # 25 records at once: packs of 10, 10 and 5.
    assert packer.messages == len(messages) == 3
    keys = []
    for message in messages:
        decoded = codec.decode_message(message.body, message.content_encoding, 1 << 20)
        keys += [r.key for r in decoded.records]
        assert message.delivery_mode == 2
    assert sorted(keys) == sorted(f"k{i}" for i in range(25))
    await channel.close()


async def test_a_large_pack_is_compressed_and_a_lone_record_is_plain(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    queues = topology.Queues(pipeline)
    channel = await amqp.publishing_channel(amqp_connection)
    await topology.declare(channel, queues)
    policy = PackPolicy(linger=0.05, max_records=100, max_bytes=1 << 20, compress_min_bytes=1024)
    packer = Packer(channel, queues.records, policy)
    payload = json.dumps({"bio": "lorem ipsum " * 20}).encode()
    await asyncio.gather(*(packer.publish(codec.encode_record(f"k{i}", payload, AT))
                           for i in range(20)))  # fmt: skip
    await packer.publish(codec.encode_record("alone", b"1", AT))
    await packer.close()
    big, alone = await drain(amqp_connection, queues.records)
    assert big.content_encoding == "zstd"
    assert len(codec.decode_message(big.body, "zstd", 1 << 20).records) == 20
    assert alone.content_encoding is None
    assert codec.decode_record(alone.body).key == "alone"
    await channel.close()


async def test_a_failed_publish_reaches_every_record_of_the_pack(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    channel = await amqp.publishing_channel(amqp_connection)
    # No such queue: with mandatory publishing the broker returns the message.
    policy = PackPolicy(linger=0.05, max_records=10, max_bytes=1 << 20, compress_min_bytes=1 << 20)
    packer = Packer(channel, f"sluiceway.{pipeline}.nowhere", policy)
    results = await asyncio.gather(
        *(packer.publish(codec.encode_record(f"k{i}", b"1", AT)) for i in range(3)),
        return_exceptions=True,
    )
    assert len(results) == 3
    assert all(isinstance(r, Exception) for r in results)
    await packer.close()
    await channel.close()


async def test_a_connection_ended_between_two_frames_reaches_every_record_as_a_broker_error(
    pipeline: str, services: ServiceUrls, amqp_connection: AbstractConnection
) -> None:
    async with through_proxy(services.amqp) as (proxy, channel):
        await topology.declare(channel, topology.Queues(pipeline))
        policy = PackPolicy(linger=0.01, max_records=10, max_bytes=1 << 20,
                            compress_min_bytes=1 << 20)  # fmt: skip
        packer = Packer(channel, topology.Queues(pipeline).records, policy)
        async with ending_between_frames(proxy, channel, amqp_connection) as sent:
            publishing = [asyncio.ensure_future(packer.publish(codec.encode_record(
                f"k{i}", b"1", AT))) for i in range(3)]  # fmt: skip
            await sent()  # the pack, its confirm to come
            proxy.end()
            results = await asyncio.wait_for(
                asyncio.gather(*publishing, return_exceptions=True), 30
            )
        assert all(isinstance(r, amqp.BROKER_ERRORS) for r in results), results
        assert "without a close from the broker" in str(results[0])
        await packer.close()
