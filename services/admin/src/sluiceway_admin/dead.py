# Over 300 lines on purpose: list, replay and purge share one reading of the dead queue
# (take without ack, give back, confirm before ack), which splitting would spread out.
"""``sluiceway dead list|replay|purge``: the records that could not land.

A *dead letter* is a message on ``sluiceway.<pipeline>.records.dead``: the body and properties
of a record message as it reached the writer. The writer adds its reason in the header
``x-sluiceway-reason``; a message the broker dead-lettered itself (the records queue's delivery
limit: consumers kept dying holding it) has no reason header, and ``x-death`` says why instead.

``list`` looks without taking, ``replay`` moves dead letters back to the records queue once
the cause is fixed, publishing each with confirms before acking it, and ``purge`` drops them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.exceptions
import orjson
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from pamqp import commands as spec

from sluiceway_admin.queues import copy_of, move
from sluiceway_common import amqp, codec, settings, topology
from sluiceway_common.cli import Command
from sluiceway_common.publisher import ConfirmedPublisher

OPTIONS = (settings.AMQP_URL, settings.PIPELINE)
REASON_HEADER = "x-sluiceway-reason"
NO_REASON = "(no reason: dead-lettered by the broker, e.g. delivery limit)"
LIST_LIMIT = 100
# Set by the broker or the writer when a message was dead-lettered or redelivered. A replayed
# record starts afresh without them; a stale x-delivery-count would only mislead.
DEATH_HEADERS = {REASON_HEADER, "x-death", "x-delivery-count"}
DEATH_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


@dataclass(frozen=True)
class DeadLetter:
    """What ``list`` shows of one dead letter."""

    key: str | None  # None: the body is not a plain record (compressed, an array, garbage)
    reason: str | None  # None: dead-lettered by the broker, see ``death``
    death: str | None  # the broker's account (x-death), if any
    size: int  # of the body, in bytes
    content_encoding: str | None
    headers: dict[str, str]  # the string-valued ones

    def shown_key(self) -> str:
        if self.key is not None:
            return self.key
        return f"<{self.size} bytes, content_encoding {self.content_encoding or 'none'}>"

    def shown_reason(self) -> str:
        if self.reason is not None:
            return self.reason
        return NO_REASON if self.death is None else f"{NO_REASON} {self.death}"

    def line(self) -> str:
        return f"{one_line(self.shown_key())}\t{one_line(self.shown_reason())}"

    def json(self) -> bytes:
        return orjson.dumps(
            {
                "key": self.key,
                "reason": self.reason,
                "death": self.death,
                "bytes": self.size,
                "content_encoding": self.content_encoding,
                "headers": self.headers,
            }
        )


def one_line(text: str) -> str:
    """``text`` with control characters escaped, so a record stays one line of the listing."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    key = None
    if message.content_encoding in codec.PLAIN_ENCODINGS:
        with contextlib.suppress(codec.BadMessage):
            key = codec.decode_record(message.body).key
    reason = headers.get(REASON_HEADER)
    return DeadLetter(
        key=key,
        reason=None if reason is None else as_text(reason),
        death=death(headers),
        size=len(message.body),
        content_encoding=message.content_encoding,
        headers={name: value for name, value in headers.items() if isinstance(value, str)},
    )


def as_text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)


def death(headers: Mapping[str, Any]) -> str | None:
    """The broker's account (``x-death``) of why a message was dead-lettered, on one line.

    ``x-delivery-count`` is left out: on the dead queue it counts returns to the dead queue
    itself, one per ``list``, so it would say nothing about the death and change every time.
    """
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return None
    parts = [
        f"reason={as_text(entry.get('reason'))} queue={as_text(entry.get('queue'))} "
        f"count={as_text(entry.get('count'))}"
        for entry in deaths
        if isinstance(entry, dict)
    ]
    return "x-death: " + "; ".join(parts) if parts else None


def replayable(message: AbstractIncomingMessage) -> spec.Basic.Properties:
    """The properties of the record message as it was before it died, with fresh headers."""
    return copy_of(message, keep=lambda name: name not in DEATH_HEADERS
                   and not name.startswith(DEATH_HEADER_PREFIXES))  # fmt: skip


