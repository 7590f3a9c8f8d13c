"""A role's consuming, on a real RabbitMQ: when it ends, no delivery is still on its way."""

from __future__ import annotations

import asyncio
import random

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from sluiceway_common.service import Service
from tests.conftest import ServiceUrls

pytestmark = pytest.mark.integration


class Deliveries:
    """Counts, for one round, the deliveries that reached ``on_message`` while consuming was
    ending and after it had ended."""

    def __init__(self) -> None:
        self.ending = self.ended = False
        self.during = self.late = 0

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.late += self.ended
        self.during += self.ending and not self.ended
        await message.ack()  # keeps the deliveries coming, past any prefetch


async def _round(
    amqp_url: str, publishing: AbstractChannel, name: str, stop_at: float
) -> Deliveries:
    """Consume ``name`` while the broker streams to it, and stop after ``stop_at`` seconds."""
    streaming = asyncio.Event()
    streaming.set()

    async def stream() -> None:
        while streaming.is_set():
            await asyncio.gather(*(
                publishing.default_exchange.publish(aio_pika.Message(b"x"), name)
                for _ in range(50)
            ))  # fmt: skip

    pumping = asyncio.create_task(stream())
    deliveries = Deliveries()
    try:
        async with Service("test", 0) as service:
            await service.connect(amqp_url)
            channel = await service.channel(prefetch=500)
            queue = await channel.declare_queue(name)
            async with service.consuming(queue, deliveries.on_message):
                await asyncio.sleep(stop_at)
                deliveries.ending = True
            deliveries.ended = True
            await asyncio.sleep(0.05)
    finally:
        streaming.clear()
        await pumping
    return deliveries


async def test_no_delivery_reaches_on_message_once_consuming_has_ended(
    services: ServiceUrls, pipeline: str
) -> None:
    """Stopped while the broker streams deliveries, again and again: every delivery the
    process received reached ``on_message`` before the block was left, so what is finished
    after it (the writer's last flush) has them all. This replaced the writer's 50 ms wait
    "to let deliveries already on their way reach the batcher"."""
    rng = random.Random(7)
    name = f"sluiceway.{pipeline}.probe"
    during = 0  # deliveries that came while consuming was ending: the race was run
    publisher = await aio_pika.connect(services.amqp)
    try:
        publishing = await publisher.channel()
        await publishing.declare_queue(name)
        try:
            for _ in range(20):
                stop_at = rng.uniform(0.02, 0.1)
                deliveries = await _round(services.amqp, publishing, name, stop_at)
                assert deliveries.late == 0
                during += deliveries.during
        finally:
            await publishing.queue_delete(name)
    finally:
        await publisher.close()
    assert during > 0
