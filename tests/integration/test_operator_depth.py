"""The operator's reading of the records queue's depth, on the real RabbitMQ: ready and
unacked from the management API, ready only from the passive-declare fallback, and a clear
error (password masked) when neither answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp.web
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from sluiceway_common import topology
from sluiceway_operator.broker import BrokerUnreachable, DepthReader
from tests.conftest import ServiceUrls
from tests.integration.helpers import eventually, free_port, publish

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


@pytest.fixture
async def unsampled_api() -> AsyncIterator[str]:
    """A management API that answers every queue as RabbitMQ does before its first statistics
    sample (a queue just declared, a broker just back): no ``messages`` fields at all."""

    async def queue(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({
            "name": request.match_info["name"], "vhost": "/", "type": "quorum",
            "state": "running", "consumers": 0, "arguments": {}})  # fmt: skip

    app = aiohttp.web.Application()
    app.router.add_get("/api/queues/{vhost}/{name}", queue)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://guest:guest@127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_queue_without_counts_yet_is_no_reading_not_an_empty_queue(
    services: ServiceUrls, amqp_connection: AbstractConnection, pipeline: str,
    unsampled_api: str,
) -> None:  # fmt: skip
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.records, [b"{}"] * 40)
    reader = DepthReader(services.amqp, unsampled_api)
    try:
        # The backlog, from AMQP, instead of a depth of 0 that would scale the writers away.
        depth = await reader.read(queues.records)
        assert (depth.messages, depth.source) == (40, "passive-declare")
    finally:
        await reader.close()
    # Nor AMQP: no reading at all, and the writers stay as they are.
    blind = DepthReader("amqp://guest:guest@127.0.0.1:1/", unsampled_api)
    try:
        with pytest.raises(BrokerUnreachable) as caught:
            await blind.read(queues.records)
        assert "no message counts yet" in str(caught.value)
    finally:
        await blind.close()


async def test_the_fetchers_backlog_sums_the_fetch_and_delay_queues_from_one_source(
    services: ServiceUrls, amqp_connection: AbstractConnection, pipeline: str
) -> None:
    queues = topology.Queues(pipeline)
    backlog = (queues.fetch, *queues.retries())
    await publish(amqp_connection, pipeline, queues.fetch, [b"{}"] * 30)
    # Tasks waiting out a retry delay are work still to fetch (the fetchers declare the
    # delay queues; the others are not there: nothing, not an error).
    channel = await amqp_connection.channel()
    await topology.declare(channel, queues, queues.retry(256))
    await channel.close()
    await publish(amqp_connection, pipeline, queues.retry(256), [b"{}"] * 7)
    reader = DepthReader(services.amqp, services.management_api())
    fallback = DepthReader(services.amqp, "http://127.0.0.1:1")
    try:

        async def summed() -> bool:
            depth = await reader.read_total(backlog)
            return (depth.messages, depth.source) == (37, "management-api")

        await eventually(summed, within=30, what="37 across the fetch and delay queues")
        depth = await fallback.read_total(backlog)
        assert (depth.messages, depth.source) == (37, "passive-declare")
    finally:
        await reader.close()
        await fallback.close()


async def test_one_queue_without_counts_makes_the_sum_no_reading(
    services: ServiceUrls, amqp_connection: AbstractConnection, pipeline: str,
    unsampled_api: str,
) -> None:  # fmt: skip
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.fetch, [b"{}"] * 12)
    # Not 0 from the management API: every queue again by AMQP.
    reader = DepthReader(services.amqp, unsampled_api)
    try:
        depth = await reader.read_total((queues.fetch, *queues.retries()))
        assert (depth.messages, depth.source) == (12, "passive-declare")
    finally:
        await reader.close()
