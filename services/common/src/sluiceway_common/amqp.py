"""One robust AMQP connection per process, and channels that publish with confirms."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractQueue,
    AbstractRobustConnection,
)

from sluiceway_common.logs import error_text
from sluiceway_common.settings import mask

log = logging.getLogger(__name__)

# What a lost or closing broker connection raises. aio-pika raises ChannelInvalidStateError,
# a RuntimeError, at the mere look at the channel of a message delivered on a channel since
# lost (to ack it, say), so it belongs here with the AMQP errors.
BROKER_ERRORS = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


def _connection_name(role: str) -> str:
    """How the broker lists the connection: which sluiceway part, on which host and process."""
    return f"sluiceway-{role}@{socket.gethostname()}:{os.getpid()}"


async def connect(url: str, role: str) -> AbstractRobustConnection:
    """The process's one connection; it reconnects and restores its channels by itself, and
    says so in the log: a warning with the reason when the connection is lost, a line when it
    is back."""
    connection = await aio_pika.connect_robust(
        url, client_properties={"connection_name": _connection_name(role)}
    )
    where = mask(url)
    up = True  # said once when lost, not again for each attempt that fails meanwhile

    def lost(_: object, exc: BaseException | None) -> None:
        nonlocal up
        if exc is None or isinstance(exc, asyncio.CancelledError) or not up:
            return  # closed on purpose, or already said
        up = False
        log.warning(
            "lost the connection to RabbitMQ at %s (%s); reconnecting every %gs",
            where, error_text(exc), connection.reconnect_interval,
        )  # fmt: skip

    def back(_: object) -> None:
        nonlocal up
        up = True
        log.info("reconnected to RabbitMQ at %s", where)

    connection.close_callbacks.add(lost)
    connection.reconnect_callbacks.add(back)
    return connection


# How long a consumer's cancel may wait for the broker when the process stops.
STOP_CONSUMING_TIMEOUT = 5.0


async def stop_consuming(connection: AbstractConnection, queue: AbstractQueue, tag: str) -> None:
    """Cancel the consumer ``tag`` on ``queue``, so that no more deliveries come.

    With the broker connection lost, there is nothing to wait for (and aio-pika would wait
    for the connection to come back, however long that takes): the consumer went with the
    channel, the cancel keeps aio-pika from restoring it, and the deliveries not acknowledged
    return to the queue. So a process told to stop during an outage still stops.
    """
    limit = STOP_CONSUMING_TIMEOUT if connection.connected.is_set() else 0.0
    try:
        async with asyncio.timeout(limit):
            await queue.cancel(tag)
    except (*BROKER_ERRORS, TimeoutError) as exc:
        if not isinstance(exc, TimeoutError) or str(exc):
            reason = error_text(exc)
        else:
            reason = f"no answer within {limit:g}s" if limit else "no connection"
        log.warning(
            "stopping without the broker (%s): deliveries not acknowledged return to the queue",
            reason,
        )


async def connect_plain(url: str, role: str) -> AbstractConnection:
    """A connection that does not reconnect: for work whose acks must not outlive a channel."""
    return await aio_pika.connect(
        url, client_properties={"connection_name": _connection_name(role)}
    )


async def check_connected(connection: AbstractConnection) -> None:
    """A readiness check: raise unless ``connection`` is open (a robust connection that is
    reconnecting is not)."""
    if connection.is_closed or not connection.connected.is_set():
        raise ConnectionError("not connected to RabbitMQ")


async def publishing_channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel whose publishes wait for the broker's confirm, and fail when the broker
    returns a message it could not route (its queue deleted, say) instead of letting it be
    taken for delivered: aio-pika only logs such a return unless told to raise."""
    return await connection.channel(publisher_confirms=True, on_return_raises=True)
