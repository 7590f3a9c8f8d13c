"""ConfirmedPublisher against the real broker: what arrives, what fails, and when it waits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq.exceptions
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection

from sluiceway_common import amqp, topology
from sluiceway_common.publisher import ConfirmedPublisher
from tests.conftest import ServiceUrls
from tests.integration.helpers import (
    TcpProxy,
    depth,
    depth_is,
    drain,
    ending_between_frames,
    eventually,
    through_proxy,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def queue(amqp_connection: AbstractConnection) -> AsyncIterator[str]:
    name = f"t-publisher-{uuid.uuid4().hex[:12]}"
    channel = await amqp_connection.channel()
    await channel.declare_queue(name, durable=True)
    yield name
    await channel.queue_delete(name)
    await channel.close()


@pytest.fixture
async def channel(amqp_connection: AbstractConnection) -> AsyncIterator[AbstractChannel]:
    channel = await amqp.publishing_channel(amqp_connection)
    yield channel
    if not channel.is_closed:
        await channel.close()


@pytest.fixture
async def proxied(services: ServiceUrls) -> AsyncIterator[tuple[TcpProxy, AbstractChannel]]:
    async with through_proxy(services.amqp) as pair:
        yield pair


async def test_every_message_arrives_in_order_with_its_properties(
    amqp_connection: AbstractConnection, channel: AbstractChannel, queue: str
) -> None:
    publisher = ConfirmedPublisher(channel, queue, batch=64)
    bodies = [f"message {i}".encode() * (i % 7) for i in range(1000)]  # some empty
    for body in bodies:
        await publisher.publish(body)
    big = bytes(range(256)) * 2000  # 512 KB: several body frames
    own = topology.persistent(b"", headers={"x-test": "yes"}, content_encoding="zstd")
    await publisher.publish(big, own.properties)
    await publisher.drain()
    assert publisher.confirmed == 1001
    arrived = await drain(amqp_connection, queue)
    assert [m.body for m in arrived] == [*bodies, big]
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in arrived)
    assert {m.content_type for m in arrived} == {"application/json"}
    assert arrived[-1].headers == {"x-test": "yes"}
    assert arrived[-1].content_encoding == "zstd"
    assert arrived[0].content_encoding is None
    assert len({m.message_id for m in arrived}) == 1001


async def test_a_message_the_broker_cannot_route_fails_the_publisher(
    amqp_connection: AbstractConnection, queue: str
) -> None:
    # Also on a channel that does not raise returns by itself: the publisher looks at them.
    for channel in (
        await amqp.publishing_channel(amqp_connection),
        await amqp_connection.channel(publisher_confirms=True),
    ):
        publisher = ConfirmedPublisher(channel, queue, batch=10)
        for i in range(25):
            await publisher.publish(b"%d" % i)
        await publisher.drain()
        assert publisher.confirmed == 25
        await channel.queue_delete(queue)
        await publisher.publish(b"unroutable")
        with pytest.raises(aiormq.exceptions.PublishError):
            await publisher.drain()
        assert publisher.confirmed == 25
        with pytest.raises(aiormq.exceptions.PublishError):
            await publisher.publish(b"after the failure")
        await channel.declare_queue(queue, durable=True)
        await channel.close()


async def test_confirmed_counts_only_the_unbroken_run_before_a_nack(
    amqp_connection: AbstractConnection, channel: AbstractChannel
) -> None:
    name = f"t-publisher-{uuid.uuid4().hex[:12]}"
    # A full queue that rejects publishes: the broker nacks every message past the tenth.
    await channel.declare_queue(
        name, arguments={"x-max-length": 10, "x-overflow": "reject-publish"}
    )
    try:
        publisher = ConfirmedPublisher(channel, name, batch=8)
        for i in range(30):
            await publisher.publish(b"%d" % i)
        with pytest.raises(aiormq.exceptions.DeliveryError):
            await publisher.drain()
        assert publisher.confirmed == 10
        assert await depth(amqp_connection, name) == 10
    finally:
        await channel.queue_delete(name)


async def test_publishing_waits_while_the_window_is_full(
    amqp_connection: AbstractConnection,
    queue: str,
    proxied: tuple[TcpProxy, AbstractChannel],
) -> None:
    proxy, channel = proxied
    publisher = ConfirmedPublisher(channel, queue, window=100, batch=10)
    proxy.hold("client")  # the broker's confirms are kept back
    sent = 0

    async def publish_all() -> None:
        nonlocal sent
        for i in range(300):
            await publisher.publish(b"%d" % i)
            sent += 1
        await publisher.drain()

    task = asyncio.create_task(publish_all())
    await eventually(lambda: depth_is(amqp_connection, queue, 100), what="a window sent")
    await asyncio.sleep(0.3)
    assert not task.done()
    assert sent <= 110  # a window, and one batch queued for the next
    assert publisher.confirmed == 0
    proxy.release()
    await asyncio.wait_for(task, 30)
    assert publisher.confirmed == 300
    assert await depth(amqp_connection, queue) == 300


async def test_a_lost_connection_fails_the_publisher_and_keeps_the_confirmed_prefix(
    amqp_connection: AbstractConnection,
    queue: str,
    proxied: tuple[TcpProxy, AbstractChannel],
) -> None:
    proxy, channel = proxied
    publisher = ConfirmedPublisher(channel, queue, batch=50)
    bodies = [b"%06d" % i for i in range(200_000)]

    async def publish_all() -> None:
        for i, body in enumerate(bodies):
            await publisher.publish(body)
            if i == 5000:
                await proxy.cut()
        await publisher.drain()

    with pytest.raises(amqp.BROKER_ERRORS):
        await publish_all()
    confirmed = publisher.confirmed
    arrived = [m.body for m in await drain(amqp_connection, queue)]
    assert 0 < confirmed <= len(arrived) < len(bodies)
    # Every confirmed message is there, in order: a rerun from `confirmed` loses nothing.
    assert arrived[:confirmed] == bodies[:confirmed]


async def test_a_connection_ended_between_two_frames_fails_the_publisher_with_a_broker_error(
    amqp_connection: AbstractConnection, queue: str, proxied: tuple[TcpProxy, AbstractChannel]
) -> None:
    proxy, channel = proxied
    async with ending_between_frames(proxy, channel, amqp_connection):
        publisher = ConfirmedPublisher(channel, queue, batch=10)
        for i in range(100):
            await publisher.publish(b"%d" % i)
        await publisher.flush()
        proxy.end()
        with pytest.raises(amqp.BROKER_ERRORS, match="without a close from the broker"):
            await asyncio.wait_for(publisher.drain(), 30)
        assert publisher.confirmed == 0
