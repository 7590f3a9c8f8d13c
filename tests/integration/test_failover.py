"""Several nodes in ``SLUICEWAY_AMQP_URL``: a connection goes to the first that answers and,
when its node goes, to the next; the channels come back with it. Two proxies to the one
broker stand in for two nodes of a cluster (``tests/faults/test_cluster.py`` has the real
cluster)."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import pytest

from sluiceway_common import amqp, topology
from sluiceway_operator.broker import DepthReader
from tests.conftest import ServiceUrls
from tests.integration.helpers import TcpProxy, eventually, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_aio_pika_still_makes_each_connection_where_failover_chooses_its_node() -> None:
    # FailoverConnection picks each attempt's node in this method of aio-pika's robust
    # connection; a release that renames it would silently turn failover off.
    assert hasattr(aio_pika.RobustConnection, "_RobustConnection__connect_transport")


async def test_the_first_node_that_answers_is_used(services: ServiceUrls) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    connection = await amqp.connect(f"{dead},{services.amqp}", "test")
    try:
        assert str(connection.url) == services.amqp
    finally:
        await connection.close()
    plain = await amqp.connect_plain(f"{dead},{services.amqp}", "test")
    await plain.close()
    with pytest.raises(ConnectionError, match=r"no node answered: amqp://guest:\*\*\*@"):
        await amqp.connect_plain(f"{dead},{dead}", "test")


async def test_a_lost_node_is_left_for_the_next_and_the_channels_come_back(
    services: ServiceUrls, pipeline: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sluiceway_common.amqp")
    first, second = await TcpProxy(services.amqp).start(), await TcpProxy(services.amqp).start()
    queues = topology.Queues(pipeline)
    connection = await amqp.connect(f"{first.url},{second.url}", "test")
    try:
        channel = await amqp.publishing_channel(connection)
        (fetch, *_) = await topology.declare(channel, queues, queues.fetch)
        await first.cut()  # the node gone, not coming back

        async def on_the_second() -> bool:
            return connection.connected.is_set() and connection.url.port == second.port

        await eventually(on_the_second, within=30, what="the connection on the second node")
        await channel.default_exchange.publish(topology.persistent(b'"k"'), queues.fetch)
        assert (await fetch.declare()).message_count == 1  # the restored channel works
        ours = [r for r in caplog.records if r.name == "sluiceway_common.amqp"]
        said = [r.getMessage() for r in ours if "RabbitMQ at" in r.getMessage()]
        assert said[0].startswith(f"lost the connection to RabbitMQ at amqp://guest:***@"
                                  f"127.0.0.1:{first.port}/")  # fmt: skip
        assert said[0].endswith("to the first of its 2 nodes that answers")
        assert said[-1] == f"reconnected to RabbitMQ at amqp://guest:***@127.0.0.1:{second.port}/"
        await channel.queue_delete(queues.fetch)
    finally:
        await connection.close()
        await asyncio.gather(first.close(), second.close())


async def test_a_node_that_stops_answering_is_lost_said_and_left_for_the_next(
    services: ServiceUrls, pipeline: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A paused or cut-off node keeps its sockets open and sends nothing: the heartbeats (1 s
    # here) find it, in (1 + 1) x 3 s; it is said as lost like a node that went away.
    caplog.set_level(logging.INFO, logger="sluiceway_common.amqp")
    first, second = await TcpProxy(services.amqp).start(), await TcpProxy(services.amqp).start()
    connection = await amqp.connect(f"{first.url}?heartbeat=1,{second.url}", "test")
    try:
        first.hold("client")
        first.hold("service")

        async def on_the_second() -> bool:
            return connection.connected.is_set() and connection.url.port == second.port

        await eventually(on_the_second, within=40, what="the connection on the second node")
        ours = [r for r in caplog.records if r.name == "sluiceway_common.amqp"]
        said = [r.getMessage() for r in ours if "RabbitMQ at" in r.getMessage()]
        assert len(said) == 2, said
        lost = f"amqp://guest:***@127.0.0.1:{first.port}/?heartbeat=1 ({amqp.STUCK});"
        assert said[0].startswith(f"lost the connection to RabbitMQ at {lost}")
        assert said[1] == f"reconnected to RabbitMQ at amqp://guest:***@127.0.0.1:{second.port}/"
        channel = await connection.channel()
        await channel.close()
    finally:
        await connection.close()
        await asyncio.gather(first.close(), second.close())


async def test_the_operator_reads_depths_from_any_node_that_answers(
    services: ServiceUrls, pipeline: str
) -> None:
    queues = topology.Queues(pipeline)
    connection = await aio_pika.connect(services.amqp)
    try:
        channel = await connection.channel()
        await topology.declare(channel, queues, queues.records)
        for _ in range(3):
            await channel.default_exchange.publish(topology.persistent(b"{}"), queues.records)
        dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        # No management URL: each node's own (port 15672 of each host); the dead one's first.
        nodes = f"{dead},{services.amqp}"
        explicit = f"http://guest:guest@127.0.0.1:{free_port()},{services.management_api()}"
        for reader in (DepthReader(nodes), DepthReader(nodes, explicit)):
            try:

                async def counted(reader: DepthReader = reader) -> bool:
                    depth = await reader.read(queues.records)
                    return (depth.messages, depth.source) == (3, "management-api")

                await eventually(counted, within=20, what="3 messages by the management API")
            finally:
                await reader.close()
        await channel.queue_delete(queues.records)
    finally:
        await connection.close()
