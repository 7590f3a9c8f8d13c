"""The fetcher's acks in runs (``acks.py``) against real RabbitMQ: what is acked, in how many
frames, and what a closed channel gives back to the queue."""

from __future__ import annotations

import asyncio

import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from sluiceway_common import codec, topology
from sluiceway_fetcher.acks import Acks, Delivery
from tests.integration.helpers import depth_is, drain, eventually, publish

pytestmark = pytest.mark.integration

HOLD = 0.3  # long enough that a loaded machine does not pass it between two steps


class Consumer:
    """The deliveries of ``n`` tasks, each noted by ``acks`` as it arrives."""

    def __init__(self, acks: Acks) -> None:
        self.acks = acks
        self.deliveries: list[Delivery] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.deliveries.append(self.acks.received(message))


async def consume(
    connection: AbstractConnection, pipeline: str, n: int, hold: float = HOLD
) -> tuple[AbstractChannel, Consumer]:
    queues = topology.Queues(pipeline)
    await publish(
        connection, pipeline, queues.fetch, [codec.encode_task(f"k{i}") for i in range(n)]
    )
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=n + 5)
    consumer = Consumer(Acks(hold))
    queue = await channel.declare_queue(queues.fetch, passive=True)
    await queue.consume(consumer.on_message)

    async def delivered() -> bool:
        return len(consumer.deliveries) >= n

    await eventually(delivered, what=f"{n} deliveries")
    return channel, consumer


async def left_on_queue(connection: AbstractConnection, pipeline: str, n: int) -> list[str]:
    """The ``n`` tasks back on the fetch queue once the consuming channel closed (a channel's
    unacknowledged deliveries return asynchronously)."""
    fetch = topology.Queues(pipeline).fetch
    if n == 0:
        await asyncio.sleep(0.5)  # time for a return that should not come
    await eventually(lambda: depth_is(connection, fetch, n), what=f"{n} tasks back")
    return sorted(codec.decode_task(m.body) for m in await drain(connection, fetch))


async def test_tasks_finished_together_are_acked_with_one_frame(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    channel, consumer = await consume(amqp_connection, pipeline, 10)
    for delivery in consumer.deliveries:
        consumer.acks.done(delivery)
    await eventually(lambda: _acked(consumer.acks, 10), what="the acks")
    assert consumer.acks.frames == 1
    await channel.close()
    assert await left_on_queue(amqp_connection, pipeline, 0) == []


async def test_a_task_behind_an_open_one_waits_for_it_then_goes_alone(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    channel, consumer = await consume(amqp_connection, pipeline, 6)
    acks, (first, *rest) = consumer.acks, consumer.deliveries
    for delivery in rest[:2]:
        acks.done(delivery)
    await asyncio.sleep(HOLD / 3)
    assert acks.frames == 0  # held for the first task
    acks.done(first)  # within the hold: one frame for the three
    await eventually(lambda: _acked(acks, 3), what="the run of three")
    assert acks.frames == 1
    # The fourth stays open; the two after it go alone once held for HOLD.
    for delivery in rest[3:]:
        acks.done(delivery)
    await asyncio.sleep(HOLD / 3)
    assert acks.tasks == 3
    await eventually(lambda: _acked(acks, 5), what="the held acks")
    assert acks.frames == 3
    await channel.close()
    assert await left_on_queue(amqp_connection, pipeline, 1) == ["k3"]  # the open task, unacked


async def test_a_task_finished_as_a_flush_ends_is_acked_at_once(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    channel, consumer = await consume(amqp_connection, pipeline, 2, hold=60)
    acks, (first, second) = consumer.acks, consumer.deliveries
    acks.done(second)  # a flush starts: nothing to ack yet, the second held for the first
    # The first finishes right after that flush ends, a turn of the loop before the flush is
    # let go (its done callback comes next): it must start a flush of its own.
    asyncio.get_running_loop().call_soon(acks.done, first)
    await eventually(lambda: _acked(acks, 2), within=10, what="the run of two, long before HOLD")
    assert acks.frames == 1
    await channel.close()
    assert await left_on_queue(amqp_connection, pipeline, 0) == []


async def test_a_run_never_acks_a_task_given_back(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    channel, consumer = await consume(amqp_connection, pipeline, 3)
    acks, (a, b, c) = consumer.acks, consumer.deliveries
    nacked = asyncio.create_task(acks.nack(b))
    acks.done(a)
    acks.done(c)
    await nacked
    # The run stops at the task being given back until its nack is sent, then passes it.
    await eventually(lambda: _acked(acks, 2), what="the acks")
    # The broker delivered it again, to this consumer: it is open, and returns on close.
    await eventually(lambda: _count(consumer, 4), what="the redelivery")
    assert consumer.deliveries[3].message.body == b.message.body
    await channel.close()
    assert await left_on_queue(amqp_connection, pipeline, 1) == ["k1"]


async def test_close_acks_every_finished_task_and_leaves_the_open_ones(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    channel, consumer = await consume(amqp_connection, pipeline, 4, hold=60)
    acks, rest = consumer.acks, consumer.deliveries[1:]
    for delivery in rest:
        acks.done(delivery)
    await asyncio.sleep(0.05)
    assert acks.frames == 0
    await acks.close()
    assert (acks.tasks, acks.frames) == (3, 3)
    await channel.close()
    assert await left_on_queue(amqp_connection, pipeline, 1) == ["k0"]


async def test_tasks_on_a_lost_channel_are_left_to_the_broker(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    channel, consumer = await consume(amqp_connection, pipeline, 2)
    await channel.close()  # lost before the tasks finish
    for delivery in consumer.deliveries:
        consumer.acks.done(delivery)
    await consumer.acks.close()
    assert consumer.acks.tasks == 0
    assert await left_on_queue(amqp_connection, pipeline, 2) == ["k0", "k1"]


async def _acked(acks: Acks, n: int) -> bool:
    return acks.tasks >= n


async def _count(consumer: Consumer, n: int) -> bool:
    return len(consumer.deliveries) >= n
