"""``sluiceway queues check|migrate``: a pipeline's queues against the declare arguments of
this version (:meth:`sluiceway_common.topology.Queues.arguments`).

A queue's arguments are fixed when it is declared, so a queue an earlier version declared
otherwise (the classic delay queues before they became quorum queues, the queues declared
without an explicit delivery limit) is *migrated*: its messages are moved to a holding queue
(``Queues.holding``), the queue is deleted and declared anew, and the messages are moved
back. Each move publishes a copy with confirms and acks the original only once the copy is
confirmed, so a migration stopped anywhere loses nothing (a message may then exist twice,
which a fetch or an upsert absorbs), and running it again finishes it: a holding queue left
behind is emptied into its queue. A message back on a delay queue waits its whole delay
again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from pamqp import commands as spec

from sluiceway_admin.progress import Progress
from sluiceway_common import amqp, logs, settings, topology
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import reach
from sluiceway_common.publisher import ConfirmedPublisher

OPTIONS = (settings.AMQP_URL, settings.PIPELINE, settings.LOG_LEVEL)
# Only while it holds a queue's messages; no limit, so that nothing leaves it but the move.
HOLDING_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": topology.NO_DELIVERY_LIMIT,
}
CHUNK = 500  # messages moved between two confirms-then-ack
IDLE_SECONDS = 5.0  # a move: no delivery for this long means none is coming
# What a copy leaves out: the source queue's count of its returns.
QUEUE_HEADERS = {"x-delivery-count"}
# Exit status of `check` when a queue is to be migrated (as `migrate --stamp` differs).
DIFFERS = 3


async def move(
    source: AbstractQueue,
    publisher: ConfirmedPublisher,
    target: int,
    copy: Callable[[AbstractIncomingMessage], spec.Basic.Properties],
    show: Progress | None = None,
) -> int:
    """Move up to ``target`` messages of ``source`` through ``publisher`` (its channel's
    own, with confirms), each with the properties ``copy`` gives it and acked only once the
    broker confirmed every copy of its chunk; return how many. Fewer when none comes for
    ``IDLE_SECONDS``: counted but gone, another process took or purged them.

    If anything fails, what the channel holds unacked goes back to ``source`` when it
    closes; the copies already confirmed then exist twice.
    """
    if target == 0:
        return 0
    # A consumer, not basic.get: the one ack of a chunk then settles its messages in one
    # command to the queue. Acks of basic.get messages are one command each, and RabbitMQ
    # 3.10 holds back all past the 32nd until the queue has applied earlier ones; closing
    # the channel drops those held back, and their messages return to the source although
    # they were moved (measured: 667 of 700 came back; rabbitmq-server issue #10327).
    await source.channel.set_qos(prefetch_count=min(CHUNK, target))
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    tag = await source.consume(inbox.put)
    moved = 0
    try:
        while moved < target:
            held: list[AbstractIncomingMessage] = []
            with contextlib.suppress(TimeoutError):
                while len(held) < min(CHUNK, target - moved):
                    held.append(await asyncio.wait_for(inbox.get(), IDLE_SECONDS))
            if not held:
                break
            for message in held:
                await publisher.publish(message.body, copy(message))
            await publisher.drain()
            await held[-1].ack(multiple=True)
            moved += len(held)
            if show:
                show.update(moved)
    finally:
        await source.cancel(tag)
    # Whatever was delivered past the target goes back when the channel closes.
    return moved


def encodable(value: Any) -> Any:
    """A header value the client can publish again.

    A header string that is not UTF-8 is read back as ``bytes``, which the client cannot
    encode; it goes out as an AMQP byte array (the same octets).
    """
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, list):
        return [encodable(item) for item in value]
    if isinstance(value, dict):
        return {name: encodable(item) for name, item in value.items()}
    return value


def copy_of(message: AbstractIncomingMessage, keep: Callable[[str], bool]) -> spec.Basic.Properties:
    """The message's properties, with the headers ``keep`` says yes to. The message id is
    left out: it is the publisher's own, as for anything it publishes."""
    headers = message.headers or {}
    return aio_pika.Message(
        message.body,
        headers={name: encodable(value) for name, value in headers.items() if keep(name)},
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    ).properties


def copied(message: AbstractIncomingMessage) -> spec.Basic.Properties:
    """The message as it was, but for the header its queue adds."""
    return copy_of(message, keep=lambda name: name not in QUEUE_HEADERS)


@dataclass(frozen=True)
class Found:
    """One of the pipeline's queues as the broker has it (absent, as this version declares
    it, ``current``, or otherwise) and the holding queue an unfinished migration left."""

    queue: topology.QueueDepth
    current: bool
    holding: topology.QueueDepth

    @property
    def name(self) -> str:
        return self.queue.name

    @property
    def to_migrate(self) -> bool:
        return (self.queue.exists and not self.current) or self.holding.exists

    def line(self) -> str:
        queue, holding = self.queue, self.holding
        if not queue.exists:
            state = "absent (declared as this version does on first use)"
        elif self.current:
            state = "as this version declares it"
        else:
            state = "declared otherwise: to migrate"
        held = f"; {holding.ready:,} held in {holding.name}" if holding.exists else ""
        return f"{queue.name}: {state}; {queue.ready:,} messages, {queue.consumers} consumers{held}"


