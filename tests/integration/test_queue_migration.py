"""``sluiceway queues check|migrate`` on the real broker: a pipeline whose queues an earlier
version declared (classic delay queues; fetch and dead queues without a delivery limit) is
brought to this version's arguments with every message kept, properties and all; services
meeting the old queues stop saying what to run; a migration stopped half way finishes when
run again; a queue with consumers is not touched."""

from __future__ import annotations

from functools import partial
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from sluiceway_admin import queues as migration
from sluiceway_common import codec, topology
from sluiceway_common.lifecycle import StartupError
from tests.conftest import ServiceUrls
from tests.integration.helpers import depth, depth_is, drain, eventually
from tests.integration.test_admin import sluiceway

pytestmark = pytest.mark.integration


def earlier_arguments(queues: topology.Queues, name: str) -> dict[str, Any]:
    """What earlier builds declared, before the delay queues became quorum queues and every
    queue got an explicit delivery limit."""
    for seconds in topology.RETRY_DELAYS:
        if name == queues.retry(seconds):
            return {"x-queue-type": "classic", "x-message-ttl": seconds * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queues.fetch}  # fmt: skip
    if name == queues.records:
        return {"x-queue-type": "quorum", "x-delivery-limit": topology.RECORD_DELIVERY_LIMIT,
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queues.dead}  # fmt: skip
    return {"x-queue-type": "quorum"}


# The messages each queue holds before the migration: (body, headers), on the queues an
# earlier version declared. The 256 s delay queue's tasks cannot expire during the test.
def earlier_messages(queues: topology.Queues) -> dict[str, list[tuple[bytes, dict[str, Any]]]]:
    retry = {codec.RETRY_HEADER: 3}
    return {
        queues.fetch: [(codec.encode_task(f"k{i}"), {}) for i in range(1200)],
        queues.retry(256): [(codec.encode_task(f"r{i}"), retry) for i in range(40)],
        queues.records: [(b'{"key": "rec%d"}' % i, {}) for i in range(30)],
        queues.dead: [(b'{"key": "d%d"}' % i, {"x-sluiceway-reason": f"b{i}"}) for i in range(5)],
    }


async def declare_earlier(connection: AbstractConnection, queues: topology.Queues) -> None:
    channel = await connection.channel(publisher_confirms=True)
    try:
        for name in queues.owned():
            await channel.declare_queue(
                name, durable=True, arguments=earlier_arguments(queues, name)
            )
        for name, messages in earlier_messages(queues).items():
            for body, headers in messages:
                message = topology.persistent(body, headers=headers)
                await channel.default_exchange.publish(message, routing_key=name)
    finally:
        await channel.close()


