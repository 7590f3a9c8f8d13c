"""``sluiceway enqueue``: one fetch task per key, read as lines from a file or standard input."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import BinaryIO

from sluiceway_common import amqp, codec, logs, settings, topology
from sluiceway_common.cli import Command
from sluiceway_common.progress import Progress

log = logging.getLogger(__name__)
OPTIONS = (settings.AMQP_URL, settings.PIPELINE, settings.LOG_LEVEL)

# Keys longer than this are refused at the door: no URL or primary key should carry them.
MAX_KEY_BYTES = 4096


class BadInput(Exception):
    """A line of the input cannot be a key; the message says which and why."""


async def read_keys(stream: BinaryIO) -> AsyncIterator[str]:
    """Yield the keys of ``stream``, one per line, streaming in chunks off the event loop.

    Surrounding whitespace and the line ending are stripped; blank lines are skipped.
    """
    number = 0
    while True:
        lines = await asyncio.to_thread(stream.readlines, 1 << 16)
        if not lines:
            return
        for raw in lines:
            number += 1
            if len(raw) > MAX_KEY_BYTES + 2:
                raise BadInput(f"line {number}: longer than {MAX_KEY_BYTES} bytes")
            try:
                key = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise BadInput(f"line {number}: not valid UTF-8") from None
            if not key:
                continue
            if not key.isprintable():
                raise BadInput(f"line {number}: contains a control character")
            yield key


async def enqueue(amqp_url: str, pipeline: str, stream: BinaryIO, show: Progress) -> int:
    """Publish a fetch task per key of ``stream``; return how many the broker confirmed."""
    queues = topology.Queues(pipeline)
    connection = await amqp.connect(amqp_url, "enqueue")
    try:
        channel = await amqp.publishing_channel(connection)
        await topology.declare(channel, queues)
        publisher = amqp.ConfirmedPublisher(channel, queues.fetch)
        try:
            async for key in read_keys(stream):
                await publisher.publish(topology.persistent(codec.encode_task(key)))
                show.update(publisher.confirmed)
        finally:
            await publisher.drain()
            show.update(publisher.confirmed, final=True)
        return publisher.confirmed
    finally:
        await connection.close()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE|-", help="keys, one per line; - reads stdin")
    settings.add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    values = settings.resolve(args, OPTIONS)
    logs.setup(values["log_level"], secrets=settings.secret_values(OPTIONS, values))
    started = time.monotonic()
    show = Progress("enqueued", "keys")
    try:
        stream: BinaryIO = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"sluiceway enqueue: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    with stream:
        try:
            count = asyncio.run(enqueue(values["amqp_url"], values["pipeline"], stream, show))
        except BadInput as exc:
            print(
                f"sluiceway enqueue: {args.file}: {exc}; keys before it were enqueued",
                file=sys.stderr,
            )
            return 1
    log.info(
        "enqueued %d keys to %s in %.1fs",
        count,
        topology.Queues(values["pipeline"]).fetch,
        time.monotonic() - started,
    )
    return 0


COMMAND = Command("enqueue", "publish one fetch task per key", configure, run)