async def connect(url: str, role: str) -> AbstractConnection:
    # Not amqp.connect's robust connection: a channel it restored after a reconnect would
    # hold none of the messages taken before, so acking by delivery tag could no longer be
    # trusted. Here a lost connection ends the command, and the broker requeues what it held.
    return await amqp.connect_plain(url, role)


async def dead_queue(
    connection: AbstractConnection, queues: topology.Queues, *, confirms: bool = False
) -> AbstractQueue:
    """The dead queue on a new channel, after declaring the pipeline's queues."""
    channel = await connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
    declared = dict(zip(queues.all(), await topology.declare(channel, queues), strict=True))
    return declared[queues.dead]


def waiting(queue: AbstractQueue) -> int:
    return int(queue.declaration_result.message_count or 0)


async def list_dead(amqp_url: str, pipeline: str, limit: int) -> tuple[list[DeadLetter], int]:
    """Up to ``limit`` dead letters (0: all) and how many were waiting, taking none of them."""
    connection = await connect(amqp_url, "dead-list")
    try:
        dead = await dead_queue(connection, topology.Queues(pipeline))
        total = waiting(dead)
        letters: list[DeadLetter] = []
        try:
            while limit == 0 or len(letters) < limit:
                message = await dead.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(describe(message))
        finally:
            # Never acked: closing the channel hands every message it holds back to the
            # queue, so nothing is lost, here or if this process dies mid-list. Their order
            # may change, which nothing depends on. A quorum queue counts each as a return,
            # which shows in x-delivery-count: the dead queue's own limit is never reached
            # (topology.NO_DELIVERY_LIMIT), where RabbitMQ 4's default of 20 would make each
            # list cost every letter a life.
            await dead.channel.close()
        return letters, total
    finally:
        await connection.close()


async def replay_dead(amqp_url: str, pipeline: str, limit: int) -> int:
    """Move up to ``limit`` dead letters (0: all) to the records queue; return how many."""
    queues = topology.Queues(pipeline)
    connection = await connect(amqp_url, "dead-replay")
    try:
        dead = await dead_queue(connection, queues, confirms=True)
        # Only what is there now: a record that dies again straight away (a writer running,
        # the cause not fixed) comes back to this queue, and must not be replayed in a loop.
        target = waiting(dead) if limit == 0 else min(limit, waiting(dead))
        return await move(dead, ConfirmedPublisher(dead.channel, queues.records), target,
                          replayable)  # fmt: skip
    finally:
        await connection.close()


async def purge_dead(amqp_url: str, pipeline: str) -> int:
    connection = await connect(amqp_url, "dead-purge")
    try:
        dead = await dead_queue(connection, topology.Queues(pipeline))
        purged = await dead.purge()
        return int(purged.message_count or 0)
    finally:
        await connection.close()


def count_or_all(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (all) or more")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "replay", "purge"))
    parser.add_argument("--json", action="store_true", help="list: one JSON object per line")
    parser.add_argument(
        "--limit",
        type=count_or_all,
        metavar="N",
        help=f"list: show at most N (default {LIST_LIMIT}); replay: move at most N "
        "(default all); 0 means all",
    )
    settings.add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    values = settings.resolve(args, OPTIONS)
    try:
        return act(args, values["amqp_url"], values["pipeline"])
    except (aio_pika.exceptions.AMQPError, ConnectionError) as exc:
        # Nothing is lost: whatever the command held unacked goes back to the dead queue.
        print(
            f"sluiceway dead {args.action}: {settings.mask(values['amqp_url'])}: "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1


def act(args: argparse.Namespace, amqp_url: str, pipeline: str) -> int:
    if args.action == "list":
        count = LIST_LIMIT if args.limit is None else args.limit
        letters, total = asyncio.run(list_dead(amqp_url, pipeline, count))
        for letter in letters:
            if args.json:
                sys.stdout.write(letter.json().decode() + "\n")
            else:
                print(letter.line())
        sys.stdout.flush()
        print(f"{len(letters):,} dead letters shown of {total:,}", file=sys.stderr)
    elif args.action == "replay":
        count = asyncio.run(replay_dead(amqp_url, pipeline, args.limit or 0))
        print(f"replayed {count:,} dead letters of pipeline {pipeline}")
    else:
        count = asyncio.run(purge_dead(amqp_url, pipeline))
        print(f"purged {count:,} dead letters of pipeline {pipeline}")
    return 0


COMMAND = Command("dead", "list, replay or purge the records that could not land", configure, run)
