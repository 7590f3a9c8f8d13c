"""One robust AMQP connection per process, and channels that publish with confirms.

``SLUICEWAY_AMQP_URL`` may name several nodes of a RabbitMQ cluster, comma-separated: a
process connects to the first that answers and, when the node it is on goes, to the next
one that does (:class:`FailoverConnection`). aio-pika's robust connection reconnects to the
one URL it was given only, which stalls a whole pipeline on a node that is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import aio_pika
import aio_pika.exceptions
import aiormq
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractQueue,
)
from yarl import URL

from sluiceway_common.logs import error_text
from sluiceway_common.settings import mask, split_urls

log = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U", str, URL)

# What a lost or closing broker connection raises. aio-pika raises ChannelInvalidStateError,
# a RuntimeError, at the mere look at the channel of a message delivered on a channel since
# lost (to ack it, say), so it belongs here with the AMQP errors.
BROKER_ERRORS = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


def broker_error(exc: BaseException) -> BaseException:
    """``exc``, unless it is aiormq's reasonless end of a connection: then a broker error.

    aiormq fails a connection's pending futures with the bare ``Exception`` class when its
    socket ends between two frames (its reader stops as at a close, with no reason to pass
    on); the same end in mid-frame is an AMQPConnectionError. BROKER_ERRORS cannot name the
    first without naming every error, so code holding aiormq's futures passes what they
    raise through here (or await them with :func:`broker_result`).
    """
    if type(exc) is Exception and not exc.args:
        return aiormq.exceptions.AMQPConnectionError(
            "the connection ended between two frames, without a close from the broker"
        )
    return exc


async def broker_result(awaitable: Awaitable[T]) -> T:
    """What ``awaitable`` (a publish's confirm, a frame's drain) gives; aiormq's reasonless
    end of the connection raised as a broker error (see :func:`broker_error`)."""
    try:
        return await awaitable
    except Exception as exc:
        error = broker_error(exc)
        if error is exc:
            raise
        raise error from None


# Why a connection was lost when its node stopped sending anything: aiormq gives up on it
# after three heartbeat intervals and one second each, (heartbeat + 1) x 3 seconds.
STUCK = "the node stopped answering: no frame within three heartbeat intervals"

# How long one node may take to accept a connection before the next is tried: a node that
# is paused or cut off accepts the TCP connection and then says nothing.
CONNECT_TIMEOUT = 10.0


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection to the first of several nodes that answers.

    Each (re)connection tries the nodes in turn, starting after the one whose connection was
    lost, so a node that is gone is tried last; channels and consumers are restored on the
    node reached, as aio-pika restores them on a reconnect.
    """

    def __init__(self, urls: list[str], **kwargs: object) -> None:
        super().__init__(url=URL(urls[0]), **kwargs)  # type: ignore[arg-type]
        self.urls = [URL(url) for url in urls]
        self._next = 0  # the node tried first at the next connection

    async def _on_connection_close(self, closing: asyncio.Future[object]) -> None:
        if not (self._close_called or self.is_closed) and len(self.urls) > 1:
            self._next = (self.urls.index(self.url) + 1) % len(self.urls)
        await super()._on_connection_close(closing)

    # aio-pika's robust connection makes each connection through this (name-mangled) method;
    # the one place where the URL of an attempt can be chosen. A test holds it to that.
    async def _RobustConnection__connect_transport(self) -> None:
        start = self._next  # an attempt that fails may move it (its close callback runs)
        connect = super()._RobustConnection__connect_transport  # type: ignore[misc]

        async def attempt(url: URL) -> None:
            self.url = url
            await connect()

        order = [self.urls[(start + step) % len(self.urls)] for step in range(len(self.urls))]
        reached, _ = await first_that_answers(order, attempt)
        self._next = self.urls.index(reached)


async def first_that_answers(
    nodes: Sequence[U], attempt: Callable[[U], Awaitable[T]]
) -> tuple[U, T]:
    """``attempt`` on each node in turn; the first that succeeds, and what it gave. With one
    node its failure is raised as it is; with several, a ConnectionError naming each node's."""
    failures: list[str] = []
    for node in nodes:
        try:
            return node, await attempt(node)
        except aio_pika.exceptions.CONNECTION_EXCEPTIONS as exc:
            if len(nodes) == 1:
                raise
            failures.append(f"{mask(str(node))}: {error_text(exc)}")
    raise ConnectionError("no node answered: " + "; ".join(failures))


def _connection_name(role: str) -> str:
    """How the broker lists the connection: which sluiceway part, on which host and process."""
    return f"sluiceway-{role}@{socket.gethostname()}:{os.getpid()}"


async def connect(url: str, role: str) -> FailoverConnection:
    """The process's one connection (to the first node of ``url`` that answers); it
    reconnects, to the next node that answers when its own is gone, and restores its channels
    by itself, and says so in the log: a warning with the reason when the connection is lost,
    a line, naming the node, when it is back."""
    connection = FailoverConnection(
        split_urls(url), client_properties={"connection_name": _connection_name(role)}
    )
    await connection.connect(timeout=CONNECT_TIMEOUT)
    up = True  # said once when lost, not again for each attempt that fails meanwhile

    def where() -> str:
        return mask(str(connection.url))

    def lost(_: object, exc: BaseException | None) -> None:
        nonlocal up
        if exc is None or connection.is_closed or not up:
            return  # closed on purpose, or already said
        # A bare CancelledError is either the process ending (its tasks cancelled, the
        # connection's reader with them) or aiormq giving up on a node that stopped
        # answering (paused, cut off), which it tells by the time since the last frame.
        underlay = connection.transport.connection if connection.transport else None
        stuck = isinstance(underlay, aiormq.Connection) and underlay.is_connection_was_stuck
        if isinstance(exc, asyncio.CancelledError) and not str(exc) and not stuck:
            return
        up = False
        others = len(connection.urls) - 1
        log.warning(
            "lost the connection to RabbitMQ at %s (%s); reconnecting every %gs%s",
            where(), STUCK if stuck else error_text(exc), connection.reconnect_interval,
            f", to the first of its {others + 1} nodes that answers" if others else "",
        )  # fmt: skip

    def back(_: object) -> None:
        nonlocal up
        up = True
        log.info("reconnected to RabbitMQ at %s", where())

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
    """A connection that does not reconnect, to the first node of ``url`` that answers: for
    work whose acks must not outlive a channel, and runs that stop when their broker goes."""

    async def attempt(node: str) -> AbstractConnection:
        return await aio_pika.connect(
            node, client_properties={"connection_name": _connection_name(role)},
            timeout=CONNECT_TIMEOUT,
        )  # fmt: skip

    _, connection = await first_that_answers(split_urls(url), attempt)
    return connection


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