async def _is_current(connection: AbstractConnection, queues: topology.Queues, name: str) -> bool:
    """Whether the existing queue ``name`` holds this version's arguments: a declare with
    them is refused otherwise, naming the first that differs (the broker's one way to tell
    without its management API)."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, durable=True, arguments=queues.arguments(name))
        return True
    except aio_pika.exceptions.ChannelPreconditionFailed:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


async def inspect(connection: AbstractConnection, queues: topology.Queues) -> list[Found]:
    """Every queue of the pipeline as the broker has it; creates none."""
    found = []
    for name in queues.owned():
        queue, holding = await topology.queue_depths(connection, (name, queues.holding(name)))
        current = queue.exists and await _is_current(connection, queues, name)
        found.append(Found(queue, current, holding))
    return found


class Busy(Exception):
    """A queue to migrate has consumers: the services are still running."""


async def migrate(connection: AbstractConnection, queues: topology.Queues) -> list[str]:
    """Migrate every queue of the pipeline that needs it; return what was done, a line a
    queue. Raise :class:`Busy` before touching anything if one of them has consumers."""
    todo = [found for found in await inspect(connection, queues) if found.to_migrate]
    busy = [f"{f.name} has {f.queue.consumers}" for f in todo if f.queue.consumers]
    if busy:
        raise Busy(
            "consumers are still on queues to migrate (" + "; ".join(busy) + "): stop the "
            "pipeline's fetchers and writers (and its feeds) first"
        )
    return [await _migrate_one(connection, queues, found) for found in todo]


async def _move_all(connection: AbstractConnection, source: str, target: str) -> int:
    """Move every message of queue ``source`` to queue ``target``, on channels of their own
    (closing one hands back whatever it was delivered past its count); return how many."""
    moved = 0
    while (waiting := (await topology.queue_depths(connection, (source,)))[0].ready) > 0:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            queue = await channel.get_queue(source, ensure=False)
            show = Progress(f"{source} → {target}: moved", "messages")
            count = await move(queue, ConfirmedPublisher(channel, target), waiting, copied,
                               show)  # fmt: skip
            show.update(count, final=True)
        finally:
            await channel.close()
        if count == 0:
            raise RuntimeError(f"{source} counts {waiting:,} messages that no delivery "
                               "brings: is a consumer holding them? Run again")  # fmt: skip
        moved += count
    return moved


async def _migrate_one(
    connection: AbstractConnection, queues: topology.Queues, found: Found
) -> str:
    holding = found.holding.name
    channel = await connection.channel()
    try:
        await channel.declare_queue(holding, durable=True, arguments=HOLDING_ARGUMENTS)
        if found.queue.exists and not found.current:
            await _move_all(connection, found.name, holding)
            # Quorum queues refuse a delete "if empty", so the move checked it just before;
            # what the delete still finds only a producer left running can have put there.
            deleted = await channel.queue_delete(found.name)
            if deleted.message_count:
                raise RuntimeError(
                    f"{deleted.message_count:,} messages published to {found.name} while it "
                    "was being migrated were deleted with it: stop every producer of the "
                    "pipeline (feeds, enqueue, failed retry, dead replay) and run again"
                )
        await topology.declare(channel, queues, found.name)
        moved = await _move_all(connection, holding, found.name)
        await channel.queue_delete(holding)
        return f"{found.name}: migrated, {moved:,} messages kept"
    finally:
        if not channel.is_closed:
            await channel.close()


async def act(action: str, amqp_url: str, pipeline: str) -> int:
    queues = topology.Queues(pipeline)
    connection = await reach("RabbitMQ", amqp_url, amqp.connect_plain(amqp_url, f"queues-{action}"))
    try:
        if action == "check":
            found = await inspect(connection, queues)
            for queue in found:
                print(queue.line())
            todo = sum(queue.to_migrate for queue in found)
            hint = ": run `sluiceway queues migrate`" if todo else ""
            print(f"{todo} of {len(found)} queues of pipeline {pipeline} to migrate{hint}",
                  file=sys.stderr)  # fmt: skip
            return DIFFERS if todo else 0
        done = await migrate(connection, queues)
        for line in done:
            print(line)
        print(f"migrated {len(done)} queues of pipeline {pipeline}", file=sys.stderr)
        return 0
    finally:
        await connection.close()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("check", "migrate"),
                        help="check: say which queues differ (exit 3 if any); migrate: "
                        "move them to this version's arguments, messages and all")  # fmt: skip
    settings.add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    values = settings.resolve(args, OPTIONS)
    logs.setup(values["log_level"], secrets=settings.secret_values(OPTIONS, values))
    try:
        return asyncio.run(act(args.action, values["amqp_url"], values["pipeline"]))
    except (Busy, RuntimeError, aio_pika.exceptions.AMQPError, ConnectionError) as exc:
        # Nothing is lost: what the command held unacked goes back to its queue.
        print(f"sluiceway queues {args.action}: {exc}", file=sys.stderr)
        return 1


COMMAND = Command(
    "queues", "check or migrate the pipeline's queues to this version's arguments", configure, run
)
