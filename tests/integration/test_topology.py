"""The pipeline's queues on the real broker: how they are declared, and the records queue's
delivery limit.

How a quorum queue counts (RabbitMQ 3.10 "Quorum Queues" guide, *Poison Message Handling*):
it counts the *returns* of a message, "the number of unsuccessful delivery attempts", shown
in the ``x-delivery-count`` header of a redelivery, and "when a message has been returned
more times than the limit" it is dead-lettered. A return is the consumer's channel or
connection closing while holding the message unacknowledged, or a ``basic.nack``/``reject``
with ``requeue``. With a limit L a message is therefore delivered L + 1 times: the (L + 1)th
return is the one past the limit. RabbitMQ 4.3 stopped counting deliberate ``nack`` returns
towards the limit (only failures, such as a lost channel, count), so the ``nack`` test holds
for earlier brokers only.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from functools import partial

import aio_pika
import aiormq.exceptions
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from sluiceway_common import topology
from tests.conftest import ServiceUrls
from tests.integration.helpers import depth, depth_is, drain, eventually, publish, record

pytestmark = pytest.mark.integration

LIMIT = topology.RECORD_DELIVERY_LIMIT
_AT = datetime(2026, 11, 29, 18, 33, tzinfo=UTC)


async def test_declaring_twice_is_idempotent_and_keeps_the_messages(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    queues = topology.Queues(pipeline)
    for _ in range(2):
        channel = await amqp_connection.channel()
        declared = await topology.declare(channel, queues)
        assert [q.name for q in declared] == list(queues.all())
        await channel.close()
    await publish(amqp_connection, pipeline, queues.records, [b'{"not": "checked here"}'])
    for name in queues.all():  # each queue on its own, once more, and again through all()
        channel = await amqp_connection.channel()
        await topology.declare(channel, queues, name)
        await channel.close()
    assert await depth(amqp_connection, queues.records) == 1  # not recreated
    for name in queues.all():
        assert await depth(amqp_connection, name) == (1 if name == queues.records else 0)


@pytest.mark.parametrize(
    ("durable", "queue_type", "refused"),
    [
        (True, "classic", "inequivalent arg 'x-queue-type'.*current is 'quorum'"),
        (False, "quorum", "inequivalent arg 'durable'.*current is 'true'"),
    ],
)
async def test_every_queue_is_a_durable_quorum_queue(
    pipeline: str,
    amqp_connection: AbstractConnection,
    durable: bool,
    queue_type: str,
    refused: str,
) -> None:
    # Without the management API, the broker says what a queue is by refusing a declare that
    # differs in one respect, naming the value the queue holds.
    queues = topology.Queues(pipeline)
    channel = await amqp_connection.channel()
    await topology.declare(channel, queues, *queues.owned())
    await channel.close()
    for name in queues.owned():  # the delay queues too: a node lost keeps no task away
        arguments = queues.arguments(name) | {"x-queue-type": queue_type}
        channel = await amqp_connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as raised:
            await channel.declare_queue(name, durable=durable, arguments=arguments)
        assert re.search(refused, str(raised.value)), str(raised.value)
        assert name in str(raised.value)
        assert await depth(amqp_connection, name) == 0  # a passive declare still works


async def test_the_records_queue_holds_the_delivery_limit_and_dead_letters_to_the_dead_queue(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    queues = topology.Queues(pipeline)
    channel = await amqp_connection.channel()
    await topology.declare(channel, queues)
    await channel.close()
    base = queues.arguments(queues.records)
    for name, value, current in [
        ("x-delivery-limit", LIMIT + 1, f"current is '{LIMIT}'"),
        ("x-dead-letter-routing-key", "elsewhere", f"current is '{queues.dead}'"),
    ]:
        channel = await amqp_connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as raised:
            await channel.declare_queue(
                queues.records, durable=True, arguments=base | {name: value}
            )
        assert f"inequivalent arg '{name}'" in str(raised.value)
        assert current in str(raised.value)


async def test_every_other_queue_states_a_delivery_limit_never_reached(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    # Declared without one, a quorum queue gets RabbitMQ 4's default limit of 20, and a
    # dead letter listed 20 times or a task whose fetchers died 20 times would be dropped.
    queues = topology.Queues(pipeline)
    channel = await amqp_connection.channel()
    await topology.declare(channel, queues, *queues.owned())
    await channel.close()
    for name in (queues.fetch, queues.dead, *queues.retries()):
        channel = await amqp_connection.channel()
        without = {k: v for k, v in queues.arguments(name).items() if k != "x-delivery-limit"}
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as raised:
            await channel.declare_queue(name, durable=True, arguments=without)
        assert "inequivalent arg 'x-delivery-limit'" in str(raised.value)
        assert f"current is the value '{topology.NO_DELIVERY_LIMIT}'" in str(raised.value), name


async def test_a_task_on_a_delay_queue_goes_back_to_the_fetch_queue_as_it_was(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    queues = topology.Queues(pipeline)
    channel = await amqp_connection.channel(publisher_confirms=True)
    await topology.declare(channel, queues, *queues.owned())
    # As the fetcher queues a retry: it expires after 1 s into the fetch queue, headers kept.
    await channel.default_exchange.publish(
        topology.persistent(b'{"key": "later"}', headers={"x-sluiceway-attempt": 2}),
        routing_key=queues.retry(1),
    )
    await channel.close()
    await eventually(partial(depth_is, amqp_connection, queues.fetch, 1), within=30,
                     what="the task back on the fetch queue")  # fmt: skip
    [task] = await drain(amqp_connection, queues.fetch)
    assert task.body == b'{"key": "later"}'
    headers = task.headers or {}
    assert headers["x-sluiceway-attempt"] == 2
    assert headers["x-first-death-reason"] == "expired"
    assert headers["x-first-death-queue"] == queues.retry(1)
    assert await depth(amqp_connection, queues.retry(1)) == 0


async def test_a_record_whose_consumer_keeps_dying_is_dead_lettered_after_the_limit(
    services: ServiceUrls, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    queues = topology.Queues(pipeline)
    body = record("poison", b'{"n": 1}', _AT)
    await publish(amqp_connection, pipeline, queues.records, [body])
    counts = []
    # Bounded well past the limit so that a queue that loops forever fails here, not hangs.
    for attempt in range(LIMIT + 5):
        where = await _settled(amqp_connection, queues)
        if where == queues.dead:
            break
        # Both ways a consumer dies: its process (the connection goes), or its channel.
        dying = "connection" if attempt % 2 == 0 else "channel"
        message = await _consume_and_crash(services.amqp, amqp_connection, queues.records, dying)
        assert message.body == body
        counts.append(_delivery_count(message))
    else:
        raise AssertionError(f"still on the records queue after {len(counts)} deliveries")

    assert len(counts) <= LIMIT + 1
    # Precisely: the first delivery and LIMIT redeliveries, each numbered by the broker.
    assert counts == list(range(LIMIT + 1))
    assert await depth(amqp_connection, queues.records) == 0
    [dead] = await drain(amqp_connection, queues.dead)
    assert dead.body == body
    headers = dead.headers or {}
    assert "x-sluiceway-reason" not in headers  # the broker's doing, not the writer's
    deaths = headers["x-death"]
    assert isinstance(deaths, list)
    [death] = deaths
    assert isinstance(death, dict)
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == queues.records


async def test_nack_with_requeue_counts_towards_the_limit_the_same_way(
    pipeline: str, amqp_connection: AbstractConnection
) -> None:
    version = _server_version(amqp_connection)
    if version >= (4, 3):
        pytest.skip(f"RabbitMQ {version}: explicit nack returns no longer count (4.3+)")
    queues = topology.Queues(pipeline)
    body = record("nacked", b'{"n": 2}', _AT)
    await publish(amqp_connection, pipeline, queues.records, [body])
    channel = await amqp_connection.channel()
    records = await channel.get_queue(queues.records)
    counts = []
    for _ in range(LIMIT + 5):
        if await _settled(amqp_connection, queues) == queues.dead:
            break
        message = await records.get(no_ack=False)
        counts.append(_delivery_count(message))
        await message.nack(requeue=True)
    else:
        raise AssertionError(f"still on the records queue after {len(counts)} deliveries")
    await channel.close()
    assert counts == list(range(LIMIT + 1))
    [dead] = await drain(amqp_connection, queues.dead)
    assert dead.body == body
    assert (dead.headers or {})["x-first-death-reason"] == "delivery_limit"


# --- helpers -------------------------------------------------------------------------------


async def _settled(connection: AbstractConnection, queues: topology.Queues) -> str:
    """Where the one message is once the broker has dealt with its last return: a return
    is asynchronous, so a look straight after a crash may find it on neither queue."""
    found: list[str] = []

    async def one_ready() -> bool:
        found[:] = [
            name
            for name in (queues.records, queues.dead)
            for _ in range(await depth(connection, name))
        ]
        return len(found) == 1

    await eventually(one_ready, what="the message ready on exactly one queue")
    return found[0]


async def _consume_and_crash(
    url: str, shared: AbstractConnection, queue: str, dying: str
) -> AbstractIncomingMessage:
    """Deliver one message to a consumer that then dies holding it, unacknowledged: its
    connection of its own closes (``dying="connection"``) or just its channel."""
    connection = await aio_pika.connect(url) if dying == "connection" else shared
    channel = await connection.channel()
    try:
        await channel.set_qos(prefetch_count=1)
        source = await channel.get_queue(queue)
        delivered: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await source.consume(delivered.put)
        return await asyncio.wait_for(delivered.get(), timeout=20)
    finally:
        await channel.close()
        if connection is not shared:
            await connection.close()


def _delivery_count(message: AbstractIncomingMessage) -> int:
    # Absent or 0 on the first delivery, then the number of returns so far.
    count = (message.headers or {}).get("x-delivery-count", 0)
    assert isinstance(count, int)
    return count


def _server_version(connection: AbstractConnection) -> tuple[int, ...]:
    assert connection.transport is not None
    properties = connection.transport.connection.server_properties
    raw = properties.get("version", "0")
    text = raw.decode() if isinstance(raw, bytes | bytearray) else str(raw)
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])
