"""The operator's reading of the records queue's depth, on the real RabbitMQ: ready and
unacked from the management API, ready only from the passive-declare fallback, and a clear
error (password masked) when neither answers."""

from __future__ import annotations

import asyncio

import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from sluiceway_common import topology
from sluiceway_operator.broker import BrokerUnreachable, DepthReader
from tests.conftest import ServiceUrls
from tests.integration.helpers import eventually, publish

pytestmark = pytest.mark.integration


async def test_depth_counts_unacked_messages_and_says_where_it_came_from(
    services: ServiceUrls, amqp_connection: AbstractConnection, pipeline: str
) -> None:
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.records, [b"{}"] * 10)
    # A consumer holds 4 of them unacked, as a writer holds its batch.
    channel = await amqp_connection.channel()
    await channel.set_qos(prefetch_count=4)
    queue = await channel.get_queue(queues.records, ensure=False)
    held: list[AbstractIncomingMessage] = []

    async def hold(message: AbstractIncomingMessage) -> None:
        held.append(message)

    await queue.consume(hold)
    await eventually(lambda: asyncio.sleep(0, len(held) == 4), what="4 deliveries")

    reader = DepthReader(services.amqp, services.management_api())
    fallback = DepthReader(services.amqp, "http://127.0.0.1:1")  # nothing listens there
    try:
        # The management API's figures are sampled every few seconds, each on its own.
        async def counted_all() -> bool:
            depth = await reader.read(queues.records)
            return (depth.messages, depth.consumers) == (10, 1)

        await eventually(counted_all, within=30, what="management API depth of 10, 1 consumer")
        assert (await reader.read(queues.records)).source == "management-api"
        ready_only = await fallback.read(queues.records)
        assert (ready_only.messages, ready_only.source) == (6, "passive-declare")
        # A queue not declared yet is empty, not an error.
        assert (await reader.read("sluiceway.nobody.records")).messages == 0
    finally:
        await reader.close()
        await fallback.close()
        await channel.close()


async def test_no_broker_at_all_is_an_error_with_the_password_masked() -> None:
    reader = DepthReader("amqp://user:s3cret@127.0.0.1:1/", "http://user:s3cret@127.0.0.1:1")
    try:
        with pytest.raises(BrokerUnreachable) as caught:
            await reader.read("sluiceway.p.records")
        assert "s3cret" not in str(caught.value)
        assert "management API" in str(caught.value)
        assert "AMQP" in str(caught.value)
    finally:
        await reader.close()
