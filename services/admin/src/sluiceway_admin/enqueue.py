"""``sluiceway enqueue``: one fetch task per key, read as lines from a file or standard input."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import BinaryIO

from sluiceway_admin.progress import Progress
from sluiceway_common import amqp, codec, logs, settings, topology
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import reach
from sluiceway_common.publisher import ConfirmedPublisher

log = logging.getLogger(__name__)
OPTIONS = (settings.AMQP_URL, settings.PIPELINE, settings.LOG_LEVEL)

# Keys longer than this are refused at the door: no URL or primary key should carry them.
MAX_KEY_BYTES = 4096
MAX_LINE_BYTES = MAX_KEY_BYTES + 1  # and a carriage return
READ_BYTES = 1 << 16


class BadInput(Exception):
    """A line of the input cannot be a key; the message says which and why."""


async def read_keys(stream: BinaryIO) -> AsyncIterator[list[tuple[int, str]]]:
    """Yield the keys of ``stream`` with their line numbers, as many as one read brings,
    reading off the event loop in constant memory (a line may not outgrow a key's bound).

    Surrounding whitespace and the line ending are stripped; blank lines are skipped.
    """
    # read1 hands over what a pipe has now, so keys piped in slowly are not held back.
    read = getattr(stream, "read1", stream.read)
    number = 0
    rest = b""
    while True:
        chunk = await asyncio.to_thread(read, READ_BYTES)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop() if chunk else b""
        keys = []
        for raw in lines:
            number += 1
            key = _key(raw, number)
            if key:
                keys.append((number, key))
        if keys:
            yield keys
        if len(rest) > MAX_LINE_BYTES:  # a line still unfinished, already too long
            raise BadInput(f"line {number + 1}: longer than {MAX_KEY_BYTES} bytes")
        if not chunk:
            return


def _key(raw: bytes, number: int) -> str:
    """The key on line ``number`` (its bytes without the newline); "" for a blank line."""
    if len(raw) > MAX_LINE_BYTES:
        raise BadInput(f"line {number}: longer than {MAX_KEY_BYTES} bytes")
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadInput(f"line {number}: not valid UTF-8") from None
    if not key.isprintable():
        raise BadInput(f"line {number}: contains a control character")
    return key


class Interrupted(Exception):
    """Publishing stopped part way; ``resume_line`` is the first line not known to be queued."""

    def __init__(self, cause: BaseException, confirmed: int, resume_line: int) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.confirmed = confirmed
        self.resume_line = resume_line


async def enqueue(amqp_url: str, pipeline: str, stream: BinaryIO, show: Progress) -> int:
    """Publish a fetch task per key of ``stream``; return how many the broker confirmed.

    On a broker failure raise ``Interrupted``, saying from which line a rerun loses nothing.
    """
    queues = topology.Queues(pipeline)
    connection = await reach("RabbitMQ", amqp_url, amqp.connect(amqp_url, "enqueue"))
    # The line of each key published and perhaps not yet confirmed, oldest first: a window's
    # worth and one read's keys at most.
    unconfirmed: deque[int] = deque()
    published = 0
    next_line = 1

    def resume_line() -> int:
        """The first line whose key the broker has not confirmed (all before it it has)."""
        while len(unconfirmed) > published - publisher.confirmed:
            unconfirmed.popleft()
        return unconfirmed[0] if unconfirmed else next_line

    try:
        channel = await amqp.publishing_channel(connection)
        await topology.declare(channel, queues)
        publisher = ConfirmedPublisher(channel, queues.fetch)
        try:
            async for chunk in read_keys(stream):
                for number, key in chunk:
                    await publisher.publish(codec.encode_task(key))
                    unconfirmed.append(number)
                    published += 1
                    next_line = number + 1
                    show.update(publisher.confirmed)
                # The next read may wait on a slow pipe: what was read goes out first.
                await publisher.flush()
                resume_line()  # forget the lines of the keys confirmed by now
            await publisher.drain()
        except amqp.BROKER_ERRORS as exc:
            raise Interrupted(exc, publisher.confirmed, resume_line()) from exc
        finally:
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
        except Interrupted as exc:
            source = "-" if args.file == "-" else shlex.quote(args.file)
            print(
                f"sluiceway enqueue: stopped by the broker ({exc}) after {exc.confirmed:,} keys "
                f"were confirmed; every key before line {exc.resume_line:,} is queued. Resume "
                f"with: tail -n +{exc.resume_line} {source} | sluiceway enqueue -  "
                "(keys queued twice are fetched twice and stored once)",
                file=sys.stderr,
            )
            return 1
    seconds = time.monotonic() - started
    log.info(
        "enqueued %s keys to %s in %.1fs (%s/s)",
        f"{count:,}",
        topology.Queues(values["pipeline"]).fetch,
        seconds,
        f"{count / max(seconds, 1e-9):,.0f}",
    )
    return 0


COMMAND = Command("enqueue", "publish one fetch task per key", configure, run)