async def test_services_meeting_an_earlier_version_s_queues_stop_saying_what_to_run(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    queues = topology.Queues(pipeline)
    await declare_earlier(amqp_connection, queues)
    for names in [(), queues.retries()]:  # what fetchers, writers and enqueue declare
        channel = await amqp_connection.channel()
        with pytest.raises(topology.DeclaredOtherwise) as raised:
            await topology.declare(channel, queues, *names)
        assert isinstance(raised.value, StartupError)  # one line, exit 1, from any command
        said = str(raised.value)
        assert "exists with other arguments" in said
        assert "inequivalent arg" in said  # the broker's own words on what differs
        assert "sluiceway queues migrate" in said
    assert await depth(amqp_connection, queues.fetch) == 1200  # nothing touched


async def test_migrate_brings_every_queue_to_this_version_keeping_every_message(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    await declare_earlier(amqp_connection, queues)
    before = sluiceway(services, database_url, pipeline, "queues", "check")
    assert before.returncode == migration.DIFFERS, before.stderr
    differ = len(queues.owned()) - 1  # all but the records queue, declared as it was
    assert f"{differ} of {len(queues.owned())} queues" in before.stderr
    assert f"{queues.records}: as this version declares it; 30 messages" in before.stdout
    assert f"{queues.fetch}: declared otherwise: to migrate; 1,200 messages" in before.stdout

    ran = sluiceway(services, database_url, pipeline, "queues", "migrate")
    assert ran.returncode == 0, ran.stderr
    assert f"{queues.fetch}: migrated, 1,200 messages kept" in ran.stdout
    assert f"{queues.retry(256)}: migrated, 40 messages kept" in ran.stdout
    assert f"{queues.retry(1)}: migrated, 0 messages kept" in ran.stdout
    assert f"{queues.records}:" not in ran.stdout
    assert f"migrated {differ} queues" in ran.stderr

    after = sluiceway(services, database_url, pipeline, "queues", "check")
    assert after.returncode == 0, after.stdout + after.stderr
    assert f"0 of {len(queues.owned())} queues" in after.stderr
    channel = await amqp_connection.channel()
    await topology.declare(channel, queues, *queues.owned())  # what every service declares
    await channel.close()
    for name, messages in earlier_messages(queues).items():
        got = await drain(amqp_connection, name)
        assert sorted(m.body for m in got) == sorted(body for body, _ in messages), name
        by_body = {m.body: m for m in got}
        for body, headers in messages:
            message = by_body[body]
            assert message.content_type == "application/json"
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert {k: v for k, v in (message.headers or {}).items()
                    if k != "x-delivery-count"} == headers  # fmt: skip
    for name in queues.owned():  # no holding queue left
        holding = queues.holding(name)
        channel = await amqp_connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(holding, passive=True)
    again = sluiceway(services, database_url, pipeline, "queues", "migrate")
    assert again.returncode == 0, again.stderr
    assert "migrated 0 queues" in again.stderr


async def test_migrate_finishes_a_migration_stopped_after_the_old_queue_was_deleted(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
) -> None:
    # A migration killed between deleting the old fetch queue and moving its messages back:
    # they are all in the holding queue, and the fetch queue does not exist.
    queues = topology.Queues(pipeline)
    holding = queues.holding(queues.fetch)
    channel = await amqp_connection.channel(publisher_confirms=True)
    await channel.declare_queue(holding, durable=True, arguments=migration.HOLDING_ARGUMENTS)
    for i in range(700):
        await channel.default_exchange.publish(
            topology.persistent(codec.encode_task(f"h{i}")), routing_key=holding
        )
    await channel.close()
    check = sluiceway(services, database_url, pipeline, "queues", "check")
    assert check.returncode == migration.DIFFERS
    assert f"{queues.fetch}: absent" in check.stdout
    assert f"700 held in {holding}" in check.stdout

    ran = sluiceway(services, database_url, pipeline, "queues", "migrate")
    assert ran.returncode == 0, ran.stderr
    assert f"{queues.fetch}: migrated, 700 messages kept" in ran.stdout
    keys = sorted(codec.decode_task(m.body) for m in await drain(amqp_connection, queues.fetch))
    assert keys == sorted(f"h{i}" for i in range(700))


async def test_migrate_touches_nothing_while_a_consumer_is_on_a_queue_to_migrate(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    await declare_earlier(amqp_connection, queues)
    channel = await amqp_connection.channel()
    await channel.set_qos(prefetch_count=1)
    fetch = await channel.get_queue(queues.fetch)
    held: list[AbstractIncomingMessage] = []

    async def hold(message: AbstractIncomingMessage) -> None:  # a fetcher of the earlier version
        held.append(message)

    tag = await fetch.consume(hold)
    ran = sluiceway(services, database_url, pipeline, "queues", "migrate")
    assert ran.returncode == 1
    assert f"{queues.fetch} has 1" in ran.stderr
    assert "stop the pipeline's fetchers" in ran.stderr
    await fetch.cancel(tag)
    await channel.close()  # what it held goes back, as the queue gets to it
    await eventually(partial(depth_is, amqp_connection, queues.fetch, 1200),
                     what="the held message back on the fetch queue")  # fmt: skip
    check = sluiceway(services, database_url, pipeline, "queues", "check")
    assert check.returncode == migration.DIFFERS  # every queue still the earlier version's
    assert f"{len(queues.owned()) - 1} of {len(queues.owned())} queues" in check.stderr
